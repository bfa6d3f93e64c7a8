"""Greedy ``block_diffusion`` decoding with LLaDA2.1 token editing is token-identical to the published
LLaDA2.1 ``LLaDA2MoeModelLM.generate``.

``tests/fixtures/llada21_reference/generate.json`` holds the outputs (and forward counts) of the
published ``generate`` (``dllm/pipelines/llada21/models/modeling_llada21_moe.py`` of ZHZisZZ/dllm at
commit ca176752fbceec49c6b4777a2c18ae88e4eb10ed, run unchanged in a throwaway environment outside the
repository with transformers 4.57.0; the file's meta records the versions) on
``write_llada2(dir, block_size=B)``, greedy, over 288 settings: B 4 and 8, three prompts (5, 8 and 11
tokens), ``threshold`` 0.95 and 0.05, ``editing_threshold`` 0.06 and 0.035, ``max_post_steps`` 16 and 2,
``num_to_transfer`` 1, ``gen_length`` 10 and 16, and ``eos_id`` / ``eos_early_stop`` (the config's EOS,
off), (241, on), (241, off). Editing changes the output in 266 of them. How it was produced, and the
option mapping: ``tests/fixtures/llada21_reference/README.md``.

Every case is checked with ``cache: none`` (tokens and forward count); the exact cache and
left-padded batches are checked on a deterministic subset (every 7th case, 42; every 4th group of
settings, 24 batches of its 3 prompts). All 288 cases also match with the exact cache (checked once
outside the suite, to keep it near 30 s).
"""

from __future__ import annotations

import json
import os
from itertools import groupby
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ddrl.registry import Registry
from tests.hf_fixtures_llada2 import cut_at_eos, left_padded, tiny_llada2_policies

pytest.importorskip("peft")

REFERENCE = Path(__file__).parent / "fixtures" / "llada21_reference" / "generate.json"
CASES = json.loads(REFERENCE.read_text())["cases"]
SUBSET = CASES[::7]
SETTINGS = ("block_size", "threshold", "editing_threshold", "max_post_steps", "num_to_transfer", "gen_length",
            "eos_id", "eos_early_stop")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: with several threads on a busy machine a forward is mostly thread overhead
    (tens of times slower); one thread runs the cases in seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> dict:
    return tiny_llada2_policies(tmp_path_factory, [c["block_size"] for c in CASES])


def sampler(case: dict, cache: str = "none", **extra):
    cls = Registry().get("samplers", "block_diffusion")
    kw = {
        "max_completion_length": case["gen_length"], "temperature": 0.0, "threshold": case["threshold"],
        "min_tokens_per_step": case["num_to_transfer"], "whole_last_block": True,
        "editing_threshold": case["editing_threshold"], "max_post_steps": case["max_post_steps"],
        "eos_early_stop": case["eos_early_stop"], "eos_token_id": case["eos_id"], "cache": cache,
    }
    return cls(cls.Config(**{**kw, **extra}))


def decode(policies: dict, case: dict, cache: str = "none", **extra) -> tuple[list[int], int]:
    out = sampler(case, cache, **extra).sample(policies[case["block_size"]], torch.tensor([case["prompt"]]))
    return cut_at_eos(out.batch.completion_ids[0].tolist(), case["eos_id"]), out.nfe


def test_the_reference_and_the_subset_cover_the_settings():
    assert len(CASES) == 288
    for cases in (CASES, SUBSET):
        for key, values in (("block_size", {4, 8}), ("threshold", {0.95, 0.05}), ("editing_threshold", {0.06, 0.035}),
                            ("max_post_steps", {16, 2}), ("gen_length", {10, 16}), ("eos_early_stop", {True, False})):
            assert {c[key] for c in cases} == values, key
        assert {len(c["prompt"]) for c in cases} == {5, 8, 11}
        assert sum(c["editing_changes_output"] for c in cases) > len(cases) // 2  # editing matters
        assert any(len(c["output"]) < c["gen_length"] for c in cases)  # EOS truncation happens


@pytest.mark.parametrize("cache, cases", [("none", CASES), ("auto", SUBSET)])
def test_greedy_editing_is_token_identical_to_the_published_generate(policies, cache, cases):
    """Same tokens up to the first EOS, and as many forwards as the published decode ran."""
    wrong = []
    for case in cases:
        got, nfe = decode(policies, case, cache)
        if got != case["output"] or nfe != case["nfe"]:
            wrong.append(({k: case[k] for k in SETTINGS}, len(case["prompt"]), case["output"], case["nfe"], got, nfe))
    assert not wrong, f"{len(wrong)} of {len(cases)} cases differ, first (settings, prompt length, published " \
                      f"tokens, forwards, ddrl tokens, forwards): {wrong[0]}"


def test_left_padded_batches_decode_each_prompt_as_the_published_generate_alone(policies):
    key = lambda c: tuple(c[k] for k in SETTINGS)
    groups = [list(g) for _, g in groupby(sorted(CASES, key=key), key=key)]
    for group in groups[::4]:
        ids, mask = left_padded([c["prompt"] for c in group])
        out = sampler(group[0]).sample(policies[group[0]["block_size"]], ids, mask)
        for i, c in enumerate(group):
            assert cut_at_eos(out.batch.completion_ids[i].tolist(), c["eos_id"]) == c["output"], key(c)


def test_editing_matters(policies):
    """With editing off a case where the published editing changed the output differs."""
    case = next(c for c in CASES if c["editing_changes_output"])
    assert decode(policies, case, editing_threshold=None)[0] != case["output"]
