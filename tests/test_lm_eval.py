"""``ddrl lm-eval`` and the ``ddrl`` model of lm-evaluation-harness (docs/lm-eval.md).

Offline: the tasks are the local YAMLs of tests/fixtures/lm_eval over local JSONL files, the model
the shipped tiny Countdown policy.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

pytest.importorskip("lm_eval")

import torch  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from ddrl.batch import SequenceBatch  # noqa: E402
from ddrl.cli.app import app  # noqa: E402
from ddrl.estimators.elbo import ElboConfig  # noqa: E402
from ddrl.evaluation.lm_eval_adapter import DDRLLM  # noqa: E402
from ddrl.generation import generate  # noqa: E402
from ddrl.models.tiny import TinyConfig  # noqa: E402
from ddrl.registry import Registry  # noqa: E402
from ddrl.samplers.block import BlockSamplerConfig  # noqa: E402
from ddrl.samplers.fast import FastSamplerConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "lm_eval"
MODEL = "builtin:countdown"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


@pytest.fixture(scope="module")
def policy(registry: Registry):
    torch.set_num_threads(1)
    return registry.build("models", TinyConfig(path=MODEL)).eval()


def ll_request(context: str, continuation: str, idx: int = 0) -> Instance:
    return Instance("loglikelihood", {}, (context, continuation), idx)


def gen_request(context: str, kwargs: dict, idx: int = 0) -> Instance:
    return Instance("generate_until", {}, (context, kwargs), idx)


def test_cli_runs_local_generate_and_multiple_choice_tasks(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the task YAMLs name their JSONL files relative to the repository root
    out = tmp_path / "results.json"
    result = CliRunner().invoke(app, [
        "lm-eval", "--model", "tiny", "--model-path", MODEL, "--tasks", "ddrl_toy_gen,ddrl_toy_mc",
        "--include-path", str(FIXTURES), "--limit", "2", "--mc-num", "4", "--sampler", "fast", "--output", str(out),
    ], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "ddrl_toy_gen" in result.output and "exact_match" in result.output
    results = json.loads(out.read_text())["results"]
    gen, mc = results["ddrl_toy_gen"], results["ddrl_toy_mc"]
    assert 0.0 <= gen["exact_match,none"] <= 1.0
    for metric in ("acc,none", "acc_norm,none"):
        assert math.isfinite(mc[metric]) and 0.0 <= mc[metric] <= 1.0


def test_cli_reports_an_unknown_task(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["lm-eval", "--model-path", MODEL, "--tasks", "no_such_task_xyz",
                                      "--include-path", str(FIXTURES)])
    assert result.exit_code == 2
    assert "no_such_task_xyz" in result.output


def test_loglikelihood_is_the_seeded_elbo_estimate(policy, registry):
    lm = DDRLLM(policy=policy, mc_num=8, seed=3, batch_size=4)
    pairs = [("3,5,7:15=", "3+5+7"), ("2,4:6=", "2+4"), ("9,1:8=", "9-1"), ("6,2:3=", "6/2"), ("1,1:2=", "1+1")]
    requests = [ll_request(c, o, i) for i, (c, o) in enumerate(pairs)]
    first = lm.loglikelihood(requests)
    assert first == lm.loglikelihood(requests)  # deterministic for a fixed seed
    assert lm.loglikelihood(requests[::-1]) == pytest.approx(first[::-1], abs=1e-4)  # batching/order-free
    estimator = registry.build("estimators", ElboConfig(num_samples=8))
    tok = policy.tokenizer
    for (context, continuation), (value, _) in zip(pairs, first):
        batch = SequenceBatch.from_parts(torch.tensor([policy.encode_prompt(context)]),
                                         torch.tensor([tok.encode(continuation, add_special_tokens=False)]))
        with torch.no_grad():
            expected = estimator.log_likelihood(policy, batch, torch.Generator().manual_seed(3)).item()
        assert value == pytest.approx(expected, abs=1e-4)
        assert value < 0
    other_seed = DDRLLM(policy=policy, mc_num=8, seed=4).loglikelihood(requests)
    assert [v for v, _ in other_seed] != [v for v, _ in first]


def test_is_greedy_matches_greedy_decoding(policy, registry):
    """LLaDA's check (one most-confident position per pass) is the block sampler with one token per step."""
    context = policy.encode_prompt("3,5,7:15=")
    n = 5
    sampler = registry.build("samplers", BlockSamplerConfig(max_completion_length=n, block_length=n, steps=n))
    prompt = torch.tensor([context])
    greedy = sampler.sample(policy, prompt, torch.ones_like(prompt, dtype=torch.bool)).completion_ids[0].tolist()
    wrong = greedy[:-1] + [next(t for t in range(5, policy.vocab_size) if t != greedy[-1])]
    lm = DDRLLM(policy=policy, mc_num=2, greedy_check="iterative")
    assert [g for _, g in lm.score_pairs([(context, greedy), (context, wrong)])] == [True, False]
    one_step = DDRLLM(policy=policy, mc_num=2, greedy_check="one_step")
    with torch.no_grad():
        canvas = torch.tensor([context + [policy.mask_token_id] * n])
        argmax = policy.logits(canvas)[0, len(context):].argmax(-1).tolist()
    assert [g for _, g in one_step.score_pairs([(context, argmax), (context, wrong if wrong != argmax else greedy)])] \
        == [True, False]
    off = DDRLLM(policy=policy, mc_num=2, greedy_check="off")
    assert off.score_pairs([(context, greedy)])[0][1] is False


def test_generate_until_is_the_ddrl_sampler_cut_at_until(policy, registry):
    lm = DDRLLM(policy=policy, sampler="fast", seed=7, overrides=["sampler.temperature=1.0"], batch_size=2)
    contexts = ["3,5,7:15=", "2,4:6=", "9,1:8="]
    kwargs = {"until": ["+"], "max_gen_toks": 16}
    got = lm.generate_until([gen_request(c, kwargs, i) for i, c in enumerate(contexts)])
    sampler = registry.build("samplers", FastSamplerConfig(max_completion_length=16, block_length=16, steps=16,
                                                           temperature=1.0))
    raw = generate(policy, sampler, contexts, batch_size=2, generator=torch.Generator().manual_seed(7)).completions
    assert got == [text.split("+")[0] for text in raw]
    assert any("+" in text for text in raw)  # the cut is exercised
    assert got == lm.generate_until([gen_request(c, kwargs, i) for i, c in enumerate(contexts)])


def test_model_args_string_and_rolling(policy):
    lm = DDRLLM.create_from_arg_string(
        f"model=tiny,model_path={MODEL},sampler=fast,sampler.threshold=0.9,mc_num=6,greedy_check=off",
        {"batch_size": 2, "device": "cpu"},
    )
    assert lm.estimator.config.num_samples == 6
    assert lm.sampler_config.name == "fast" and lm.sampler_config.threshold == 0.9
    assert lm.sampler_for(16).config.max_completion_length == 16
    assert DDRLLM(policy=policy).estimator.config.num_samples == 128  # LLaDA's default
    assert DDRLLM(policy=policy, overrides=["estimator.num_samples=5"]).mc_num == 5
    assert DDRLLM(policy=policy, mc_num=3, overrides=["estimator.num_samples=5"]).mc_num == 3
    with pytest.raises(ValueError, match="unknown model argument"):
        DDRLLM(policy=policy, bogus=1)
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("3,5,7:15=",), 0)])


def test_lm_eval_finds_the_registered_model():
    from lm_eval.api.registry import get_model

    assert get_model("ddrl") is DDRLLM
