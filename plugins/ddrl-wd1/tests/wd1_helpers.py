"""Helpers for ddrl-wd1's tests (a uniquely named module: the three plugins' tests run together)."""

from __future__ import annotations

import torch

from ddrl.registry import Registry


def build(registry: Registry, group: str, name: str, **options):
    """A component from its registered Config, as a recipe section would build it."""
    cls = registry.get(group, name)
    return registry.build(group, cls.Config.model_validate({"name": name, **options}))


def ab_policy(registry: Registry):
    """A tiny character policy over {a, b}: ids a = 5, b = 6; mask 1; EOS 3; BOS 2 (V = 7).

    Weights far from zero (init_std 0.3) so that its conditionals are peaked and context-dependent.
    """
    arch = {"d_model": 16, "n_layers": 1, "n_heads": 2, "ffn_hidden": 32, "init_std": 0.3}
    policy = build(registry, "models", "tiny", charset="ab", architecture=arch, seed=0)
    assert (policy.mask_token_id, policy.eos_token_id) == (1, 3)
    return policy.eval()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same_state(g: torch.Generator) -> torch.Generator:
    """A generator that will draw exactly what ``g`` draws next."""
    twin = torch.Generator()
    twin.set_state(g.get_state())
    return twin


def params(policy: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in policy.parameters() if p.requires_grad]
