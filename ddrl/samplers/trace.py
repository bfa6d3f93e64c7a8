"""Watching a policy decode: which completion positions a sampler revealed at which step, with what
confidence (``ddrl sample --trace``).

A ``Trace`` is one prompt's decoding: for every completion position the step that revealed it and
the policy's probability of the placed token on the canvas it was placed from. The canvas after
step s is the final completion where ``reveal_step <= s`` and the mask elsewhere (revealed tokens
never change in a masked diffusion sampler).

``TracingSampler`` wraps any sampler without changing what it returns. It gets the trace from:

* the sampler's own records, when it keeps ``unmask_step`` and ``token_logprobs`` (``block``,
  ``fast``, ``ancestral``): exact, the sampler's own step count (``fast``: the row's own steps);
* otherwise the canvases the sampler feeds the policy: the policy is handed to the sampler behind
  ``CanvasTap``, a pass-through proxy of ``logits``/``forward``/``forward_cache``/
  ``forward_window``/``target_logprobs`` that keeps each new canvas (a step = a canvas that differs
  from the previous one) and the probability the last pass over a canvas gave to each token
  revealed next. Under classifier-free guidance that is the conditional half's probability.

The proxy is installed in both cases, so that a live view (``on_canvas``) sees every canvas while
the sampler runs. Rendering: ``step_lines`` (a compact text log), ``live_text`` (a rich ``Text``)
and ``trace_html`` (a self-contained HTML page, every piece of model text escaped).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ddrl.samplers.base import SampleOutput, Sampler

MASK_GLYPH = "░"

# on_canvas(row_offset, canvases [B, L] (mask id where masked), step): a new canvas of a batch
CanvasCallback = Callable[[int, Tensor, int], None]


@dataclass
class Trace:
    """One prompt's decoding. ``reveal_step[l]`` (0-based) and ``confidence[l]`` (probability of
    ``completion_ids[l]`` when it was placed; NaN when unknown) per completion position l."""

    prompt: str
    completion_ids: list[int]
    reveal_step: list[int]
    confidence: list[float]
    mask_id: int
    source: str  # "records" or "canvases"

    @property
    def num_steps(self) -> int:
        return max(self.reveal_step, default=-1) + 1

    def revealed_at(self, step: int) -> list[int]:
        """Completion positions revealed at ``step``, in position order."""
        return [pos for pos, s in enumerate(self.reveal_step) if s == step]

    def canvas(self, step: int) -> list[int]:
        """Completion ids after ``step`` (-1: before the first step), the mask id where still masked."""
        return [tok if s <= step else self.mask_id for tok, s in zip(self.completion_ids, self.reveal_step)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt, "completion_ids": self.completion_ids, "reveal_step": self.reveal_step,
            "confidence": self.confidence, "mask_id": self.mask_id, "source": self.source,
        }


# ------------------------------------------------------------------------------------------------
# recording


class CanvasTap:
    """A pass-through proxy of a policy that sees every canvas a sampler scores (module docstring).

    ``b``/``p``: rows and width of the prompt batch; only the first ``b`` rows of a pass are read
    (a guided pass stacks the prompt-masked copy below them). Everything not wrapped here is the
    policy's own attribute.
    """

    def __init__(self, policy: Any, prompt_ids: Tensor, row_offset: int = 0,
                 on_canvas: CanvasCallback | None = None, keep_confidence: bool = True) -> None:
        self.__dict__["_policy"] = policy  # plain attributes: __getattr__ forwards the rest
        self.__dict__["_b"], self.__dict__["_p"] = prompt_ids.shape
        self.__dict__["_offset"] = row_offset
        self.__dict__["_on_canvas"] = on_canvas
        self.__dict__["_keep_confidence"] = keep_confidence
        self.__dict__["canvases"] = []  # [b, L] completion canvases, one per step (a new canvas)
        self.__dict__["confidences"] = []  # [b, L] probability of the next revealed token, per step
        self.__dict__["_probs"] = None  # (logits [b, S, V] of the last pass, its first column)
        self.__dict__["_prompt"] = prompt_ids.detach().cpu()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_policy"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._policy, name, value)

    # the wrapped forward methods ------------------------------------------------------------
    def logits(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        out = self._policy.logits(input_ids, attention_mask)
        self._seen(input_ids, 0, out)
        return out

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Any:
        out = self._policy(input_ids, attention_mask, **kwargs)
        self._seen(input_ids, 0, out if isinstance(out, Tensor) and out.dim() == 3 else None)
        return out

    __call__ = forward

    def forward_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Any:
        out, cache = self._policy.forward_cache(input_ids, attention_mask)
        self._seen(input_ids, 0, out)
        return out, cache

    def forward_window(self, window_ids: Tensor, start: int, cache: Any, attention_mask: Tensor | None = None) -> Tensor:
        out = self._policy.forward_window(window_ids, start, cache, attention_mask)
        self._seen(window_ids, start, out)
        return out

    def target_logprobs(self, input_ids: Tensor, attention_mask: Tensor | None, scored: Tensor, targets: Tensor) -> Tensor:
        self._seen(input_ids, 0, None)
        return self._policy.target_logprobs(input_ids, attention_mask, scored, targets)

    # bookkeeping ----------------------------------------------------------------------------
    def _seen(self, ids: Tensor, start: int, logits: Tensor | None) -> None:
        """A pass over canvas columns ``[start, start + S)``; ``logits`` its ``[B', S, V]`` output."""
        b, p = self._b, self._p
        if ids.dim() != 2 or ids.shape[0] < b:
            return
        ids = ids[:b].detach()
        if start == 0 and ids.shape[1] < p:
            return  # not a canvas of this batch
        if not self.canvases and start > 0:
            return  # a window before any full canvas: nothing to patch
        canvas = self.canvases[-1].clone() if self.canvases else ids[:, p:].clone().cpu()
        lo, hi = max(start, p), min(start + ids.shape[1], p + canvas.shape[1])
        if hi <= lo:
            return
        if start == 0 and ids.shape[1] != p + canvas.shape[1] and self.canvases:
            return  # another width: not this batch's canvas
        if start == 0 and bool((ids[:, :p].cpu() != self._prompt).any()):
            return  # the prompt-masked copy of guidance, or a scorer's other view
        canvas[:, lo - p : hi - p] = ids[:, lo - start : hi - start].cpu()
        if not self.canvases or not torch.equal(canvas, self.canvases[-1]):
            self._close_step(canvas)
            self.canvases.append(canvas)
            self.confidences.append(torch.full(canvas.shape, float("nan")))
            if self._on_canvas is not None:
                self._on_canvas(self._offset, canvas, len(self.canvases) - 1)
        if logits is not None and self._keep_confidence:
            self.__dict__["_probs"] = (logits[:b].detach(), start)

    def _close_step(self, next_canvas: Tensor) -> None:
        """The last pass's probability of each token revealed between the last canvas and ``next_canvas``."""
        if not self.canvases or self._probs is None:
            return
        logits, start = self._probs
        self.__dict__["_probs"] = None
        prev = self.canvases[-1]
        mask_id = self._policy.mask_token_id
        new = (prev == mask_id) & (next_canvas != mask_id)
        rows, cols = new.nonzero(as_tuple=True)
        for r, c in zip(rows.tolist(), cols.tolist()):
            j = self._p + c - start  # column of the pass's output
            if 0 <= j < logits.shape[1]:
                row = logits[r, j].double().clone()
                row[mask_id] = -torch.inf  # raw passes keep the mask token's logit
                self.confidences[-1][r, c] = float(torch.softmax(row, -1)[int(next_canvas[r, c])])

    def finish(self, completion_ids: Tensor) -> None:
        """Close the last step with the sampler's output."""
        final = completion_ids[: self._b].detach().cpu()
        if self.canvases and not torch.equal(final, self.canvases[-1]):
            self._close_step(final)


def traces_from_records(out: SampleOutput, prompts: Sequence[str], mask_id: int) -> list[Trace]:
    """Traces from a sampler's ``unmask_step`` and ``token_logprobs``."""
    assert out.unmask_step is not None and out.token_logprobs is not None
    steps = out.unmask_step.cpu().tolist()
    conf = out.token_logprobs.detach().double().exp().cpu().tolist()
    ids = out.completion_ids.cpu().tolist()
    return [Trace(prompts[r], ids[r], steps[r], conf[r], mask_id, "records") for r in range(len(prompts))]


def traces_from_canvases(tap: CanvasTap, out: SampleOutput, prompts: Sequence[str], mask_id: int) -> list[Trace]:
    """Traces from the canvases ``tap`` saw (a step = a new canvas; the output closes the last)."""
    ids = out.completion_ids.detach().cpu()
    traces = []
    for r in range(len(prompts)):
        reveal = [-1] * ids.shape[1]
        conf = [float("nan")] * ids.shape[1]
        views = [c[r] for c in tap.canvases] + [ids[r]]
        step = 0
        for k in range(len(views) - 1):
            new = ((views[k] == mask_id) & (views[k + 1] != mask_id)).nonzero().flatten().tolist()
            if not new:
                continue  # this row idled on that canvas
            for c in new:
                reveal[c] = step
                conf[c] = float(tap.confidences[k][r, c]) if k < len(tap.confidences) else float("nan")
            step += 1
        reveal = [max(s, 0) for s in reveal]  # never seen masked (no pass before it was filled): the first step
        traces.append(Trace(prompts[r], ids[r].tolist(), reveal, conf, mask_id, "canvases"))
    return traces


class TracingSampler:
    """A sampler that decodes exactly as ``sampler`` and keeps a ``Trace`` of its first ``limit``
    rows (all with ``limit=None``) over every call, in ``traces`` (module docstring)."""

    def __init__(self, sampler: Sampler, limit: int | None = None, on_canvas: CanvasCallback | None = None,
                 on_batch: Callable[[list[Trace]], None] | None = None) -> None:
        self.sampler = sampler
        self.limit = limit
        self.on_canvas = on_canvas
        self.on_batch = on_batch
        self.traces: list[Trace] = []
        self._rows = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)

    def sample(self, policy: Any, prompt_ids: Tensor, prompt_mask: Tensor | None = None, *,
               generator: torch.Generator | None = None, scorers: Sequence[Any] = ()) -> SampleOutput:
        offset, b = self._rows, prompt_ids.shape[0]
        self._rows += b
        wanted = b if self.limit is None else max(0, min(b, self.limit - offset))
        if wanted == 0:
            return self.sampler.sample(policy, prompt_ids, prompt_mask, generator=generator, scorers=scorers)
        records = {"unmask_step", "token_logprobs"} <= set(getattr(self.sampler, "records", ()))
        tap = CanvasTap(policy, prompt_ids[:wanted], offset, self.on_canvas, keep_confidence=not records)
        out = self.sampler.sample(tap, prompt_ids, prompt_mask, generator=generator,  # type: ignore[arg-type]
                                  scorers=scorers)
        tap.finish(out.completion_ids)
        mask_id = policy.mask_token_id
        prompts = [_prompt_text(policy, prompt_ids[r], prompt_mask[r] if prompt_mask is not None else None)
                   for r in range(wanted)]
        if records and out.unmask_step is not None and out.token_logprobs is not None:
            new = traces_from_records(out.index(torch.arange(wanted)) if wanted < b else out, prompts, mask_id)
        else:
            new = traces_from_canvases(tap, out, prompts, mask_id)
        self.traces.extend(new)
        if self.on_batch is not None:
            self.on_batch(new)
        return out


