"""SPG against exact answers: the sandwich bounds' identities, the bounds and the loss by hand (with
probabilities, not logs), and the ELBO side's mean over every block-wise mask by enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import MaskedViews, score_views
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.testing import build, generator, trainable, twin
from ddrl_spg import SPG, BlockwiseEstimator, SandwichBounds, SPGConfig, sandwich_bounds, spg_loss

A, B, EOS, MASK = 5, 6, 3, 1
PROMPT = [2, A, B]  # BOS a b


def random_logprobs(*shape: int, seed: int = 0) -> torch.Tensor:
    return -torch.rand(shape, generator=generator(seed)) * 3 - 0.05


# ------------------------------------------------------------------------------------------------
# the bounds as pure functions


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.5, 3.0])
def test_one_view_with_every_token_masked_makes_both_bounds_the_mean_log_prob(beta):
    logprobs = random_logprobs(2, 1, 5)
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    scored = valid[:, None, :].clone()  # t = 1
    bounds = sandwich_bounds(logprobs, scored, valid, beta)
    mean = torch.stack([logprobs[0, 0].mean(), logprobs[1, 0, :3].mean()])
    assert torch.allclose(bounds.elbo, mean, atol=1e-6)
    assert torch.allclose(bounds.upper, mean, atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_one_view_with_mask_m_gives_upper_equal_elbo_minus_log_t_over_beta(beta):
    logprobs = random_logprobs(1, 1, 6, seed=1)
    valid = torch.ones(1, 6, dtype=torch.bool)
    scored = torch.tensor([[[True, False, True, False, False, True]]])  # t = 3/6
    bounds = sandwich_bounds(logprobs, scored, valid, beta)
    elbo = logprobs[0, 0, [0, 2, 5]].mean()
    assert bounds.elbo.item() == pytest.approx(elbo.item(), abs=1e-6)
    assert bounds.upper.item() == pytest.approx(elbo.item() - math.log(0.5) / beta, abs=1e-6)


def test_two_views_match_the_upper_bound_written_with_probabilities():
    beta = 1.5
    logprobs = random_logprobs(1, 2, 4, seed=2)
    valid = torch.tensor([[True, True, True, False]])
    scored = torch.tensor([[[True, True, False, False], [False, True, True, False]]])  # t = 2/3, 2/3
    bounds = sandwich_bounds(logprobs, scored, valid, beta)
    p = logprobs.exp()[0]
    q = [p[0, 0] ** beta / (2 / 3) / 2, (p[0, 1] ** beta + p[1, 1] ** beta) / (2 / 3) / 2, p[1, 2] ** beta / (2 / 3) / 2]
    upper = sum(math.log(x) for x in q) / 3 / beta  # the mean over the three tokens with q_k > 0
    elbo = ((logprobs[0, 0, 0] + logprobs[0, 0, 1]) / 2 + (logprobs[0, 1, 1] + logprobs[0, 1, 2]) / 2) / 2
    assert bounds.upper.item() == pytest.approx(upper, abs=1e-5)
    assert bounds.elbo.item() == pytest.approx(elbo.item(), abs=1e-6)
    g = torch.autograd.grad(sandwich_bounds(logprobs.requires_grad_(), scored, valid, beta).upper.sum(), logprobs)[0]
    assert torch.isfinite(g).all() and bool((g[~scored] == 0).all())  # unscored entries get no gradient


def test_loss_uses_the_elbo_above_the_mean_and_the_negative_bound_elsewhere():
    bounds = SandwichBounds(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-0.5, -1.5, -2.5]))
    adv, lengths = torch.tensor([0.5, -0.25, 0.0]), torch.tensor([4, 2, 6])
    total = 12
    assert spg_loss(bounds, adv, lengths, "elbo").item() == pytest.approx(-(0.5 * 4 * -1.0 - 0.25 * 2 * -2.0) / total)
    assert spg_loss(bounds, adv, lengths, "upper").item() == pytest.approx(-(0.5 * 4 * -1.0 - 0.25 * 2 * -1.5) / total)
    mix = 0.3 * -1.5 + 0.7 * -2.0
    assert spg_loss(bounds, adv, lengths, "mix", 0.3).item() == pytest.approx(-(0.5 * 4 * -1.0 - 0.25 * 2 * mix) / total)


# ------------------------------------------------------------------------------------------------
# the objective on a policy, by hand


def bounds_by_hand(policy, prompt, completions, views: MaskedViews, valid, beta):
    """The sandwich bounds with explicit canvases and probabilities, one row and view at a time."""
    elbos, uppers = [], []
    k = views.num_views
    for i, completion in enumerate(completions.tolist()):
        n = int(valid[i].sum())
        q = {}
        per_view = []
        for j in range(k):
            canvas = [MASK if views.prompt_masked[i, j, c] else tok for c, tok in enumerate(prompt)]
            canvas += [MASK if views.completion_masked[i, j, c] else tok for c, tok in enumerate(completion)]
            probs = torch.softmax(policy.logits(torch.tensor([canvas]))[0, len(prompt):].float(), -1)
            chosen = [c for c in range(len(completion)) if views.scored[i, j, c]]
            assert all(valid[i, c] for c in chosen)
            t = len(chosen) / n
            per_view.append(sum(torch.log(probs[c, completion[c]]) for c in chosen) / len(chosen))
            for c in chosen:
                q[c] = q.get(c, 0.0) + probs[c, completion[c]] ** beta / t / k
        elbos.append(sum(per_view) / k)
        uppers.append(sum(torch.log(v) for v in q.values()) / len(q) / beta)
    return torch.stack(elbos), torch.stack(uppers)


def test_objective_loss_and_gradient_equal_the_bounds_by_hand(registry, ab_policy):
    completions = torch.tensor([[A, B, B, EOS, A, A], [B, A, A, B, B, A], [A, A, EOS, B, B, B], [B, B, A, EOS, EOS, A]])
    batch = SequenceBatch.from_parts(torch.tensor(PROMPT).expand(4, -1).clone(), completions)
    roll = RolloutBatch(batch, torch.tensor([1.0, 0.0, 0.2, 0.6]), torch.tensor([0, 0, 1, 1]))
    estimator = build(registry, "estimators", "blockwise", num_samples=2, block_length=2, p_mask_prompt=0.3)
    objective = SPG(SPGConfig(eubo_beta=1.5))
    g = generator(5)
    replay = twin(g)
    ctx = ObjectiveContext(policy=ab_policy, estimator=estimator, generator=g)
    with torch.no_grad():
        prepared = objective.weigh(roll, objective.prepare(roll, ctx), ctx).state
    assert torch.allclose(prepared.advantages, torch.tensor([0.5, -0.5, -0.2, 0.2]))
    out = objective.loss(roll, prepared, ctx, 0)

    valid = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]).bool()
    views = estimator.draw(batch.with_completion_mask(valid), replay)  # the views the loss drew
    elbo, upper = bounds_by_hand(ab_policy, PROMPT, completions, views, valid, 1.5)
    mixed = 0.5 * upper + 0.5 * elbo
    p = torch.stack([elbo[0], mixed[1], mixed[2], elbo[3]])
    lengths = torch.tensor([4.0, 6.0, 3.0, 4.0])
    by_hand = -(torch.tensor([0.5, -0.5, -0.2, 0.2]) * lengths * p).sum() / lengths.sum()
    assert out.loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
    for x, y in zip(torch.autograd.grad(out.loss, trainable(ab_policy)), torch.autograd.grad(by_hand, trainable(ab_policy))):
        assert torch.allclose(x, y, atol=1e-5)
    assert out.metrics["elbo"] == pytest.approx(elbo.mean().item(), abs=1e-5)


# ------------------------------------------------------------------------------------------------
# brute force: the ELBO side averaged over every block-wise mask


def every_blockwise_view(prompt_len: int, length: int, block: int, p: float) -> tuple[MaskedViews, torch.Tensor]:
    """All (prompt mask, completion mask) pairs of the block-wise scheme for one fully valid row,
    as one row of R views, with their probabilities ``[R]``."""
    blocks = [list(range(lo, min(lo + block, length))) for lo in range(0, length, block)]
    patterns: dict[tuple[int, ...], float] = {}
    for b, positions in enumerate(blocks):
        earlier = [j for blk in blocks[:b] for j in blk]
        later = [j for blk in blocks[b + 1 :] for j in blk]
        for m in range(1, len(positions) + 1):
            for chosen in itertools.combinations(positions, m):
                for bits in itertools.product([0, 1], repeat=len(earlier)):
                    e = [j for j, bit in zip(earlier, bits) if bit]
                    prob = p ** len(e) * (1 - p) ** (len(earlier) - len(e))
                    prob /= len(blocks) * len(positions) * math.comb(len(positions), m)
                    key = tuple(sorted(e + list(chosen) + later))
                    patterns[key] = patterns.get(key, 0.0) + prob
    rows, probs = [], []
    for key, prob in patterns.items():
        for bits in itertools.product([0, 1], repeat=prompt_len):
            rows.append(([bool(x) for x in bits], [j in key for j in range(length)]))
            probs.append(prob * math.prod(p if x else 1 - p for x in bits))
    prompt_masked = torch.tensor([r[0] for r in rows])[None]  # (1, R, P)
    masked = torch.tensor([r[1] for r in rows])[None]  # (1, R, L)
    return MaskedViews(masked, masked, masked.float(), prompt_masked), torch.tensor(probs, dtype=torch.float64)


def test_elbo_side_averaged_over_every_blockwise_mask_matches_its_monte_carlo_mean(registry, ab_policy):
    completion = [A, B, B, A]
    batch = SequenceBatch.from_parts(torch.tensor([PROMPT]), torch.tensor([completion]))
    views, probs = every_blockwise_view(3, 4, 2, 0.15)
    assert probs.sum().item() == pytest.approx(1.0)
    assert views.num_views == 12 * 8  # distinct completion patterns x prompt patterns

    # exact expectation: the ELBO side of each view, as the objective computes it ...
    with torch.no_grad():
        lp = score_views(ab_policy, batch, views)  # (1, R, L)
        one_row = torch.ones(1, 4, dtype=torch.bool)  # each view as a row of its own: [R, 1, L]
        per_view = sandwich_bounds(lp.transpose(0, 1), views.scored.transpose(0, 1), one_row, 1.5).elbo
        exact = (probs * per_view.double()).sum().item()
        # ... and by hand, one canvas at a time
        by_hand = 0.0
        for r in range(views.num_views):
            canvas = [MASK if views.prompt_masked[0, r, c] else t for c, t in enumerate(PROMPT)]
            canvas += [MASK if views.completion_masked[0, r, c] else t for c, t in enumerate(completion)]
            logp = torch.log_softmax(ab_policy.logits(torch.tensor([canvas]))[0, 3:].float(), -1)
            masked = [c for c in range(4) if views.completion_masked[0, r, c]]
            by_hand += probs[r].item() * sum(logp[c, completion[c]].item() for c in masked) / len(masked)
    assert exact == pytest.approx(by_hand, abs=1e-5)

    # Monte Carlo through the registered estimator: its inverse_masked estimate is the ELBO side
    n = 3000
    estimator = build(registry, "estimators", "blockwise", num_samples=1, block_length=2, weighting="inverse_masked")
    assert isinstance(estimator, BlockwiseEstimator)
    many = SequenceBatch.from_parts(torch.tensor([PROMPT] * n), torch.tensor([completion] * n))
    with torch.no_grad():
        drawn = estimator.draw(many, generator(6))
        scored = estimator.score(ab_policy, many, drawn)
        samples = scored.sequence()
        elbo_side = sandwich_bounds(scored.logprobs, drawn.scored, many.completion_mask, 1.5).elbo
        assert torch.allclose(samples, elbo_side, atol=1e-6)
    se = samples.std().item() / math.sqrt(n)
    assert abs(samples.mean().item() - exact) < 4 * se, (samples.mean().item(), exact, se)
    assert se < 0.02  # the check has teeth: a wrong mask law shifts the mean by more than this


def test_spg_and_blockwise_are_registered_by_their_distribution(registry):
    assert registry.get("objectives", "spg") is SPG
    assert registry.get("estimators", "blockwise") is BlockwiseEstimator
    assert registry.origin("objectives", "spg").startswith("ddrl-spg")
    assert registry.origin("estimators", "blockwise").startswith("ddrl-spg")
