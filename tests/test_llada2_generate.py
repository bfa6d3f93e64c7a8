"""Greedy ``block_diffusion`` decoding of native `llada2` is token-identical to the published
``LLaDA2MoeModelLM.generate``.

``tests/fixtures/llada2_reference/generate.json`` holds the outputs of the published ``generate``
(``modeling_llada2_moe.py`` of the LLaDA2.0 release, transcribed statement for statement, run in a
throwaway environment outside the repository with transformers 4.53.3; the file's meta records the
versions) on ``write_llada2(dir, block_size=B)`` for B in 4 and 8: temperature 0, three prompts
(5, 8 and 11 tokens: partial first blocks), ``threshold`` 0.95 and 0.05 (several tokens per step),
``steps`` B, B/2 and 3 (a schedule with a remainder), ``gen_length`` 10 and 16 (a last block that
runs past it, or not), ``minimal_topk`` 1, and ``eos_id`` the config's EOS or a frequently generated
token (241, so that EOS truncation and ``eos_early_stop`` are exercised). Each output is the ids
after the prompt as ``generate`` returns them: cut after the first ``eos_id``. The one change made to
run it in float32: the block mask is built in the model's dtype (the published code casts it to
bfloat16, its model dtype, which sdpa refuses with float32 queries; the values are 0 / -inf either way).

The settings map as ``block_length -> the model's block_size``, ``threshold -> threshold``,
``steps -> steps_per_block`` (``generate`` first caps it at ``gen_length // minimal_topk``),
``gen_length -> max_completion_length``, ``eos_id -> eos_token_id``, plus ``whole_last_block: true``
(the published canvas runs to a whole number of blocks). ddrl's completion is cut after its first
EOS the same way; ``eos_early_stop`` does not change the tokens up to the first EOS on either side.
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
from ddrl.samplers.block_diffusion import num_transfer_tokens_list
from tests.hf_fixtures_llada2 import cut_at_eos, left_padded, tiny_llada2_policies

pytest.importorskip("peft")

REFERENCE = Path(__file__).parent / "fixtures" / "llada2_reference" / "generate.json"
CASES = json.loads(REFERENCE.read_text())["cases"]
SETTINGS = ("block_size", "threshold", "steps", "gen_length", "eos_id", "eos_early_stop")


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> dict:
    return tiny_llada2_policies(tmp_path_factory, [c["block_size"] for c in CASES])


def sampler(case: dict, cache: str = "none", **extra):
    cls = Registry().get("samplers", "block_diffusion")
    steps = min(case["steps"], case["gen_length"] // case["minimal_topk"])  # generate()'s own cap
    return cls(cls.Config(
        max_completion_length=case["gen_length"], temperature=0.0, threshold=case["threshold"],
        steps_per_block=steps, whole_last_block=True, eos_early_stop=case["eos_early_stop"],
        eos_token_id=case["eos_id"], cache=cache, **extra,
    ))


def test_the_reference_covers_the_settings():
    assert {c["block_size"] for c in CASES} == {4, 8}
    assert {c["threshold"] for c in CASES} == {0.95, 0.05}
    assert any(len(c["output"]) < c["gen_length"] for c in CASES)  # EOS truncation happens
    assert any((len(c["prompt"]) + c["gen_length"]) % c["block_size"] for c in CASES)  # a last block past L
    assert any(c["block_size"] % c["steps"] for c in CASES)  # a schedule with a remainder
    assert num_transfer_tokens_list(8, 3) == [3, 3, 2] and num_transfer_tokens_list(4, 8) == [1] * 4 + [0] * 4


@pytest.mark.parametrize("cache", ["none", "auto"])
def test_greedy_generation_is_token_identical_to_the_published_generate(policies, cache):
    wrong = []
    for case in CASES:
        out = sampler(case, cache).sample(policies[case["block_size"]], torch.tensor([case["prompt"]]))
        got = cut_at_eos(out.batch.completion_ids[0].tolist(), case["eos_id"])
        if got != case["output"]:
            wrong.append(({k: case[k] for k in SETTINGS}, len(case["prompt"]), case["output"], got))
    assert not wrong, f"{len(wrong)} of {len(CASES)} cases differ, first: {wrong[0]}"


def test_left_padded_batches_decode_each_prompt_as_the_published_generate_alone(policies):
    key = lambda c: tuple(c[k] for k in SETTINGS)
    for _, group in groupby(sorted(CASES, key=key), key=key):
        group = list(group)
        ids, mask = left_padded([c["prompt"] for c in group])
        out = sampler(group[0]).sample(policies[group[0]["block_size"]], ids, mask)
        for i, c in enumerate(group):
            assert cut_at_eos(out.batch.completion_ids[i].tolist(), c["eos_id"]) == c["output"], key(c)


def test_the_published_options_matter(policies):
    """Without ``whole_last_block`` or ``steps_per_block`` some cases differ: both are needed."""
    for extra in ({"whole_last_block": False}, {"steps_per_block": None}):
        for case in CASES:
            cfg = sampler(case).config.model_copy(update=extra)
            out = type(sampler(case))(cfg).sample(policies[case["block_size"]], torch.tensor([case["prompt"]]))
            if cut_at_eos(out.batch.completion_ids[0].tolist(), case["eos_id"]) != case["output"]:
                break
        else:
            raise AssertionError(f"every case matches with {extra}")


def test_whole_last_block_keeps_the_output_width_and_records(policies):
    case = next(c for c in CASES if (len(c["prompt"]) + c["gen_length"]) % c["block_size"])
    out = sampler(case).sample(policies[case["block_size"]], torch.tensor([case["prompt"]]))
    n = case["gen_length"]
    assert out.batch.completion_ids.shape == (1, n)
    assert out.unmask_step.shape == out.token_logprobs.shape == (1, n)
    assert not (out.batch.completion_ids == policies[case["block_size"]].mask_token_id).any()