def _prompt_text(policy: Any, ids: Tensor, mask: Tensor | None) -> str:
    row = [int(t) for t in (ids[mask.bool()] if mask is not None else ids).tolist()]
    tok = getattr(policy, "tokenizer", None)
    if tok is None:
        return " ".join(map(str, row))
    return str(tok.decode(row, skip_special_tokens=True))


# ------------------------------------------------------------------------------------------------
# rendering


def token_labels(policy: Any) -> Callable[[int], str]:
    """How a token is shown: its decoded text (newlines and tabs made visible), or its id when the
    policy has no tokenizer (token-level tasks)."""
    tok = getattr(policy, "tokenizer", None)
    cache: dict[int, str] = {}

    def label(token: int) -> str:
        if token not in cache:
            if tok is None:
                text = str(token)
            else:
                text = str(tok.decode([token], skip_special_tokens=False))
                text = text.replace("\n", "⏎").replace("\t", "⇥") or f"⟨{token}⟩"
            cache[token] = text
        return cache[token]

    return label


def _joiner(policy: Any) -> str:
    return " " if getattr(policy, "tokenizer", None) is None else ""


def canvas_text(trace: Trace, step: int, label: Callable[[int], str], sep: str = "") -> str:
    return sep.join(MASK_GLYPH if t == trace.mask_id else label(t) for t in trace.canvas(step))


