"""A ``ddrl`` model for EleutherAI's lm-evaluation-harness (docs/lm-eval.md).

``DDRLLM`` wraps any ddrl policy as an ``lm_eval.api.model.LM`` registered under the name ``ddrl``:

* ``generate_until``: the ddrl sampler named by ``sampler`` (default ``block``) through
  ``ddrl.generation.generate``; ``max_completion_length`` comes from the model argument of that
  name, else the request's ``max_gen_toks``; the text is cut at the first EOS (the policy's
  decoding) and then at the earliest ``until`` string.
* ``loglikelihood``: log p(continuation | context) estimated by ddrl's ELBO estimator with
  ``mc_num`` Monte Carlo masks (stratified mask counts, weight L/m: the estimate LLaDA's own
  lm-eval code computes), seeded per request so the value does not depend on batching or order;
  ``is_greedy`` by LLaDA's check (``greedy_check``).
* ``loglikelihood_rolling``: not supported (raises ``NotImplementedError``).

Importing this module needs ``lm_eval`` (``pip install 'ddrl[lm-eval]'``) and registers the model,
so ``lm_eval.simple_evaluate(model="ddrl", ...)`` works after ``import ddrl.evaluation.lm_eval_adapter``.
The harness's own ``lm_eval`` console script does not discover models through entry points
(0.4.13), so from a shell use ``ddrl lm-eval`` or ``python -m ddrl.evaluation.lm_eval_adapter``,
which takes ``lm_eval``'s arguments unchanged with ``ddrl`` registered.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import MaskedViews
from ddrl.generation import generate
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.registry import Registry

log = logging.getLogger(__name__)

GreedyCheck = Literal["iterative", "one_step", "off"]
DEFAULT_GEN_TOKS = 256  # lm-eval's default max_gen_toks
DEFAULT_MC_NUM = 128  # LLaDA's lm-eval default
SECTIONS = ("model", "sampler", "estimator")


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@register_model("ddrl")
class DDRLLM(LM):
    """A ddrl policy as an lm-eval ``LM``.

    Args:
        model: model name (``tiny``, ``llada``, ``dream`` or a plugin's); default: the recipe's, else ``tiny``.
        model_path: a model directory or ``builtin:NAME`` (``model.path``).
        config: a ddrl YAML recipe whose ``model``/``sampler``/``estimator`` sections are used.
        sampler: sampler name for ``generate_until`` (default: the recipe's, else ``block``).
        estimator: likelihood estimator for ``loglikelihood`` (default: the recipe's, else ``elbo``).
        mc_num: Monte Carlo masks per request (the estimator's ``num_samples``); default: an
            ``estimator.num_samples`` set explicitly (``--set`` or recipe), else 128 (LLaDA's).
        greedy_check: how ``is_greedy`` is decided: ``iterative`` (LLaDA's check: from the fully
            masked continuation, reveal the most confident position's argmax, one per forward
            pass, and compare with the continuation), ``one_step`` (argmax at every position of the
            fully masked continuation, one forward pass) or ``off`` (always False).
        max_completion_length: tokens generated per request (default: the request's
            ``max_gen_toks``, else 256).
        max_length: longest context + continuation in tokens; longer contexts keep their last
            tokens (default: no truncation).
        batch_size: requests per forward pass / sampler call (``auto`` = 16).
        seed: seed of the sampler's and the estimator's random draws.
        device: ``cpu``, ``cuda`` ... (default: cuda if available).
        overrides: ``section.field=value`` settings of the model, sampler and estimator sections
            (``--set`` of ``ddrl``), e.g. ``sampler.threshold=0.9`` or ``model.chat_template=false``.
        policy: an already built policy (Python use; ``model``/``model_path`` are then ignored).
    """

    def __init__(
        self,
        model: str | None = None,
        model_path: str | None = None,
        config: str | None = None,
        sampler: str | None = None,
        estimator: str | None = None,
        mc_num: int | None = None,
        greedy_check: GreedyCheck = "iterative",
        max_completion_length: int | None = None,
        max_length: int | None = None,
        batch_size: int | str | None = 16,
        seed: int = 0,
        device: str | None = None,
        overrides: Sequence[str] | None = None,
        policy: MaskedDiffusionPolicy | None = None,
        max_batch_size: int | None = None,  # passed by the harness; unused
        **dotted: Any,
    ) -> None:
        super().__init__()
        from ddrl.cli.common import assemble_config, pick_device

        sets = list(overrides or [])
        for key, value in dotted.items():
            section = key.split(".", 1)[0]
            if "." not in key or section not in SECTIONS:
                raise ValueError(
                    f"unknown model argument {key!r}: use the named arguments of DDRLLM or "
                    f"section.field=value with a section in {SECTIONS}"
                )
            sets.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
        if greedy_check not in ("iterative", "one_step", "off"):
            raise ValueError(f"greedy_check must be iterative, one_step or off, got {greedy_check!r}")
        self.registry = Registry()
        extra: dict[str, Any] = {"model.path": str(model_path) if model_path is not None else None}
        cfg = assemble_config(
            self.registry, Path(config) if config else None,
            {"model": None if policy is not None else model, "sampler": sampler, "estimator": estimator},
            sets, list(SECTIONS), extra=extra,
        )
        est_cfg = cfg.estimator
        if "num_samples" in type(est_cfg).model_fields and (mc_num is not None or "num_samples" not in est_cfg.model_fields_set):
            est_cfg = type(est_cfg).model_validate({**est_cfg.model_dump(), "num_samples": int(mc_num or DEFAULT_MC_NUM)})
            cfg = cfg.model_copy(update={"estimator": est_cfg})
        self.run_config = cfg
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            log.warning("device %s requested (lm_eval's default) but CUDA is not available: using cpu", device)
            device = "cpu"
        if policy is None:
            policy = self.registry.build("models", cfg.model).to(pick_device(device))
        elif device is not None:
            policy = policy.to(device)
        self.policy = policy.eval()
        self._device = self.policy.device
        self.estimator = self.registry.build("estimators", cfg.estimator)
        self.sampler_config = cfg.sampler
        self.mc_num = int(getattr(est_cfg, "num_samples", 1))
        self.greedy_check: GreedyCheck = greedy_check
        self.max_completion_length = None if max_completion_length is None else int(max_completion_length)
        self.max_length = None if max_length is None else int(max_length)
        self.batch_size = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        self.seed = int(seed)
        self._harness_templated = False  # set once the harness renders prompts with apply_chat_template
        self._samplers: dict[tuple[int, float | None], Any] = {}

    # ------------------------------------------------------------------------------------------
    # encoding

    @property
    def tokenizer(self) -> Any:
        tok = self.policy.tokenizer
        if tok is None:
            raise ValueError(f"{type(self.policy).__name__} has no tokenizer: lm-eval needs a text model")
        return tok

    def encode_context(self, context: str) -> list[int]:
        """The policy's prompt encoding (``encode_prompt``: LLaDA/Dream wrap it in their chat
        template unless ``model.chat_template=false``; ``tiny`` prepends BOS). A context the
        harness already rendered with ``--apply_chat_template`` is encoded as plain tokens."""
        if self._harness_templated:
            return list(self.tokenizer.encode(context, add_special_tokens=False))
        return list(self.policy.encode_prompt(context))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation); trailing spaces of the context move to the
        continuation (the harness's and LLaDA's convention); the context is left-truncated to
        ``max_length``."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx = self.encode_context(context)
        cont = list(self.tokenizer.encode(continuation, add_special_tokens=False))
        if self.max_length is not None:
            ctx = ctx[-max(self.max_length - len(cont), 1):]
        return ctx, cont

    # ------------------------------------------------------------------------------------------
    # loglikelihood

    def _batches(self, items: list[tuple[int, list[int], list[int]]]) -> list[list[tuple[int, list[int], list[int]]]]:
        """Requests grouped by continuation length (one canvas per group), ``batch_size`` at a time."""
        groups: dict[int, list] = defaultdict(list)
        for item in items:
            groups[len(item[2])].append(item)
        out = []
        for _, group in sorted(groups.items()):
            out += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        return out

    def _batch(self, pairs: Sequence[tuple[list[int], list[int]]]) -> SequenceBatch:
        dev = self.policy.device
        parts = [
            SequenceBatch.from_parts(torch.tensor([c], device=dev), torch.tensor([o], device=dev)) for c, o in pairs
        ]
        return parts[0] if len(parts) == 1 else SequenceBatch.cat(parts)

    @torch.no_grad()
    def score_pairs(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """``(ELBO estimate, is_greedy)`` of token-id pairs (context, continuation).

        Each pair's masks are drawn by the estimator from its own generator seeded with ``seed``,
        so a pair's estimate is the same alone or in any batch (up to float rounding of padding).
        """
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        items = [(i, list(c), list(o)) for i, (c, o) in enumerate(pairs)]
        for i, _, cont in items:
            if not cont:
                results[i] = (0.0, True)
        for chunk in self._batches([it for it in items if it[2]]):
            batch = self._batch([(c, o) for _, c, o in chunk])
            views = MaskedViews.cat([
                self.estimator.draw(batch.index(slice(r, r + 1)), torch.Generator(device=batch.device).manual_seed(self.seed))
                for r in range(len(chunk))
            ])
            ll = self.estimator.score(self.policy, batch, views).sequence().tolist()
            greedy = self._is_greedy(batch)
            for (i, _, _), value, g in zip(chunk, ll, greedy):
                results[i] = (float(value), bool(g))
        return [r for r in results if r is not None]

    def _is_greedy(self, batch: SequenceBatch) -> list[bool]:
        b, n = batch.completion_ids.shape
        if self.greedy_check == "off":
            return [False] * b
        mask_id, p = self.policy.mask_token_id, batch.prompt_length
        x = torch.cat([batch.prompt_ids, torch.full_like(batch.completion_ids, mask_id)], 1)
        attn = batch.attention_mask
        if self.greedy_check == "one_step":
            pred = self.policy.logits(x, attn)[:, p:].argmax(-1)
            return (pred == batch.completion_ids).all(-1).tolist()
        rows = torch.arange(b, device=x.device)
        for _ in range(n):  # LLaDA's suffix_greedy_prediction: one most-confident position per pass
            logits = self.policy.logits(x, attn)[:, p:].float()
            prob, pred = logits.softmax(-1).max(-1)
            still = x[:, p:] == mask_id
            pos = prob.masked_fill(~still, -1.0).argmax(-1)
            x[rows, p + pos] = pred[rows, pos]
        return (x[:, p:] == batch.completion_ids).all(-1).tolist()

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*req.args) for req in requests]
        out = self.score_pairs(pairs)
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "ddrl's lm-eval model does not support loglikelihood_rolling (perplexity tasks such as "
            "wikitext): a masked diffusion model has no left-to-right factorisation to roll over windows; "
            "use loglikelihood (ELBO) or generate_until tasks"
        )

    # ------------------------------------------------------------------------------------------
    # generate_until

    def sampler_for(self, length: int, temperature: float | None = None) -> Any:
        """The configured sampler with ``max_completion_length = length``. Fields of the sampler
        not set by the user adapt to the length: ``block_length`` = 32 when it divides the length,
        else the length; ``steps`` = the length (one token per step, LLaDA's evaluation setting)."""
        key = (length, temperature)
        if key not in self._samplers:
            base = self.sampler_config
            fields = type(base).model_fields
            values = base.model_dump()
            values["max_completion_length"] = length
            explicit = base.model_fields_set
            if "block_length" in fields and "block_length" not in explicit:
                values["block_length"] = 32 if length % 32 == 0 else length
            if "steps" in fields and "steps" not in explicit:
                values["steps"] = length
            if temperature is not None and "temperature" not in explicit:
                values["temperature"] = temperature
            self._samplers[key] = self.registry.build("samplers", type(base).model_validate(values))
        return self._samplers[key]

    def _generation_length(self, kwargs: dict[str, Any]) -> int:
        if self.max_completion_length is not None:
            return self.max_completion_length
        return int(kwargs.get("max_gen_toks", DEFAULT_GEN_TOKS))

    @staticmethod
    def _until(kwargs: dict[str, Any]) -> list[str]:
        until = kwargs.get("until") or []
        return [until] if isinstance(until, str) else list(until)

    @staticmethod
    def cut(text: str, until: Sequence[str]) -> str:
        """``text`` up to the earliest occurrence of any ``until`` string."""
        end = len(text)
        for stop in until:
            if stop:
                k = text.find(stop)
                if k != -1:
                    end = min(end, k)
        return text[:end]

    @torch.no_grad()
    def generate_texts(self, contexts: Sequence[str], gen_kwargs: dict[str, Any]) -> list[str]:
        """Completions of ``contexts`` under one set of generation arguments, cut at ``until``."""
        kwargs = dict(gen_kwargs)
        temperature = kwargs.get("temperature")
        if temperature is not None and not _as_bool(kwargs.get("do_sample", True)):
            temperature = 0.0
        sampler = self.sampler_for(self._generation_length(kwargs), None if temperature is None else float(temperature))
        ids = [self.encode_context(c) for c in contexts]
        if self.max_length is not None:
            room = max(self.max_length - sampler.config.max_completion_length, 1)
            ids = [seq[-room:] for seq in ids]
        out = generate(self.policy, sampler, ids, batch_size=self.batch_size,
                       generator=torch.Generator(device=self.policy.device).manual_seed(self.seed))
        until = self._until(kwargs)
        return [self.cut(text, until) for text in out.completions]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        kwargs_of: dict[str, dict[str, Any]] = {}
        for k, req in enumerate(requests):
            key = repr(sorted(req.args[1].items(), key=lambda kv: kv[0]))
            groups[key].append(k)
            kwargs_of[key] = req.args[1]
        results: list[str] = [""] * len(requests)
        for key, rows in groups.items():
            texts = self.generate_texts([requests[k].args[0] for k in rows], kwargs_of[key])
            for k, text in zip(rows, texts):
                results[k] = text
                self.cache_hook.add_partial("generate_until", requests[k].args, text)
        return results

    # ------------------------------------------------------------------------------------------
    # chat templates (--apply_chat_template)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render the harness's messages with the tokenizer's chat template; the rendered text is then
        encoded as plain tokens (the policy's own template is not applied a second time)."""
        tok = self.tokenizer
        if not (getattr(tok, "chat_template", None) and hasattr(tok, "apply_chat_template")):
            raise NotImplementedError(
                f"{type(self.policy).__name__}'s tokenizer has no chat template; run without "
                "--apply_chat_template (prompts are encoded by the policy's encode_prompt)"
            )
        self._harness_templated = True
        return str(tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt))


def main(argv: Sequence[str] | None = None) -> None:
    """``lm_eval``'s own command line with the ``ddrl`` model registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":  # python -m ddrl.evaluation.lm_eval_adapter --model ddrl --model_args ... --tasks ...
    main()
