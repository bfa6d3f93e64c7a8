"""`HFDiffusionPolicy`: a masked diffusion policy on transformers' maintained decoder modules.

``llada`` (LlamaModel) and ``dream`` (Qwen2Model) share everything but their checkpoint
vocabulary, so the shared part lives here:

* **Bidirectional attention.** We build the base model from transformers and drive its decoder
  layers ourselves (embedding -> layers -> norm -> head, a dozen lines below), passing our own
  attention mask (``None`` without padding, a key mask ``[B, 1, 1, T]`` with it), position ids
  counted from each row's first real token, and a key/value cache that splices fresh windows into
  cached keys. The config carries ``is_causal=False`` and every attention module has
  ``is_causal=False``, so transformers' own ``model(...)`` forward is bidirectional as well.
* **Dream's shift** (``shift_logits``): the prediction for position j comes from output j-1; the
  first real position of a row gets its own output (as Dream's generation code does for
  position 0). The shift is applied to hidden states before the head (cheaper than on logits).
* Checkpoint I/O in the published layout (``ddrl.models.hf``), LoRA (``ddrl.models.lora``),
  gradient checkpointing, SDPA or eager attention, float32/bfloat16/float16.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from ddrl.config import ComponentConfig
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.models.cache import KVCache, splice
from ddrl.models.head import target_logprobs
from ddrl.models.hf import (
    CONFIG_FILE, DTYPES, TOKEN_ONLY_FILE, CheckpointError, Renamer, copy_auxiliary_files,
    copy_tokenizer_files, has_tokenizer, is_tokenizer_file, load_tokenizer, load_weights, read_config,
    resolve_checkpoint_dir, resolve_tokenizer_dir, save_weights, write_json,
)
from ddrl.models.lora import (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraSettings, adapters_disabled, apply_lora, load_adapters, lora_layers,
    merged_state_dict, save_adapters,
)


class HFPolicyConfig(ComponentConfig):
    """Recipe options shared by the ``llada`` and ``dream`` models."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str = Field(description="local checkpoint directory (config.json, *.safetensors, tokenizer files)")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template (user turn)")
    mask_token_id: int | None = Field(None, description="null = from config.json / the tokenizer")
    tokenizer: str | None = Field(
        None, description="a directory (or one of its files) holding the tokenizer files to use instead of the "
        "checkpoint's; null = the checkpoint's own",
    )
    token_only: bool = Field(
        False, description="load without any tokenizer, for token-id work (token-level tasks, energy tasks, "
        "reference checks); the mask id comes from config.json or mask_token_id",
    )
    lora: LoraSettings | None = Field(None, description="null = full fine-tuning; {} = LoRA with defaults")


@dataclass
class CanvasKVCache(KVCache):
    """A ``KVCache`` that also remembers the canvas it was computed on ``[B, T]``: a shifted model
    (Dream) needs the token just before a window to predict the window's first position."""

    input_ids: Tensor | None = None

    def truncate(self, length: int) -> CanvasKVCache:
        base = super().truncate(length)
        return CanvasKVCache(base.keys, base.values, self.input_ids)

    def select(self, rows: Tensor) -> CanvasKVCache:
        base = super().select(rows)
        return CanvasKVCache(base.keys, base.values, None if self.input_ids is None else self.input_ids[rows])


def _splicing_cache(cached: KVCache | None, start: int) -> Any:
    """A transformers ``Cache`` whose ``update`` records every layer's keys/values (``cached`` is
    None) or returns the cached ones with the fresh window spliced in at ``start``."""
    from transformers.cache_utils import Cache

    class SplicingCache(Cache):
        def __init__(self) -> None:
            super().__init__(layers=[])
            self.keys: list[Tensor] = []
            self.values: list[Tensor] = []

        def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
            if cached is None:
                self.keys.append(key_states)
                self.values.append(value_states)
                return key_states, value_states
            keys = splice(cached.keys[layer_idx], key_states, start)
            return keys, splice(cached.values[layer_idx], value_states, start)

    return SplicingCache()