def _conf(value: float) -> str:
    if math.isnan(value):
        return "?"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def step_lines(trace: Trace, label: Callable[[int], str], sep: str = "") -> list[str]:
    """The compact log of one trace: one line per step, ``+position 'token' confidence`` for each
    position revealed at it, then the canvas after it."""
    lines = []
    n = trace.num_steps
    for s in range(n):
        reveals = ", ".join(f"+{c} {label(trace.completion_ids[c])!r} {_conf(trace.confidence[c])}"
                            for c in trace.revealed_at(s))
        lines.append(f"step {s + 1}/{n} | {reveals or '-'} | {canvas_text(trace, s, label, sep)}")
    return lines


def live_text(prompt: str, canvas: Sequence[int], previous: Sequence[int] | None, mask_id: int,
              label: Callable[[int], str], step: int, sep: str = "") -> Any:
    """A rich ``Text`` of a canvas during decoding: masks as ``░``, tokens new since ``previous`` in
    reverse video."""
    from rich.text import Text

    text = Text()
    text.append(f"step {step:>4} ", style="bold cyan")
    text.append(prompt, style="dim")
    text.append(" ")
    for i, tok in enumerate(canvas):
        if i and sep:
            text.append(sep)
        if tok == mask_id:
            text.append(MASK_GLYPH, style="grey50")
        elif previous is not None and previous[i] == mask_id:
            text.append(label(tok), style="bold black on yellow")
        else:
            text.append(label(tok), style="bold")
    return text


