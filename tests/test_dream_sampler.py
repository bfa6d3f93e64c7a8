"""The `dream` sampler: token-for-token against outputs of Dream's published ``diffusion_generate``.

tests/fixtures/dream_reference/diffusion_generate.json holds only token ids (and the settings that
produced them): the published generation_utils.py + modeling_dream.py were run outside the
repository (transformers 4.46.2, torch 2.13 CPU) on the tiny checkpoint ``write_dream(dir, seed=2)``
in float32, with ``torch.manual_seed(seed)`` right before each call. ddrl's sampler, given a
generator seeded alike, must reproduce every completion, greedy and stochastic alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
import torch
from pydantic import ValidationError

from ddrl.models.dream import DreamPolicy
from ddrl.registry import Registry
from ddrl.samplers.dream import DreamSampler, DreamSamplerConfig, filter_logits
from ddrl.testing import check_sampler
from ddrl.testing import generator as gen
from tests.hf_fixtures import write_dream

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests/fixtures/dream_reference/diffusion_generate.json").read_text())
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")


@pytest.fixture(scope="module")
def dream(tmp_path_factory) -> DreamPolicy:
    path = tmp_path_factory.mktemp("dream")
    write_dream(path, seed=2)
    return DreamPolicy.from_config(DreamPolicy.Config(path=str(path), dtype="float32")).eval()


def sampler_for(case: dict, length: int | None = None) -> DreamSampler:
    options = {k: case[k] for k in ("alg", "alg_temp", "temperature", "top_p", "top_k")}
    return DreamSampler(DreamSamplerConfig(max_completion_length=length or REFERENCE["max_new_tokens"],
                                           steps=REFERENCE["steps"], eps=REFERENCE["eps"], **options))


def case_id(case: dict) -> str:
    return "{alg}-T{temperature}-a{alg_temp}-p{top_p}-k{top_k}".format(**case)


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=case_id)
def test_matches_the_published_diffusion_generate_token_for_token(dream, case):
    prompts = torch.tensor(REFERENCE["prompt_ids_left_padded"])
    mask = torch.tensor(REFERENCE["attention_mask"]).bool()
    out = sampler_for(case).sample(dream, prompts, mask, generator=gen(case["seed"]))
    assert out.completion_ids.tolist() == case["completion_ids"]


def test_matches_the_published_code_on_an_unpadded_prompt(dream):
    case = REFERENCE["single_unpadded"]
    out = sampler_for(case).sample(dream, torch.tensor([REFERENCE["prompts"][0]]), generator=gen(case["seed"]))
    assert out.completion_ids.tolist() == case["completion_ids"]


def test_the_reference_covers_every_algorithm_greedy_and_stochastic():
    cases = REFERENCE["cases"]
    for alg in ALGS:
        mine = [c for c in cases if c["alg"] == alg]
        assert any(c["temperature"] == 0 and c["alg_temp"] == 0 for c in mine)
        assert any(c["temperature"] > 0 for c in mine)
        if alg != "origin":
            assert any(c["alg_temp"] > 0 for c in mine)
    # what Dream's code uses when no generation config is passed (transformers 4.x model-config defaults)
    assert REFERENCE["published_defaults_without_generation_config"]["top_k"] == 50


def test_reveal_counts_follow_the_time_grid_with_float32_truncation():
    smp = DreamSampler(DreamSamplerConfig(max_completion_length=13, steps=5))
    left, counts = torch.tensor([13]), []
    for i in range(5):
        k = smp.reveal_counts(left, i)
        counts.append(int(k))
        left = left - k
    # int(m * (1 - s/t)) on linspace(1, 1e-3, 6): the tail is left to the last step
    assert counts == [2, 2, 2, 3, 4] and int(left) == 0
    grid = smp.schedule()
    assert grid.dtype == torch.float32 and float(grid[0]) == 1 and abs(float(grid[-1]) - 1e-3) < 1e-9


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_every_position_is_revealed_by_the_last_step(dream, alg, temperature):
    steps = 4
    smp = DreamSampler(DreamSamplerConfig(max_completion_length=9, steps=steps, alg=alg, temperature=temperature))
    prompts = torch.tensor(REFERENCE["prompt_ids_left_padded"])
    mask = torch.tensor(REFERENCE["attention_mask"]).bool()
    out = smp.sample(dream, prompts, mask, generator=gen(4), scorers=[dream])
    assert not bool((out.completion_ids == dream.mask_token_id).any())
    assert bool((out.unmask_step >= 0).all()) and bool((out.unmask_step < steps).all())
    assert out.num_steps == steps and out.nfe == 2 * steps
    assert torch.allclose(out.scorer_logprobs[0], out.token_logprobs)  # same policy, same canvases
    assert bool((out.token_logprobs <= 0).all())
    if alg != "origin":  # every row reveals exactly the scheduled count at each step
        left, expected = torch.tensor([9]), []
        for i in range(steps):
            expected.append(int(smp.reveal_counts(left, i)))
            left -= expected[-1]
        for row in out.unmask_step:
            assert torch.bincount(row, minlength=steps).tolist() == expected


def test_greedy_decoding_does_not_depend_on_the_batch(dream):
    prompts = REFERENCE["prompts"]
    smp = DreamSampler(DreamSamplerConfig(max_completion_length=8, steps=4, alg="entropy"))
    batch = smp.sample(dream, torch.tensor(REFERENCE["prompt_ids_left_padded"]),
                       torch.tensor(REFERENCE["attention_mask"]).bool())
    for row, prompt in enumerate(prompts):
        alone = smp.sample(dream, torch.tensor([prompt]))
        assert alone.completion_ids[0].tolist() == batch.completion_ids[row].tolist()


def test_filters_keep_the_nucleus_and_the_top_k():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    lowest = torch.finfo(torch.float32).min
    assert (filter_logits(logits, 0.0, 0.7, None)[0, 2:] == lowest).all()   # 0.5 + 0.3 reaches 0.7
    assert (filter_logits(logits, 0.0, 0.7, None)[0, :2] > lowest).all()
    assert (filter_logits(logits, 0.0, None, 1)[0, 1:] == lowest).all()
    assert torch.equal(filter_logits(logits, 0.0, 1.0, None), logits)       # top_p = 1 is off
    assert torch.allclose(filter_logits(logits, 2.0, None, None), logits / 2)


def test_config_defaults_are_explicit_and_unknown_options_fail():
    cfg = DreamSamplerConfig()
    assert (cfg.alg, cfg.alg_temp, cfg.temperature, cfg.top_p, cfg.top_k, cfg.eps) == ("entropy", 0.0, 0.0, None, None, 1e-3)
    with pytest.raises(ValidationError):
        DreamSamplerConfig(block_length=4)
    with pytest.raises(ValidationError):
        DreamSamplerConfig(alg="low_confidence")


def registry() -> Registry:
    reg = Registry()
    if "dream" not in reg.names("samplers"):  # an editable install whose metadata predates the entry point
        reg.register("samplers", "dream", DreamSampler, distribution="ddrl")
    return reg


def test_the_entry_point_is_declared_and_the_registry_builds_it():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["ddrl.samplers"]
    assert declared["dream"] == "ddrl.samplers.dream:DreamSampler"
    cls = registry().get("samplers", "dream")
    smp = cls.from_config(cls.Config(name="dream", steps=4, max_completion_length=8, alg="maskgit_plus"))
    assert isinstance(smp, DreamSampler) and smp.completion_length == 8


@pytest.mark.parametrize("options", [
    {"alg": "entropy", "temperature": 1.0},
    {"alg": "origin", "temperature": 1.0, "top_p": 0.9},
    {"alg": "topk_margin", "alg_temp": 0.5, "top_k": 3},
    {"alg": "maskgit_plus"},
], ids=lambda o: o["alg"])
def test_passes_the_conformance_kit(options):
    check_sampler("dream", distribution="ddrl", options={"max_completion_length": 6, "steps": 4, **options},
                  registry=registry())
