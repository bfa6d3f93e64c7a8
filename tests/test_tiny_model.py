"""The `tiny` policy: persistence, padding, bidirectionality and the mask-token contract."""

from __future__ import annotations

import json

import pytest
import torch

from ddrl.batch import left_pad
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyConfig, TinyPolicy


def test_default_size_is_between_one_and_five_million_parameters():
    policy = TinyPolicy.from_config(TinyConfig())
    n = sum(p.numel() for p in policy.parameters())
    assert 1_000_000 <= n <= 5_000_000


def test_save_and_load_round_trip_gives_identical_logits(char_policy, tmp_path):
    char_policy.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    loaded = TinyPolicy.from_pretrained(tmp_path / "m")
    ids = torch.tensor([char_policy.encode_prompt("round trip")])
    with torch.no_grad():
        assert torch.equal(loaded.logits(ids), char_policy.logits(ids))
    assert loaded.tokenizer.charset == char_policy.tokenizer.charset


def test_token_only_model_round_trips_without_a_tokenizer(token_policy, tmp_path):
    token_policy.save_pretrained(tmp_path)
    assert not (tmp_path / "tokenizer.json").exists()
    loaded = TinyPolicy.from_pretrained(tmp_path)
    assert loaded.tokenizer is None and loaded.mask_token_id == 3 and loaded.vocab_size == 4
    ids = torch.tensor([[0, 1, 3, 2]])
    with torch.no_grad():
        assert torch.equal(loaded.logits(ids), token_policy.logits(ids))


def test_left_padding_leaves_the_logits_of_real_positions_unchanged(char_policy):
    texts = ["a", "abc de", "0123456789"]
    ids, mask = left_pad([char_policy.encode_prompt(t) for t in texts], char_policy.pad_token_id)
    with torch.no_grad():
        batched = char_policy.logits(ids, mask)
        for row, text in enumerate(texts):
            alone = char_policy.logits(torch.tensor([char_policy.encode_prompt(text)]))[0]
            assert torch.allclose(batched[row, mask[row]], alone, atol=1e-5)


def test_attention_is_bidirectional(char_policy):
    a = torch.tensor([char_policy.encode_prompt("abcd")])
    b = a.clone()
    b[0, -1] = char_policy.encode_prompt("z", )[1]
    with torch.no_grad():
        # changing the last token changes the prediction at the first position: no causal mask
        assert not torch.allclose(char_policy.logits(a)[0, 0], char_policy.logits(b)[0, 0])


def test_the_mask_token_gets_zero_probability(char_policy):
    ids = torch.tensor([[char_policy.mask_token_id] * 5])
    with torch.no_grad():
        probs = torch.softmax(char_policy.logits(ids), -1)
    assert float(probs[..., char_policy.mask_token_id].max()) == 0.0
    assert torch.allclose(probs.sum(-1), torch.ones(1, 5))


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    arch = TinyArchitecture(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64)
    ids = torch.randint(5, 40, (3, 10), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        policy = TinyPolicy.fresh(arch, CharTokenizer(), seed=0).train()
        policy.set_gradient_checkpointing(checkpointing)
        policy.logits(ids).logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_loading_a_directory_without_weights_names_the_missing_file(char_policy, tmp_path):
    char_policy.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TinyPolicy.from_pretrained(tmp_path)


def test_loading_weights_of_another_shape_fails_clearly(char_policy, tmp_path):
    char_policy.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match config.json"):
        TinyPolicy.from_pretrained(tmp_path)


def test_fresh_weights_are_repeatable_from_the_seed():
    arch = TinyArchitecture(d_model=32, n_layers=1, n_heads=2, ffn_hidden=64)
    a, b, c = (TinyPolicy.fresh(arch, CharTokenizer(), seed=s) for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_char_tokenizer_round_trips_text_and_cuts_completions_at_eos(char_policy):
    tok = char_policy.tokenizer
    text = "(12 + 3) * 4 = 60"
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("42", add_special_tokens=False) + [tok.eos_token_id] + tok.encode("junk", add_special_tokens=False)
    assert char_policy.decode_completion(ids) == "42"
    assert tok.encode("é", add_special_tokens=False) == [tok.unk_token_id]


def test_sequences_longer_than_the_context_are_rejected():
    policy = TinyPolicy.fresh(TinyArchitecture(d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, max_seq_len=8), CharTokenizer())
    with pytest.raises(ValueError, match="max_seq_len"):
        policy.logits(torch.zeros(1, 9, dtype=torch.long))


def absolute_policy(init_std: float = 0.2) -> TinyPolicy:
    arch = TinyArchitecture(d_model=48, n_layers=2, n_heads=2, ffn_hidden=96, init_std=init_std, absolute_positions=True)
    return TinyPolicy.fresh(arch, CharTokenizer(), seed=3).eval()


def test_absolute_positions_add_one_learned_embedding_per_position_to_the_rotary_model(char_policy):
    policy = absolute_policy()
    assert policy.net.embed_positions.weight.shape == (char_policy.arch.max_seq_len, 48)
    ids = torch.tensor([policy.encode_prompt("where am I?")])
    with torch.no_grad():
        policy.net.embed_positions.weight.zero_()  # zero offsets: exactly the rotary-only network
        state = {k: v for k, v in policy.net.state_dict().items() if not k.startswith("embed_positions")}
        char_policy_copy = TinyPolicy.fresh(char_policy.arch, CharTokenizer(), seed=0)
        char_policy_copy.net.load_state_dict(state)
        assert torch.equal(policy.logits(ids), char_policy_copy.eval().logits(ids))
        policy.net.embed_positions.weight[3].fill_(0.5)  # a change at position 3 reaches the logits
        assert not torch.allclose(policy.logits(ids), char_policy_copy.logits(ids))


def test_absolute_positions_count_real_tokens_under_left_padding_and_in_cached_windows(tmp_path):
    policy = absolute_policy()
    texts = ["a", "abc de", "0123456789"]
    ids, mask = left_pad([policy.encode_prompt(t) for t in texts], policy.pad_token_id)
    with torch.no_grad():
        batched = policy.logits(ids, mask)
        for row, text in enumerate(texts):
            alone = policy.logits(torch.tensor([policy.encode_prompt(text)]))
            n = alone.shape[1]
            torch.testing.assert_close(batched[row, -n:], alone[0], atol=1e-5, rtol=1e-5)
        full, cache = policy.forward_cache(ids, mask)
        window = policy.forward_window(ids[:, 4:8], 4, cache, mask)  # dual layout: the cache covers the canvas
        torch.testing.assert_close(window, full[:, 4:8], atol=1e-5, rtol=1e-5)
    policy.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["absolute_positions"] is True
    loaded = TinyPolicy.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(loaded.logits(ids, mask), policy.logits(ids, mask))


def test_a_model_saved_before_absolute_positions_existed_still_loads(char_policy, tmp_path):
    char_policy.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["absolute_positions"]  # the config.json of earlier ddrl versions
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = TinyPolicy.from_pretrained(tmp_path)
    assert loaded.arch.absolute_positions is False and loaded.net.embed_positions is None