def _colour(step: int, num_steps: int) -> str:
    hue = 220 - 220 * step / max(num_steps - 1, 1)  # blue (early) to red (late)
    return f"hsl({hue:.0f}, 75%, 80%)"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; }
h2 { font-size: 1.05em; margin-top: 2em; }
.prompt { font-family: ui-monospace, monospace; white-space: pre-wrap; background: #f3f3f3; padding: .3em .5em; }
table { border-collapse: collapse; }
td { padding: 2px 6px; vertical-align: top; }
td.n { color: #777; text-align: right; font-size: .85em; white-space: nowrap; }
.tok { font-family: ui-monospace, monospace; white-space: pre; border-radius: 3px; padding: 0 1px; margin: 0 1px; }
.masked { color: #bbb; }
.new { outline: 2px solid #000; font-weight: bold; }
.legend { font-size: .85em; color: #555; }
"""


def trace_html(traces: Sequence[Trace], label: Callable[[int], str], title: str = "ddrl trace") -> str:
    """A self-contained page: per prompt, one table row per step (``<tr class="step">``), each token
    coloured by the step that revealed it (blue early, red late), the step's reveals outlined, and
    position, step and confidence in its ``title``. All model text is escaped."""
    e = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
           f"<style>{_STYLE}</style></head><body><h1>{e(title)}</h1>",
           ("<p class='legend'>One row per sampler step. Colour: the step at which a token was revealed "
            f"(blue early, red late); outlined: revealed at this step; {MASK_GLYPH}: still masked. "
            "Hover a token for its position, step and confidence (the policy's probability of the "
            "token when it was placed).</p>")]
    for k, tr in enumerate(traces):
        n = tr.num_steps
        out.append(f"<section class='trace'><h2>Prompt {k} · {len(tr.completion_ids)} positions · {n} steps "
                   f"· from the sampler's {e(tr.source)}</h2><div class='prompt'>{e(tr.prompt)}</div><table>")
        for s in range(n):
            cells = []
            for pos, (tok, rs) in enumerate(zip(tr.completion_ids, tr.reveal_step)):
                if rs > s:
                    cells.append(f"<span class='tok masked' title='position {pos}: masked'>{MASK_GLYPH}</span>")
                    continue
                cls = "tok new" if rs == s else "tok"
                tip = f"position {pos} · step {rs + 1} · confidence {_conf(tr.confidence[pos])} · id {tok}"
                cells.append(f"<span class='{cls}' style='background:{_colour(rs, n)}' "
                             f"title='{e(tip)}'>{e(label(tok))}</span>")
            out.append(f"<tr class='step'><td class='n'>step {s + 1}/{n}</td><td>{''.join(cells)}</td></tr>")
        out.append("</table></section>")
    out.append("</body></html>")
    return "\n".join(out)
