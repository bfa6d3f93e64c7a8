"""``ddrl sample --trace`` (issue 16, item 8): the step-by-step record of a policy decoding, its
per-step log, its HTML page, and that tracing leaves the sampler's result unchanged."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re

import pytest
import torch
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.generation import encode_prompts
from ddrl.registry import Registry
from ddrl.samplers.trace import TracingSampler, trace_html
from ddrl.testing import build, generator

SMALL = ["--set", "sampler.max_completion_length=8", "--set", "sampler.block_length=8", "--set", "sampler.steps=4"]
FAST = ["--sampler", "fast", "--set", "sampler.max_completion_length=8", "--set", "sampler.block_length=4",
        "--set", "sampler.threshold=0.02"]
HEADER = re.compile(r"^trace (\d+) \| .* \| (\d+) positions, (\d+) steps", re.MULTILINE)
STEP = re.compile(r"^  step (\d+)/(\d+) \| (.*) \| (.*)$")
REVEAL = re.compile(r"\+(\d+) (?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\") ([0-9.e+-]+)")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


def completions(output: str) -> list[str]:
    """The prompt/completion lines ddrl sample prints after any trace (up to the summary)."""
    body = output.split("written to", 1)[1].splitlines()[1:] if "written to" in output else output.splitlines()
    return [line for line in body if line and " completions x " not in line]


def parsed_trace(output: str) -> list[list[tuple[int, list[tuple[int, float]]]]]:
    """Per traced prompt, per step line: (step, [(position, confidence), ...])."""
    traces: list = []
    for line in output.splitlines():
        if HEADER.match(line):
            traces.append([])
        elif (m := STEP.match(line)) and traces:
            reveals = [(int(pos), float(c)) for pos, c in REVEAL.findall(m.group(3))]
            traces[-1].append((int(m.group(1)), reveals))
    return traces


@pytest.mark.parametrize("sampler_args", [SMALL, FAST], ids=["block", "fast"])
def test_trace_reveals_every_position_once_with_a_probability(sampler_args, tmp_path):
    html_path = tmp_path / "t.html"
    args = ["sample", "-p", "1+2=", "-p", "ab", *sampler_args, "--set", "sampler.temperature=1.0", "--seed", "5"]
    plain = invoke(*args)
    traced = invoke(*args, "--trace", "--trace-html", str(html_path))
    assert traced.exit_code == 0, traced.output
    traces = parsed_trace(traced.output)
    assert len(traces) == 2
    for steps in traces:
        positions = [pos for _, reveals in steps for pos, _ in reveals]
        assert sorted(positions) == list(range(8))  # every completion position, each once
        assert [s for s, _ in steps] == list(range(1, len(steps) + 1))
        assert all(0 < c <= 1 for _, reveals in steps for _, c in reveals)
    # tracing leaves the result unchanged
    assert completions(traced.output) == completions(plain.output)
    assert html_path.exists()


def test_trace_html_is_escaped_and_has_one_row_per_step(tmp_path):
    html_path = tmp_path / "page.html"
    result = invoke("sample", "-p", "<script>alert(1)</script>", *SMALL, "--trace-html", str(html_path))
    assert result.exit_code == 0, result.output
    page = html_path.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<tr class='step'>") == 4  # sampler.steps
    assert "http" not in page  # self-contained: nothing fetched
    assert result.output.count("step ") >= 4  # --trace-html implies --trace: the log is printed


def test_trace_writes_trace_html_in_the_working_directory_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("sample", "-p", "ab", *SMALL, "--trace")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "trace.html").exists()


def test_trace_prompts_limits_the_traced_prompts(tmp_path):
    result = invoke("sample", "-p", "a", "-p", "b", "-p", "c", *SMALL, "--trace", "--trace-prompts", "2",
                    "--batch-size", "2", "--trace-html", str(tmp_path / "t.html"))
    assert result.exit_code == 0, result.output
    assert len(parsed_trace(result.output)) == 2


def test_token_level_task_traces_token_ids(tmp_path):
    result = invoke("sample", "--task", "pattern", "-n", "1", "--model", "tiny", "--set", "model.charset=null",
                    "--set", "model.architecture.vocab_size=5", "--set", "sampler.max_completion_length=4",
                    "--set", "sampler.block_length=4", "--set", "sampler.steps=4",
                    "--trace", "--trace-html", str(tmp_path / "t.html"))
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if STEP.match(line)]
    assert len(steps) == 4 and re.search(r"\+\d+ '\d+' ", steps[0])
    assert re.search(r"\| \d ░ ░ ░$", steps[0])  # ids, space-separated, masks as ░


# ------------------------------------------------------------------------------------------------
# the library: every built-in sampler, exact final canvas, records vs. the canvases the policy saw


class _NoRecords:
    """A sampler that keeps no records: the trace must come from the canvases alone."""

    records = frozenset()

    def __init__(self, inner) -> None:
        self.inner = inner

    def sample(self, *args, **kwargs):
        return self.inner.sample(*args, **kwargs)


CASES = [
    ("block", {"max_completion_length": 8, "block_length": 4, "steps": 4}),
    ("fast", {"max_completion_length": 8, "block_length": 4, "threshold": 0.02}),
    ("fast", {"max_completion_length": 8, "block_length": 4, "steps": 8, "threshold": None, "cache": "prefix"}),
    ("ancestral", {"max_completion_length": 6}),
]


@pytest.mark.parametrize(("name", "options"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_trace_matches_the_samplers_output_for_every_builtin(name, options):
    torch.set_num_threads(1)
    registry = Registry()
    policy = build(registry, "models", "tiny").eval()
    smp = build(registry, "samplers", name, temperature=1.0, **options)
    ids, mask = encode_prompts(policy, ["1+2=", "ab<b>"])
    with torch.no_grad():
        plain = smp.sample(policy, ids, mask, generator=generator(3))
        from_records = TracingSampler(smp)
        out = from_records.sample(policy, ids, mask, generator=generator(3))
        from_canvases = TracingSampler(_NoRecords(smp))
        out2 = from_canvases.sample(policy, ids, mask, generator=generator(3))
    assert torch.equal(out.completion_ids, plain.completion_ids)
    assert torch.equal(out2.completion_ids, plain.completion_ids)
    for r, (a, b) in enumerate(zip(from_records.traces, from_canvases.traces)):
        assert a.source == "records" and b.source == "canvases"
        assert a.canvas(a.num_steps - 1) == plain.completion_ids[r].tolist()  # final canvas = the completion
        assert all(policy.mask_token_id == t for t in a.canvas(-1))
        assert sorted(p for s in range(a.num_steps) for p in a.revealed_at(s)) == list(range(len(a.completion_ids)))
        assert all(0 < c <= 1 for c in a.confidence)
        assert b.reveal_step == a.reveal_step
        assert b.confidence == pytest.approx(a.confidence, rel=1e-5)


def test_trace_html_escapes_token_text():
    registry = Registry()
    policy = build(registry, "models", "tiny").eval()
    tracer = TracingSampler(build(registry, "samplers", "block", max_completion_length=4, block_length=4, steps=2))
    ids, mask = encode_prompts(policy, ["<i>&"])
    with torch.no_grad():
        tracer.sample(policy, ids, mask, generator=generator(0))
    page = trace_html(tracer.traces, lambda t: "<b>'\"")
    assert "<b>" not in page and "<i>" not in page and "&lt;b&gt;&#x27;&quot;" in page
    assert page.count("<tr class='step'>") == 2
