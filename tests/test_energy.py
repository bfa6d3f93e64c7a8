"""Energy-based targets against exact answers: lattice energies and log Z by hand and by brute
force, the MDNS metrics, the Swendsen–Wang reference sampler against enumeration, the ancestral
sampler's log-weights on an enumerated lattice, the lattice tasks and the `ddrl train` command."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from typer.testing import CliRunner

from ddrl.cli.app import app
from ddrl.config import ConfigError
from ddrl.energy.measure import LatticeSample, order_averaged_divergences, sample_metrics, sample_policy
from ddrl.energy.spin_lattice import LatticeTooLarge, SpinLattice, periodic_bonds
from ddrl.energy.metrics import (
    histogram_divergences,
    log_partition_estimate,
    mode_balance,
    normalized_ess,
    uniform_log_weights,
)
from ddrl.energy.swendsen_wang import swendsen_wang_samples
from ddrl.enumeration import sequence_log_probs
from ddrl.models.tiny import TinyArchitecture, TinyPolicy
from ddrl.objectives.base import ObjectiveContext, RolloutBatch
from ddrl.objectives.dmpo import DMPO, DMPOConfig
from ddrl.registry import Registry
from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig
from ddrl.tasks.ising_potts import IsingConfig, IsingTask, PottsConfig, PottsTask
from ddrl.training.logger import read_metrics
from tests.conftest import PEAKED


def neighbours(L: int) -> set[frozenset[tuple[int, int]]]:
    """Unordered neighbour pairs of the L x L torus, from coordinates (independent of the code)."""
    pairs = set()
    for i, j in itertools.product(range(L), repeat=2):
        for di, dj in ((0, 1), (1, 0)):
            other = ((i + di) % L, (j + dj) % L)
            if other != (i, j):
                pairs.add(frozenset({(i, j), other}))
    return pairs


def brute_energy(config: tuple[int, ...], L: int, J: float, h: float, potts: bool = False) -> float:
    """H by loops over the coordinate neighbour pairs."""
    def value(site: tuple[int, int]) -> int:
        return config[site[0] * L + site[1]]

    energy = 0.0
    for pair in neighbours(L):
        a, b = tuple(pair)
        if potts:
            energy -= J * (value(a) == value(b))
        else:
            energy -= J * (2 * value(a) - 1) * (2 * value(b) - 1)
    if not potts:
        energy -= h * sum(2 * v - 1 for v in config)
    return energy


def brute_log_z(L: int, J: float, h: float, beta: float, q: int = 2) -> float:
    terms = [-beta * brute_energy(c, L, J, h, potts=q > 2) for c in itertools.product(range(q), repeat=L * L)]
    return math.log(sum(math.exp(t) for t in terms))


# ------------------------------------------------------------------------------------------------
# lattices


def test_each_neighbour_pair_is_one_bond_also_at_L2():
    assert periodic_bonds(2).tolist() == [[0, 1], [0, 2], [1, 3], [2, 3]]  # a 4-cycle, not 8 bonds
    for L in (3, 4, 5):
        bonds = periodic_bonds(L)
        assert bonds.shape == (2 * L * L, 2)
        assert {frozenset(map(int, b)) for b in bonds} == {frozenset(a * L + b for a, b in p) for p in neighbours(L)}
        assert torch.bincount(bonds.flatten(), minlength=L * L).tolist() == [4] * (L * L)
    with pytest.raises(ValueError, match="L >= 2"):
        periodic_bonds(1)


def test_ising_2x2_energies_and_log_z_by_hand():
    lat = SpinLattice("ising", 2, J=1.5, beta=0.3, h=0.25)
    x = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
    # all up: 4 satisfied bonds and 4 up spins; checkerboard: 4 broken bonds; one up: 2 broken
    expected = [-4 * 1.5 - 4 * 0.25, -4 * 1.5 + 4 * 0.25, 4 * 1.5, 0.0 + 2 * 0.25, 0.0]
    assert lat.energy(x).tolist() == pytest.approx(expected)
    # at h = 0: 2 aligned states (-4J), 2 checkerboards (+4J), 12 states with energy 0
    zero_field = SpinLattice("ising", 2, J=1.5, beta=0.3)
    assert zero_field.log_partition() == pytest.approx(math.log(4 * math.cosh(4 * 0.3 * 1.5) + 12), abs=1e-12)
    assert lat.log_partition() == pytest.approx(brute_log_z(2, 1.5, 0.25, 0.3), abs=1e-12)


def test_roll_convention_agrees_from_L3_and_counts_L2_pairs_twice():
    def roll_energy(x: torch.Tensor, L: int) -> torch.Tensor:
        s = (2 * x - 1).double().view(-1, L, L)
        return -(s * s.roll(1, 1)).sum((1, 2)) - (s * s.roll(1, 2)).sum((1, 2))

    g = torch.Generator().manual_seed(0)
    for L in (3, 4):
        x = torch.randint(2, (20, L * L), generator=g)
        assert torch.allclose(SpinLattice("ising", L).energy(x), roll_energy(x, L))
    x = torch.randint(2, (20, 4), generator=g)
    assert torch.allclose(2 * SpinLattice("ising", 2).energy(x), roll_energy(x, 2))


def test_3x3_log_z_matches_brute_force_for_ising_and_potts():
    cases = ((SpinLattice("ising", 3, J=1.0, beta=0.4, h=0.2), 2), (SpinLattice("potts", 3, J=0.8, beta=1.1, q=3), 3))
    for lat, q in cases:
        assert lat.log_partition() == pytest.approx(brute_log_z(3, lat.J, lat.h, lat.beta, q), abs=1e-9)
        x = lat.states(100, 140)
        expected = [brute_energy(tuple(map(int, c)), 3, lat.J, lat.h, potts=q > 2) for c in x]
        assert lat.energy(x).tolist() == pytest.approx(expected)


def test_states_and_index_are_inverse_and_log_target_normalised():
    lat = SpinLattice("potts", 2, q=3, beta=0.7)
    states = lat.states()
    assert states.shape == (81, 4)
    assert torch.equal(lat.index(states), torch.arange(81))
    assert float(lat.log_target().exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_exact_metrics_refuse_a_lattice_too_big_and_say_what_to_do():
    lat = SpinLattice("ising", 5, beta=0.3)
    with pytest.raises(LatticeTooLarge, match="Swendsen-Wang") as err:
        lat.log_partition()
    assert "2^25" in str(err.value) or "2^22" in str(err.value)
    sample = LatticeSample(torch.zeros((4, 25), dtype=torch.long), torch.zeros(4))
    with pytest.raises(LatticeTooLarge):
        sample_metrics(lat, sample, exact=True)
    metrics = sample_metrics(lat, sample)  # default: only what needs no enumeration
    assert "ess" in metrics and "kl_hist" not in metrics


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="q = 2"):
        SpinLattice("ising", 3, q=3)
    lat = SpinLattice("ising", 2)
    with pytest.raises(ValueError, match="max_completion_length = 4"):
        lat.energy(torch.zeros((1, 9), dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size = q \\+ 1 = 3"):
        lat.energy(torch.full((1, 4), 2))


# ------------------------------------------------------------------------------------------------
# metrics


def test_ess_is_one_for_equal_weights_and_one_over_b_for_a_single_weight():
    assert normalized_ess(torch.full((7,), -3.2)) == pytest.approx(1.0)
    assert normalized_ess(torch.tensor([0.0, -1e4, -1e4, -1e4])) == pytest.approx(0.25)
    # two weights 1 and 3: wbar = (1/4, 3/4); 1 / (2 * (1/16 + 9/16)) = 0.8
    assert normalized_ess(torch.tensor([0.0, math.log(3.0)])) == pytest.approx(0.8)


def test_a_perfect_sampler_gives_the_exact_log_z_and_ess_one():
    lat = SpinLattice("ising", 3, beta=0.35, h=0.1)
    x = lat.exact_samples(50, torch.Generator().manual_seed(0))
    log_z = lat.log_partition()
    path = lat.log_boltzmann(x) - log_z  # the sampler's probability is p* itself
    log_w = uniform_log_weights(lat.log_boltzmann(x), path, lat.log_num_states)
    assert log_partition_estimate(log_w, lat.log_num_states) == pytest.approx(log_z, abs=1e-10)
    assert normalized_ess(log_w) == pytest.approx(1.0)
    metrics = sample_metrics(lat, LatticeSample(x, path))
    assert metrics["ess"] == pytest.approx(1.0) and metrics["log_z_error"] < 1e-10
    assert abs(metrics["kl_path"]) < 1e-10


def test_log_z_estimate_is_the_importance_sampling_mean():
    log_w = torch.tensor([0.5, -1.0, 2.0])
    expected = math.log((math.exp(0.5) + math.exp(-1.0) + math.exp(2.0)) / 3) + 4 * math.log(2)
    assert log_partition_estimate(log_w, 4 * math.log(2)) == pytest.approx(expected)


def test_histogram_divergences_against_the_definitions():
    p_star = torch.tensor([0.1, 0.2, 0.3, 0.4])
    index = torch.tensor([2, 0, 2, 2, 1, 2, 0, 2])  # p̂ = (2/8, 1/8, 5/8, 0)
    kl, tv = histogram_divergences(index, p_star.log()[index])
    p_hat = torch.tensor([0.25, 0.125, 0.625, 0.0])
    seen = p_hat > 0
    assert kl == pytest.approx(float((p_hat[seen] * (p_hat[seen] / p_star[seen]).log()).sum()))
    assert tv == pytest.approx(0.5 * float((p_hat - p_star).abs().sum()))


def test_mode_balance_is_one_half_for_a_symmetric_sample():
    assert mode_balance(torch.tensor([0.5, -0.5, 0.0, 0.25, -0.25, 0.0])) == 0.5
    assert mode_balance(torch.tensor([0.5, 0.5, 0.0, -1.0])) == pytest.approx(0.625)
    # the exact target at h = 0 is symmetric
    lat = SpinLattice("ising", 3, beta=0.5)
    p = lat.log_target().exp()
    m = lat.magnetisation(lat.states())
    assert float((p * (m > 0)).sum() + 0.5 * (p * (m == 0)).sum()) == pytest.approx(0.5, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Swendsen–Wang


@pytest.mark.parametrize(
    "lattice",
    [SpinLattice("ising", 3, J=1.0, beta=0.4, h=0.15), SpinLattice("ising", 3, J=1.0, beta=0.6),
     SpinLattice("potts", 3, J=1.0, beta=1.0, q=3)],
    ids=["ising-field", "ising-ordered", "potts"],
)
def test_swendsen_wang_moments_match_enumeration_on_3x3(lattice):
    p = lattice.log_target().exp()
    states = lattice.states()
    e_exact, m_exact = lattice.energy(states) / 9, lattice.magnetisation(states)
    x = swendsen_wang_samples(lattice, 24_000, num_chains=400, burn_in=30, generator=torch.Generator().manual_seed(1))
    e, m = lattice.energy(x) / 9, lattice.magnetisation(x)
    # samples of one sweep are independent across chains: 60 sweeps x 400 chains; the standard
    # error uses the 400 chain means (robust to correlation along a chain)
    for sample, exact in ((e, e_exact), (m, m_exact), (m**2, m_exact**2), (e * m, e_exact * m_exact)):
        chain_means = sample.view(-1, 400).mean(0)
        se = float(chain_means.std() / math.sqrt(400))
        assert abs(float(sample.mean()) - float((p * exact).sum())) < 4 * se + 1e-3


def test_swendsen_wang_refuses_antiferromagnets():
    with pytest.raises(ValueError, match="J >= 0"):
        swendsen_wang_samples(SpinLattice("ising", 3, J=-1.0, beta=0.3), 10)


# ------------------------------------------------------------------------------------------------
# the ancestral sampler's weights on an enumerated lattice


def spin_policy(seed: int = 5) -> TinyPolicy:
    """A token-only policy over {0, 1} plus the mask (id 2), peaked so the test has teeth."""
    return TinyPolicy.fresh(TinyArchitecture(vocab_size=3, **PEAKED), None, seed=seed).eval()


def path_log_prob(policy: TinyPolicy, x: list[int], order: list[int]) -> float:
    """log p_theta(x; sigma) by revealing one site at a time (independent of samplers/estimators)."""
    canvas = [policy.mask_token_id] * len(x)
    total = 0.0
    with torch.no_grad():
        for pos in order:
            logits = policy.logits(torch.tensor([canvas]))[0, pos]
            total += float(torch.log_softmax(logits.double(), -1)[x[pos]])
            canvas[pos] = x[pos]
    return total


def test_ancestral_log_weights_are_log_target_minus_path_log_prob_up_to_log_z():
    lat = SpinLattice("ising", 2, J=1.0, beta=0.6, h=0.3)
    policy = spin_policy()
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=4, temperature=1.0))
    out = sampler.sample(policy, torch.zeros((32, 0), dtype=torch.long), generator=torch.Generator().manual_seed(3))
    rewards = lat.log_boltzmann(out.completion_ids).float()
    objective = DMPO(DMPOConfig(alpha=1.0, log_ratio="path", reference="uniform"))
    assert not objective.needs_reference and objective.rollout_scorers(ObjectiveContext(policy, None)) == []  # type: ignore[arg-type]
    rollout = RolloutBatch(out.batch, rewards, torch.zeros(32, dtype=torch.long), out)
    log_w = objective.prepare(rollout, ObjectiveContext(policy, None)).log_rnd.double() + rewards.double()  # type: ignore[arg-type]
    log_target = lat.log_boltzmann(out.completion_ids) - lat.log_partition()
    brute = torch.tensor([
        path_log_prob(policy, x.tolist(), o.tolist()) for x, o in zip(out.completion_ids, out.order)
    ], dtype=torch.float64)
    constant = log_w - (log_target - brute)
    assert torch.allclose(constant, torch.full_like(constant, lat.log_partition()), atol=1e-4)
    # and the metrics module turns them into the same log Z estimate
    sample = LatticeSample(out.completion_ids, out.path_logprob.double())
    metrics = sample_metrics(lat, sample)
    assert metrics["log_z_estimate"] == pytest.approx(float(torch.logsumexp(log_w, 0) - math.log(32)), abs=1e-4)
    assert metrics["kl_path"] == pytest.approx(float((brute - log_target).mean()), abs=1e-4)


def test_order_averaged_divergences_on_the_2x2_lattice():
    lat = SpinLattice("ising", 2, beta=0.5)
    policy = spin_policy()
    log_q = sequence_log_probs(policy, [], lat.states())
    assert float(log_q.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    result = order_averaged_divergences(policy, lat)
    p = lat.log_target()
    assert result["kl_target_policy"] == pytest.approx(float((p.exp() * (p - log_q)).sum()), abs=1e-6)
    assert result["kl_policy_target"] == pytest.approx(float((log_q.exp() * (log_q - p)).sum()), abs=1e-6)
    with pytest.raises(LatticeTooLarge, match="histogram"):
        order_averaged_divergences(policy, SpinLattice("ising", 4))


def test_sample_policy_keeps_path_log_probs_only_from_exact_path_samplers():
    policy = spin_policy()
    sampler = AncestralSampler(AncestralSamplerConfig(max_completion_length=4, temperature=1.0))
    sample = sample_policy(policy, sampler, 10, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert sample.states.shape == (10, 4) and sample.path_log_probs is not None
    assert sample.path_log_probs.shape == (10,) and bool((sample.path_log_probs < 0).all())


# ------------------------------------------------------------------------------------------------
# tasks, reward, CLI


def test_reward_is_minus_beta_energy_through_the_registry():
    task = IsingTask(IsingConfig(L=3, beta=0.4, h=0.2))
    reward = Registry().get("rewards", "lattice_boltzmann")
    (ex,) = task.split("train")
    x = task.lattice.states(200, 205)
    columns = {k: [v] * 5 for k, v in task.reward_columns(ex).items()}
    values = reward([""] * 5, [""] * 5, completion_ids=x.tolist(), **columns)
    expected = [-0.4 * brute_energy(tuple(map(int, c)), 3, 1.0, 0.2) for c in x]
    assert values == pytest.approx(expected)


def test_lattice_tasks_need_a_token_only_policy_of_q_plus_one_tokens(char_policy):
    task = PottsTask(PottsConfig(L=2, q=4))
    (ex,) = task.split("test")
    with pytest.raises(ConfigError, match="vocab_size: 5"):
        task.encode(ex, char_policy)
    policy = TinyPolicy.fresh(TinyArchitecture(vocab_size=5, d_model=16, n_layers=1, n_heads=2, ffn_hidden=16), None)
    assert task.encode(ex, policy) == []
    text = task.decode([0, 3, 2, 2], policy)
    assert text == "03/22"
    scores = task.score(ex, text)
    assert math.isnan(scores["accuracy"])
    assert scores["energy_per_site"] == pytest.approx(-1.0 * 1 / 4)  # one equal pair: (2, 3) at the bottom row


def test_lattice_tasks_suggest_the_components_they_need():
    sections = IsingTask.suggested_sections(IsingConfig(L=3))
    assert sections["model"]["charset"] is None and sections["model"]["architecture"]["vocab_size"] == 3
    assert sections["model"]["architecture"]["absolute_positions"] is True
    assert sections["sampler"] == {"name": "ancestral", "max_completion_length": 9, "block_length": None,
                                   "temperature": 1.0}
    assert sections["objective"]["reference"] == "uniform" and sections["objective"]["alpha"] == 1.0
    assert PottsTask.suggested_sections(PottsConfig(q=5))["model"]["architecture"]["vocab_size"] == 6


@pytest.mark.slow
def test_cli_trains_ising_from_plain_flags(tmp_path):
    args = ["train", "--objective", "dmpo", "--model", "tiny", "--task", "ising", "--set", "train.max_steps=2",
            "--output-dir", str(tmp_path / "run"), "--set", "task.eval_samples=128"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "result: ess_before=" in result.output
    metrics = read_metrics(tmp_path / "run")
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and all(math.isfinite(m["loss"]) for m in steps)
    held = [m for m in metrics if "eval_ess" in m]
    assert len(held) == 2 and all(0 < m["eval_ess"] <= 1 and "eval_kl_hist" in m for m in held)
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "vocab_size: 3" in config and "name: ancestral" in config and "reference: uniform" in config


def test_cli_flag_naming_another_component_wins_over_the_task_suggestion(tmp_path):
    from ddrl.cli.common import assemble_config
    from ddrl.cli.train import DEFAULT_RECIPE, builtin_recipe

    registry = Registry()
    names = {"objective": "log_variance", "model": None, "task": "ising", "sampler": None, "estimator": None}
    cfg = assemble_config(registry, builtin_recipe(DEFAULT_RECIPE), names, ["task.L=3"], sections=None)
    assert cfg.objective.name == "log_variance" and cfg.estimator.name == "exact"
    assert cfg.sampler.max_completion_length == 9 and cfg.model.architecture.vocab_size == 3