def positions_and_key_mask(
    attention_mask: Tensor | None, batch: int, length: int, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """Rotary positions ``[B, T]`` counted from each row's first real token, and the boolean
    key mask ``[B, 1, 1, T]`` (None without padding)."""
    if attention_mask is None or bool(attention_mask.all()):
        return torch.arange(length, device=device).expand(batch, length), None
    mask = attention_mask.bool()
    return (mask.long().cumsum(-1) - 1).clamp(min=0), mask[:, None, None, :]


def first_real(attention_mask: Tensor) -> Tensor:
    """``[B, T]`` True at each row's first real (unpadded) position."""
    mask = attention_mask.bool()
    before = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
    return mask & ~before


class HFDiffusionPolicy(MaskedDiffusionPolicy):
    """Base of ``LLaDAPolicy`` and ``DreamPolicy``. Subclasses give the published vocabulary:
    ``hf_config`` (published config.json -> transformers config), ``renamer``, ``tied``, and
    ``base_model_class`` / ``tokenizer_fallback`` / ``default_lora_targets``."""

    Config: ClassVar[type[HFPolicyConfig]] = HFPolicyConfig
    supports_kv_cache: ClassVar[bool] = True
    supports_lean_scoring: ClassVar[bool] = True
    shift_logits: ClassVar[bool] = False
    architecture: ClassVar[str] = ""  # for messages
    example_repo: ClassVar[str] = ""
    default_lora_targets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, lm_head: nn.Linear, published_config: dict[str, Any], tokenizer: Any,
                 mask_token_id: int, source_dir: Path | None = None, chat_template: bool = True,
                 tokenizer_dir: Path | None = None) -> None:
        super().__init__()
        self.model = model  # transformers LlamaModel / Qwen2Model
        self.lm_head = lm_head
        self.published_config = published_config
        self.tokenizer = tokenizer
        self._mask_token_id = mask_token_id
        self.source_dir = source_dir
        self.use_chat_template = chat_template
        self.tokenizer_dir = tokenizer_dir  # an explicit tokenizer directory (model.tokenizer), else None
        self.lora: LoraSettings | None = None

    # ---------------------------------------------------------------------------------------
    # subclass hooks

    @classmethod
    def hf_config(cls, published: dict[str, Any]) -> Any:
        raise NotImplementedError

    @classmethod
    def base_model_class(cls) -> type[nn.Module]:
        raise NotImplementedError

    @classmethod
    def renamer(cls) -> Renamer:
        raise NotImplementedError

    @classmethod
    def tied(cls, published: dict[str, Any]) -> bool:
        """Whether the output head shares the input embedding (not stored in the checkpoint)."""
        raise NotImplementedError

    @classmethod
    def tokenizer_fallback(cls) -> type | None:
        return None

    @classmethod
    def lora_target(cls, name: str) -> str:
        """A LoRA target given by its published name -> the internal module name."""
        return name

    # ---------------------------------------------------------------------------------------
    @property
    def mask_token_id(self) -> int:
        return self._mask_token_id

    @property
    def vocab_size(self) -> int:
        return self.lm_head.out_features

    @property
    def lora_enabled(self) -> bool:
        return bool(lora_layers(self.model))

    def encode_prompt(self, prompt: str) -> list[int]:
        """The prompt as the user turn of the tokenizer's chat template (with the assistant
        header after it), or plain tokens when ``chat_template`` is off or absent."""
        tok = self._require_tokenizer()
        if self.use_chat_template and getattr(tok, "chat_template", None):
            return self.encode_chat([{"role": "user", "content": prompt}])
        return tok.encode(prompt, add_special_tokens=True)

    # ---------------------------------------------------------------------------------------
    # the network

    def _run(self, input_ids: Tensor, positions: Tensor, key_mask: Tensor | None, cache: Any,
             first: Tensor | None) -> Tensor:
        """Logits ``[B, S, V]`` of ``input_ids [B, S]`` at rotary ``positions [B, S]``."""
        return self.lm_head(self._hidden(input_ids, positions, key_mask, cache, first))

    def _hidden(self, input_ids: Tensor, positions: Tensor, key_mask: Tensor | None, cache: Any,
                first: Tensor | None) -> Tensor:
        """``[B, S, D]`` the normalised hidden states the head reads (shifted for Dream)."""
        base = self.model
        x = base.embed_tokens(input_ids)
        mask = key_mask
        if key_mask is not None and base.config._attn_implementation != "sdpa":
            mask = torch.zeros(key_mask.shape, dtype=x.dtype, device=x.device).masked_fill(
                ~key_mask, torch.finfo(x.dtype).min
            )  # eager attention adds the mask to the scores
        cos_sin = self._rotary(x, positions)
        for layer in base.layers:
            x = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin, cache=cache)
        x = base.norm(x)
        if self.shift_logits:
            shifted = torch.cat([x[:, :1], x[:, :-1]], dim=1)
            if first is not None and bool(first[:, 1:].any()):
                shifted = torch.where(first[..., None], x, shifted)
            x = shifted
        return x

    def _rotary(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        rotary = self.model.rotary_emb
        if rotary.inv_freq.dtype != torch.float32:  # a .to(bfloat16) would coarsen the rotary phases
            self.model.rotary_emb = rotary = type(rotary)(config=self.model.config).to(x.device)
        return rotary(x, positions)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, scored: Tensor | None = None,
        targets: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, T, V]`` for ``input_ids [B, T]``; position j predicts token j. With
        ``scored``/``targets`` the ``[M]`` target log-probs, the head applied at the scored rows only."""
        b, t = input_ids.shape
        positions, key_mask = positions_and_key_mask(attention_mask, b, t, input_ids.device)
        first = None if key_mask is None else first_real(attention_mask)
        if scored is None:
            return self._run(input_ids, positions, key_mask, None, first)
        hidden = self._hidden(input_ids, positions, key_mask, None, first)[scored]
        if self.lm_head.bias is not None:
            raise ValueError("lean scoring needs an LM head without bias")
        return target_logprobs(hidden, self.lm_head.weight, targets[scored], self.mask_token_id)  # type: ignore[index]

    def forward_cache(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        b, t = input_ids.shape
        positions, key_mask = positions_and_key_mask(attention_mask, b, t, input_ids.device)
        cache = _splicing_cache(None, 0)
        first = None if key_mask is None else first_real(attention_mask)
        logits = self._run(input_ids, positions, key_mask, cache, first)
        if len(cache.keys) != len(self.model.layers):
            raise RuntimeError("forward_cache recorded no keys: run it under no_grad (checkpointing drops caches)")
        return logits, CanvasKVCache(cache.keys, cache.values, input_ids if self.shift_logits else None)

    def forward_window(
        self, window_ids: Tensor, start: int, cache: KVCache, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Logits ``[B, S, V]`` of canvas positions ``[start, start+S)``; other positions' keys and
        values come from ``cache`` (prefix or dual layout, see ``ddrl.models.cache``)."""
        b, s = window_ids.shape
        length = max(cache.length, start + s)  # canvas positions the keys cover
        if attention_mask is not None and attention_mask.shape[1] < length:
            raise ValueError(f"attention_mask covers {attention_mask.shape[1]} positions, the cache {length}")
        canvas_mask = None if attention_mask is None else attention_mask[:, :length]
        positions, key_mask = positions_and_key_mask(canvas_mask, b, length, window_ids.device)
        ids, q0 = window_ids, start
        if self.shift_logits and start > 0:
            # the first window position is predicted from the output of the position before it
            canvas = getattr(cache, "input_ids", None)
            if canvas is None:
                raise ValueError(f"{type(self).__name__}.forward_window needs a cache made by its own forward_cache")
            ids, q0 = torch.cat([canvas[:, start - 1 : start].to(window_ids.device), window_ids], dim=1), start - 1
            if cache.length == start:  # prefix layout: recompute position start-1 instead of reading it
                cache = cache.truncate(start - 1)
        first = None if key_mask is None else first_real(canvas_mask)[:, q0 : start + s]
        logits = self._run(ids, positions[:, q0 : start + s], key_mask, _splicing_cache(cache, q0), first)
        return logits[:, start - q0 :]

    # ---------------------------------------------------------------------------------------
    # training helpers

    supports_gradient_checkpointing: ClassVar[bool] = True

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each decoder layer in the backward pass (activation memory ~ one layer)."""
        model = self.model
        if enabled:  # transformers 5 renamed gradient_* to activation_checkpointing_*
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        else:
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()

    def shard_units(self) -> list[nn.Module]:
        return list(self.model.layers)

    def enable_lora(self, settings: LoraSettings) -> None:
        """Inject LoRA adapters (only they train from now on)."""
        targets = settings.target_modules or list(self.default_lora_targets)
        apply_lora(self.model, settings, [self.lora_target(t) for t in targets])
        self.lm_head.requires_grad_(False)
        self.lora = settings

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Within the block the policy is its base model (LoRA adapters off): the RL reference."""
        with adapters_disabled(self.model):
            yield

    def reference_view(self) -> MaskedDiffusionPolicy:
        """The base weights as a separate reference policy that shares this policy's memory."""
        from ddrl.models.reference import AdapterFreeView

        if not self.lora_enabled:
            raise ValueError("reference_view needs LoRA (model.lora); without it copy the policy instead")
        return AdapterFreeView(self)

    def frozen_reference(self) -> MaskedDiffusionPolicy:
        """With LoRA the published reference, the base weights, as a view sharing this policy's
        memory (no second copy of an 8B model); otherwise a frozen copy."""
        return self.reference_view() if self.lora_enabled else super().frozen_reference()

    def save_resumable(self, path: str | Path) -> None:
        """With LoRA, base weights and adapters apart (``merge_adapters=False``), so that a resumed
        run restores the adapters exactly."""
        self.save_pretrained(path, merge_adapters=not self.lora_enabled)

    # ---------------------------------------------------------------------------------------
    # persistence

    def save_pretrained(
        self, path: str | Path, max_shard_bytes: int = 5 * 1024**3, merge_adapters: bool = True
    ) -> None:
        """Write the published layout: config.json (published keys), safetensors under published
        names, the tokenizer and other auxiliary files. With LoRA the adapters are merged into the
        weights; ``merge_adapters=False`` writes the base weights and the adapters beside them
        (``ddrl_lora.*``), which ``from_pretrained`` restores exactly (for resuming training).

        A policy loaded with an explicit ``tokenizer`` directory writes that tokenizer's files; a
        token-only policy (no tokenizer) writes none and leaves ``ddrl_token_only.json``, so that the
        directory loads back token-only."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for stale in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            (path / stale).unlink(missing_ok=True)
        keep_adapters = self.lora_enabled and not merge_adapters
        if self.lora_enabled and merge_adapters:
            state = merged_state_dict(self)
        else:
            state = {k.replace(".base_layer.", "."): v for k, v in self.state_dict().items() if ".lora_" not in k}
        if self.tied(self.published_config):
            state.pop("lm_head.weight", None)
        save_weights(state, path, self.renamer(), max_shard_bytes)
        write_json(path / CONFIG_FILE, {**self.published_config, "mask_token_id": self.mask_token_id})
        source = self.source_dir if self.source_dir is not None and self.source_dir.is_dir() else None
        exclude: list[str] = [ADAPTER_WEIGHTS, ADAPTER_CONFIG]
        if source is not None and (self.tokenizer is None or self.tokenizer_dir is not None):
            # the checkpoint's own tokenizer files are not the ones this policy uses
            exclude += [item.name for item in source.iterdir() if is_tokenizer_file(item.name)]
        if source is not None and self.tokenizer is not None:
            exclude.append(TOKEN_ONLY_FILE)
        if source is not None:
            copy_auxiliary_files(source, path, exclude=exclude)
        if self.tokenizer is None:
            if path.resolve() != (source.resolve() if source is not None else None):
                for stale in path.iterdir():  # no tokenizer files of an earlier save into the same directory
                    if is_tokenizer_file(stale.name) and stale.is_file():
                        stale.unlink()
            write_json(path / TOKEN_ONLY_FILE, {
                "token_only": True,
                "note": "saved by ddrl from a policy loaded without a tokenizer (model.token_only); "
                        "ddrl loads this directory token-only unless model.tokenizer names tokenizer files",
            })
        elif self.tokenizer_dir is not None and self.tokenizer_dir.is_dir():
            copy_tokenizer_files(self.tokenizer_dir, path)
        elif source is None:
            self.tokenizer.save_pretrained(str(path))
        if keep_adapters:
            assert self.lora is not None
            targets = [self.lora_target(t) for t in (self.lora.target_modules or self.default_lora_targets)]
            save_adapters(self.model, self.lora, targets, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFDiffusionPolicy:
        """Load a checkpoint directory in the published layout.

        Keyword options: ``dtype`` (torch dtype, default float32), ``attn_implementation``
        ("sdpa"), ``mask_token_id`` (None = config.json / tokenizer), ``chat_template`` (True),
        ``tokenizer`` (a directory holding the tokenizer files to use instead of the checkpoint's)
        and ``token_only`` (False; True loads no tokenizer: token ids only, ``policy.tokenizer`` is
        None and the mask id comes from config.json or ``mask_token_id``). A directory written by
        ``save_pretrained`` of a token-only policy (``ddrl_token_only.json``) loads token-only.
        """
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            raise ImportError(
                f"{cls.__name__} needs transformers>=5 (found {transformers.__version__}): pip install -U transformers"
            )
        path = resolve_checkpoint_dir(path, cls.example_repo)
        dtype = kwargs.get("dtype", torch.float32)
        dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        published = read_config(path)
        hf_cfg = cls.hf_config(published)
        check_config_keys(published, path, cls.example_repo)
        hf_cfg._attn_implementation = kwargs.get("attn_implementation", "sdpa")
        hf_cfg.is_causal = False  # masked diffusion: every position attends to every position
        hf_cfg.use_cache = False
        tokenizer, tokenizer_dir = cls._load_tokenizer(path, kwargs.get("tokenizer"), bool(kwargs.get("token_only")))
        mask_id = resolve_mask_token_id(kwargs.get("mask_token_id"), published, tokenizer, path)
        with torch.device("meta"):  # no random init of billions of weights; the checkpoint assigns them
            model = cls.base_model_class()(hf_cfg)
            lm_head = nn.Linear(hf_cfg.hidden_size, hf_cfg.vocab_size, bias=False)
        policy = cls(model, lm_head, published, tokenizer, mask_id, path, kwargs.get("chat_template", True),
                     tokenizer_dir)
        tied = cls.tied(published)
        load_weights(policy, path, cls.renamer(), dtype,
                     not_stored=["lm_head.weight"] if tied else [])
        if tied:
            policy.lm_head.weight = policy.model.embed_tokens.weight
        model.rotary_emb = type(model.rotary_emb)(config=hf_cfg)  # non-persistent buffers, rebuilt off meta
        for module in model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
        if mask_id >= policy.vocab_size:
            raise ValueError(f"mask_token_id {mask_id} is outside the model's {policy.vocab_size} logits")
        policy.lora = load_adapters(model, path)  # present only in a save_pretrained(merge_adapters=False)
        if policy.lora is not None:
            policy.lm_head.requires_grad_(False)
        return policy

    @classmethod
    def _load_tokenizer(cls, path: Path, tokenizer: str | Path | None, token_only: bool) -> tuple[Any, Path | None]:
        """(tokenizer or None, the explicit tokenizer directory or None) for ``from_pretrained``."""
        if token_only and tokenizer is not None:
            raise ValueError(
                f"model.tokenizer={tokenizer} and model.token_only=true contradict each other: "
                "give a tokenizer directory or load token-only, not both"
            )
        if token_only:
            return None, None
        if tokenizer is not None:
            directory = resolve_tokenizer_dir(tokenizer)
            hint = ("; model.tokenizer (from_pretrained(..., tokenizer=...)) must name the directory of the "
                    "tokenizer files, or set model.token_only=true to load without a tokenizer")
            return load_tokenizer(directory, cls.tokenizer_fallback(), hint), directory
        if not has_tokenizer(path) and (path / TOKEN_ONLY_FILE).is_file():
            return None, None  # saved by ddrl from a token-only policy
        hint = (
            ". To use tokenizer files kept elsewhere set model.tokenizer=DIR (from_pretrained(..., tokenizer=DIR)); "
            "to work on token ids only (token-level tasks, no text prompts) set model.token_only=true "
            "(from_pretrained(..., token_only=True))"
        )
        return load_tokenizer(path, cls.tokenizer_fallback(), hint), None

    @classmethod
    def skeleton(cls, config: HFPolicyConfig) -> HFDiffusionPolicy:  # type: ignore[override]
        """The policy ``config`` describes on the meta device: config.json read, no weights (LoRA
        injected as configured)."""
        path = resolve_checkpoint_dir(config.path, cls.example_repo)
        published = read_config(path)
        mask_id = config.mask_token_id if config.mask_token_id is not None else int(published.get("mask_token_id", 0))
        with torch.device("meta"):
            model = cls.base_model_class()(cls.hf_config(published))
            lm_head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
            policy = cls(model, lm_head, published, None, mask_id, path).to(DTYPES[config.dtype])
            if cls.tied(published):
                policy.lm_head.weight = policy.model.embed_tokens.weight
            if config.lora is not None:
                policy.enable_lora(config.lora)
        return policy

    @classmethod
    def random(cls, published: dict[str, Any], dtype: torch.dtype = torch.float32, seed: int = 0,
               std: float = 0.02) -> HFDiffusionPolicy:
        """A policy of the published architecture with random weights (N(0, std), norms 1) and no
        tokenizer: for benchmarks and dry runs at real width without a checkpoint or a download."""
        hf_cfg = cls.hf_config(published)
        hf_cfg._attn_implementation = "sdpa"
        hf_cfg.is_causal = False
        hf_cfg.use_cache = False
        with torch.device("meta"):
            model = cls.base_model_class()(hf_cfg)
            lm_head = nn.Linear(hf_cfg.hidden_size, hf_cfg.vocab_size, bias=False)
        policy = cls(model, lm_head, published, None, int(published["mask_token_id"]))
        policy.to(dtype).to_empty(device="cpu")  # storage in the final dtype: no float32 copy of 8B weights
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std, generator=generator)
        if cls.tied(published):
            policy.lm_head.weight = policy.model.embed_tokens.weight
        model.rotary_emb = type(model.rotary_emb)(config=hf_cfg)
        for module in model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
        return policy

    @classmethod
    def from_config(cls, config: HFPolicyConfig) -> HFDiffusionPolicy:  # type: ignore[override]
        policy = cls.from_pretrained(
            config.path, dtype=DTYPES[config.dtype], attn_implementation=config.attn_implementation,
            mask_token_id=config.mask_token_id, chat_template=config.chat_template,
            tokenizer=config.tokenizer, token_only=config.token_only,
        )
        if config.lora is not None and not policy.lora_enabled:
            policy.enable_lora(config.lora)
        return policy


# config.json keys, per model_type, that ``hf_config`` would otherwise default: the shapes of the
# weights (a guessed MLP width or key/value head count fails later as a size mismatch) and the rotary
# base (a guessed one loads and computes nonsense). Alternatives: any one of a tuple will do.
REQUIRED_CONFIG_KEYS: dict[str, tuple[tuple[tuple[str, ...], str], ...]] = {
    "llada": (
        (("mlp_hidden_size", "mlp_ratio"), "the MLP width"),
        (("n_kv_heads", "multi_query_attention"), "the number of key/value heads"),
        (("rope_theta",), "the rotary base"),
    ),
    "dream": (
        (("num_key_value_heads",), "the number of key/value heads"),
        (("rope_theta",), "the rotary base"),
    ),
}


def check_config_keys(published: dict[str, Any], path: Path, example_repo: str = "") -> None:
    """Refuse a config.json that lacks a key ddrl would otherwise default (``REQUIRED_CONFIG_KEYS``),
    naming the file, the key and what it sets."""
    needed = REQUIRED_CONFIG_KEYS.get(str(published.get("model_type", "")).lower(), ())
    for keys, what in needed:
        if not any(k in published for k in keys):
            either = " or ".join(repr(k) for k in keys)
            source = f" (e.g. {example_repo}'s)" if example_repo else ""
            raise CheckpointError(
                f"{path / CONFIG_FILE} lacks {either}, which sets {what}: ddrl would have to guess it, and a "
                f"guess that does not match the weights fails or computes nonsense; copy the key from the "
                f"published config.json{source} the weights came with"
            )


def resolve_mask_token_id(override: int | None, published: dict[str, Any], tokenizer: Any, path: Path) -> int:
    """The mask id: the recipe's override, else config.json's ``mask_token_id`` and the
    tokenizer's mask token, which must agree when both exist."""
    if override is not None:
        return int(override)
    from_config = published.get("mask_token_id")
    from_tokenizer = getattr(tokenizer, "mask_token_id", None)
    if from_config is not None and from_tokenizer is not None and int(from_config) != int(from_tokenizer):
        raise ValueError(
            f"{path / CONFIG_FILE} says mask_token_id {from_config} but the tokenizer's mask token is "
            f"{from_tokenizer}; set model.mask_token_id to choose"
        )
    for candidate in (from_config, from_tokenizer):
        if candidate is not None:
            return int(candidate)
    if tokenizer is None:
        raise ValueError(
            f"no mask token id: {path / CONFIG_FILE} has no mask_token_id and the policy is loaded without a "
            "tokenizer (token-only): set model.mask_token_id (from_pretrained(..., mask_token_id=ID))"
        )
    raise ValueError(f"no mask token id in {path / CONFIG_FILE} or the tokenizer: set model.mask_token_id")
