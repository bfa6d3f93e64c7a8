"""Small, exact building blocks for tests of ddrl components (ddrl's own and plugins').

Everything is built through the registry, exactly as a recipe section builds it, and sized so that
a test runs in milliseconds on a CPU.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ddrl.batch import left_pad
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.objectives.base import RolloutBatch
from ddrl.registry import Registry
from ddrl.samplers.base import Sampler

# A character policy small enough for exact tests, with weights far from zero (init_std 0.3) so
# that its conditionals are peaked and depend on the context.
TEXT_ARCHITECTURE = {"d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32, "init_std": 0.3}


def build(registry: Registry, group: str, name: str, **options: Any) -> Any:
    """A component from its registered ``Config``, as a recipe section ``{name, **options}`` builds it."""
    cls = registry.get(group, name)
    return registry.build(group, cls.Config.model_validate({"name": name, **options}))


def text_policy(registry: Registry | None = None, charset: str = "ab", seed: int = 0) -> MaskedDiffusionPolicy:
    """The built-in `tiny` model over ``charset`` in eval mode. With ``charset="ab"``: ids a = 5,
    b = 6, mask 1, EOS 3, BOS 2 (V = 7)."""
    registry = registry or Registry()
    return build(registry, "models", "tiny", charset=charset, architecture=TEXT_ARCHITECTURE, seed=seed).eval()


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def twin(g: torch.Generator) -> torch.Generator:
    """A generator that will draw exactly what ``g`` draws next."""
    copy = torch.Generator()
    copy.set_state(g.get_state())
    return copy


def trainable(policy: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters that receive gradients."""
    return [p for p in policy.parameters() if p.requires_grad]


def sampled_rollout(
    policy: MaskedDiffusionPolicy,
    sampler: Sampler,
    prompts: Sequence[str],
    num_generations: int,
    seed: int = 0,
    scorers: Sequence[MaskedDiffusionPolicy] = (),
) -> RolloutBatch:
    """``num_generations`` completions of each prompt (left-padded to one width), rewarded with
    seeded random values in [0, 1) so that every group's rewards differ; group id = prompt index."""
    encoded = [policy.encode_prompt(p) for p in prompts for _ in range(num_generations)]
    ids, mask = left_pad(encoded, policy.pad_token_id)
    with torch.no_grad():
        out = sampler.sample(policy, ids, mask, generator=generator(seed), scorers=scorers)
    rows = len(encoded)
    rewards = torch.rand(rows, generator=generator(seed + 1))
    group_ids = torch.arange(rows) // num_generations
    return RolloutBatch(out.batch, rewards, group_ids, out)


class CanvasRecorder(torch.nn.Module):
    """A policy wrapper that keeps every canvas it is asked to score (``canvases``), for checking
    what a sampler or an objective feeds the model; everything else is the wrapped policy's."""

    def __init__(self, policy: MaskedDiffusionPolicy) -> None:
        super().__init__()
        self.policy = policy
        self.canvases: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.policy, name)

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.canvases.append(ids.clone())
        return self.policy.logits(ids, attention_mask)

    def target_logprobs(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None, scored: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        self.canvases.append(ids.clone())
        return self.policy.target_logprobs(ids, attention_mask, scored, targets)
