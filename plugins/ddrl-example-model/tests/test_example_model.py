"""The example model plugin, as ddrl sees it once the distribution is installed.

Nothing is installed here: CI (``bash .ci/run``) installs every package under plugins/ first. Run
alone with ``pip install -e plugins/ddrl-example-model && python -m pytest plugins/ddrl-example-model``.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
import torch

pytest.importorskip("ddrl_example_model", reason="not installed: pip install -e plugins/ddrl-example-model")

from ddrl.config import ConfigError, build_config
from ddrl.registry import Registry
from ddrl.testing import build, check_listed, check_model, train_briefly
from ddrl_example_model.model import MLPPolicy

DIST = "ddrl-example-model"


def test_registry_finds_the_model_of_this_distribution():
    registry = Registry()
    assert registry.get("models", "mlp") is MLPPolicy
    assert registry.origin("models", "mlp") == f"{DIST} {version(DIST)}"
    assert [p for p in registry.check_all() if p.distribution == DIST] == []


def test_the_model_keeps_the_contract():
    check_model("mlp", distribution=DIST)  # shapes, no mass on the mask, left padding, save/load
    check_model("mlp", distribution=DIST, options={"vocab_size": 9, "d_model": 8, "hidden": 16})
    check_listed("models", "mlp", DIST, "ddrl_example_model.model:MLPPolicy")


def test_save_and_load_round_trip_exactly(registry, tmp_path):
    policy = build(registry, "models", "mlp", seed=3)
    policy.save_pretrained(tmp_path)
    loaded = build(registry, "models", "mlp", path=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = torch.tensor([[0, 1, 4, 4, 2, 3]])
    assert torch.equal(policy.logits(ids), loaded.logits(ids))


def test_every_position_sees_the_whole_canvas_in_both_directions(registry):
    policy = build(registry, "models", "mlp").eval()
    ids = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        before = policy(ids)
        after = policy(torch.tensor([[0, 1, 2, 0]]))  # change the last token only
    assert not torch.allclose(before[0, 0], after[0, 0])  # the first position sees it


def test_seed_fixes_fresh_weights_and_a_misspelt_option_is_named(registry):
    a, b, c = (build(registry, "models", "mlp", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.embed_tokens.weight, b.embed_tokens.weight)
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)
    with pytest.raises(ConfigError, match="hiden"):  # as a recipe's `model:` section is checked
        build_config({"model": {"name": "mlp", "hiden": 8}}, registry=registry, sections=["model"])


@pytest.mark.slow
def test_ddrl_train_runs_two_steps_of_the_plugin_model_on_pattern(tmp_path):
    metrics, config = train_briefly(tmp_path, "--model", "mlp", "--task", "pattern")
    assert config["model"]["name"] == "mlp" and config["task"]["name"] == "pattern"
    assert len(metrics) == 2
