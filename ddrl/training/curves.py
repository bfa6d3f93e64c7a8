"""A PNG of a run's curves (reward, accuracy, loss, held-out accuracy) next to its metrics."""

from __future__ import annotations

from pathlib import Path

from ddrl.training.logger import read_metrics

CURVES_FILE = "curves.png"


def plot_curves(run_dir: Path) -> Path | None:
    """Draw ``RUN_DIR/curves.png`` from ``metrics.jsonl``; None when there is nothing to draw."""
    metrics = read_metrics(run_dir)
    if not metrics:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", "reward"), ("accuracy", "training accuracy"), ("loss", "loss")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6))
    steps = [m["step"] for m in metrics]
    for ax, (key, title) in zip(axes, panels):
        ax.plot(steps, [_num(m.get(key)) for m in metrics], label=key)
        if key == "accuracy":
            held = [(m["step"], m["eval_accuracy"]) for m in metrics if "eval_accuracy" in m]
            if held:
                ax.plot(*zip(*held), "o-", label="held-out (greedy)")
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    out = Path(run_dir) / CURVES_FILE
    tmp = out.with_name(".curves.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)  # whole or absent
    return out


def _num(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
