"""Memory-lean scoring (``ddrl.models.head``): the same log-probabilities and gradients as applying the
head everywhere and taking the full log-softmax, in float64 on tiny shapes, for every policy."""

from __future__ import annotations

import copy

import pytest
import torch

from ddrl.estimators.base import MaskedViews, gather_logprobs, score_views
from ddrl.estimators.masks import antithetic_masks
from ddrl.models.head import target_logprobs
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.registry import Registry
from tests.conftest import batch_for
from tests.hf_fixtures import write_dream, write_llada


def naive(policy, ids, attn, scored, targets):
    """The head at every position, the full log-softmax, then the scored rows."""
    logits = policy.logits(ids, attn)
    return gather_logprobs(logits[scored], targets[scored])


def grads(value, module):
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.autograd.grad(value, params)


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_chunked_target_logprobs_equal_the_full_log_softmax_values_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(11, 5, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.tensor([0, 3, 10, 2, 2, 7, 1])
    mask_id = 4
    got = target_logprobs(hidden, weight, targets, mask_id, chunk)
    logits = hidden @ weight.T
    logits = logits.index_fill(-1, torch.tensor([mask_id]), torch.finfo(torch.float64).min)
    want = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-6)
    # gradients in float64 against autograd through the full log-softmax (same float32 cast)
    g_out = torch.randn(7, generator=g)
    mine = torch.autograd.grad((got * g_out).sum(), (hidden, weight))
    theirs = torch.autograd.grad((want * g_out).sum(), (hidden, weight))
    for a, b in zip(mine, theirs):
        assert torch.allclose(a, b, atol=1e-6)
    assert theirs[1][mask_id].abs().max() == 0  # the mask token's row gets no gradient
    assert mine[1][mask_id].abs().max() == 0


def tiny64() -> TinyPolicy:
    arch = TinyArchitecture(vocab_size=6, d_model=16, n_layers=2, n_heads=2, ffn_hidden=32, init_std=0.3)
    return TinyPolicy.fresh(arch, None, seed=4).double()


def views_for(batch, seed: int = 0) -> MaskedViews:
    return antithetic_masks(batch.completion_mask, 4, torch.Generator().manual_seed(seed), (0.1, 1.0), "inverse_masked")


def test_score_views_is_lean_and_equals_the_naive_path_for_the_tiny_policy():
    policy = tiny64()
    batch = batch_for([1, 2], torch.tensor([[0, 1, 2, 3], [3, 3, 0, 1], [2, 0, 4, 1]]))
    views = views_for(batch)
    lean = score_views(policy, batch, views)
    eager = copy.deepcopy(policy)
    type(eager).supports_lean_scoring = False
    try:
        slow = score_views(eager, batch, views)
    finally:
        type(eager).supports_lean_scoring = True
    assert torch.allclose(lean, slow, atol=1e-6) and lean.abs().sum() > 0
    w = torch.rand(lean.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for a, b in zip(grads((lean * w).sum(), policy), grads((slow * w).sum(), eager)):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_head_sees_only_the_scored_rows():
    policy = tiny64()
    seen = []
    policy.net.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    ids = torch.tensor([[1, 2, 5, 5, 0]])
    scored = torch.tensor([[False, False, True, True, False]])
    policy(ids, None, scored=scored, targets=torch.zeros_like(ids))
    assert seen == []  # the head's weight is used in chunks, the module itself never runs on [T, D]
    lp = policy.target_logprobs(ids, None, scored, torch.tensor([[0, 0, 3, 1, 0]]))
    assert lp.shape == (2,)
    assert torch.allclose(lp, naive(policy, ids, None, scored, torch.tensor([[0, 0, 3, 1, 0]])), atol=1e-6)


@pytest.fixture(scope="module")
def hf_policies(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_lean")
    write_llada(root / "llada", seed=1)
    write_dream(root / "dream", seed=2)
    out = {}
    for name in ("llada", "dream"):
        cls = Registry().get("models", name)
        out[name] = cls.from_config(cls.Config(path=str(root / name), dtype="float32")).double().eval()
    return out


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_hf_policies_score_lean_with_left_padding_like_the_naive_path(hf_policies, name):
    policy = hf_policies[name]
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    attn = torch.tensor([[False, False] + [True] * 7, [True] * 9])  # row 0 left-padded
    scored = torch.zeros(2, 9, dtype=torch.bool)
    scored[:, 4:] = torch.rand(2, 5, generator=g) > 0.3
    scored[0, 5] = True
    ids = ids.masked_fill(scored, policy.mask_token_id)
    targets = torch.randint(0, 50, (2, 9), generator=g)
    lean = policy.target_logprobs(ids, attn, scored, targets)
    slow = naive(policy, ids, attn, scored, targets)
    assert torch.allclose(lean, slow, atol=1e-6)
    for a, b in zip(grads(lean.sum(), policy), grads(slow.sum(), policy)):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("micro", [1, 3, 5])
def test_backward_by_micro_batches_of_views_gives_the_one_graph_gradients(micro):
    from ddrl.objectives.denoising import wdce, wdce_by_parts

    policy = tiny64()
    batch = batch_for([1, 2], torch.tensor([[0, 1, 2, 3], [3, 3, 0, 1], [2, 0, 4, 1]]))
    views = views_for(batch, seed=2)
    rows = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
    one = wdce(score_views(policy, batch, views), views.weights, rows)
    want = grads(one, policy)
    parts = []
    total = wdce_by_parts(policy, batch, views, rows, micro, lambda loss: parts.append(loss.backward()))
    scored = views.scored.reshape(-1, 4).any(-1)  # views with something to score, in (b, r) order
    expected = sum(bool(scored[lo : lo + micro].any()) for lo in range(0, len(scored), micro))
    assert len(parts) == expected > 1  # every micro-batch with a scored view ran its own backward
    assert torch.allclose(total, one.detach(), atol=1e-6) and not total.requires_grad
    got = [p.grad for p in policy.parameters() if p.requires_grad]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_a_run_with_loss_micro_batches_follows_the_one_graph_run(tmp_path):
    from ddrl.config import build_config
    from ddrl.training.trainer import Trainer
    from tests.test_trainer import PATTERN, recipe

    def losses(**train):
        raw = recipe(tmp_path / str(len(train)), PATTERN, train={"max_steps": 3, **train})
        return [m["loss"] for m in Trainer(build_config(raw)).train().metrics if "loss" in m]

    whole, parts = losses(), losses(loss_micro_batch_size=3)
    assert parts == pytest.approx(whole, rel=1e-5)
