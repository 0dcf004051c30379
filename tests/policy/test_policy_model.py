"""Policy construction, scored log-probs, LoRA / reference semantics, persistence, devices.

Scoring goes through `score` (the policy's `forward_for`); tests that compare against the raw
transformers logits run on both the stacked fast path and ``fast_path = False``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from model_helpers import hf_char_tokenizer

from grape_evo.policy import (
    CharTokenizer,
    Policy,
    PolicyConfig,
    Rollout,
    build_policy,
    encode_pairs,
    resolve_device,
    score,
)

Make = Callable[..., Policy]
PAIRS = [("12+34=", "46"), ("9+9=", "1"), ("100+1=", "101")]
FAST_PATH = pytest.mark.parametrize("fast_path", [True, False], ids=["stacked", "transformers"])


def _batch(tok: CharTokenizer, pairs: list[tuple[str, str]] = PAIRS) -> Rollout:
    """Prompts of different lengths (left-padded) and completions of different lengths
    (right-padded after EOS)."""
    return encode_pairs(tok, [p for p, _ in pairs], [c for _, c in pairs])


def _manual_logp(policy: Policy, row: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and entropy of the last n tokens of one unpadded row, straight from the logits."""
    ids = torch.tensor([row])
    logits = policy.hf_model(input_ids=ids).logits[0].float()
    logp_all = F.log_softmax(logits, dim=-1)
    logp = torch.stack([logp_all[i - 1, row[i]] for i in range(len(row) - n, len(row))])
    ent = torch.stack(
        [-(logp_all[i - 1].exp() * logp_all[i - 1]).sum() for i in range(len(row) - n, len(row))]
    )
    return logp, ent


# ---------------------------------------------------------------------- config


def test_config_key_and_dict_round_trip() -> None:
    a = PolicyConfig()
    assert PolicyConfig.from_dict(a.to_dict()) == a
    assert a.key() == PolicyConfig().key()
    assert len(a.key()) == 64
    assert a.key() != PolicyConfig(lora_rank=4).key()
    assert a.key() != PolicyConfig(value_head=True).key()


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="tiny"):
        PolicyConfig(preset="huge")
    with pytest.raises(ValueError, match="lora_rank"):
        PolicyConfig(lora_rank=-1)
    with pytest.raises(ValueError, match="unknown keys"):
        PolicyConfig.from_dict({"preset": "tiny", "layers": 3})


# ---------------------------------------------------------------------- construction


def test_tiny_parameter_count(make_policy: Make) -> None:
    n = make_policy().num_parameters()
    assert 60_000 <= n <= 200_000


def test_small_parameter_count(make_policy: Make) -> None:
    n = make_policy(preset="small").num_parameters()
    assert 1_000_000 <= n <= 10_000_000


def test_seeded_init_is_deterministic_and_restores_rng(make_policy: Make) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = make_policy(seed=5)
    after = torch.rand(3)
    assert torch.equal(after, expected_next)  # caller's RNG stream untouched
    b = make_policy(seed=5)
    c = make_policy(seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_gpt2_config_specials_and_no_dropout(make_policy: Make, tok: CharTokenizer) -> None:
    cfg = make_policy().hf_model.config
    assert (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (
        tok.vocab_size,
        1,
        2,
        0,
    )
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0


# ---------------------------------------------------------------------- log-probs


@FAST_PATH
def test_score_matches_manual_unpadded(
    make_policy: Make, tok: CharTokenizer, fast_path: bool
) -> None:
    policy = make_policy()
    policy.fast_path = fast_path
    row = [tok.bos_id, *tok.encode("12+34=46"), tok.eos_id]
    with torch.no_grad():
        out = score(policy, _batch(tok, [("12+34=", "46")]), full=True)
        logp, ent = _manual_logp(policy, row, 3)
        want_dist = F.log_softmax(policy.hf_model(input_ids=torch.tensor([row])).logits[0], -1)
    assert out.logp.shape == (1, 3) and out.logp.dtype == torch.float32
    torch.testing.assert_close(out.logp[0], logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy[0], ent, atol=1e-5, rtol=0)
    assert out.log_dist is not None and out.log_dist.shape == (1, 3, tok.vocab_size)
    torch.testing.assert_close(out.log_dist[0], want_dist[-4:-1], atol=1e-5, rtol=0)
    assert out.values is None


@FAST_PATH
@pytest.mark.parametrize("value_head", [False, True])
def test_padded_rows_equal_rows_alone(
    make_policy: Make, tok: CharTokenizer, value_head: bool, fast_path: bool
) -> None:
    policy = make_policy(value_head=value_head)
    policy.fast_path = fast_path
    batch = _batch(tok)
    with torch.no_grad():
        batched = score(policy, batch)
        for i, pair in enumerate(PAIRS):
            alone = score(policy, _batch(tok, [pair]))
            n = alone.logp.shape[1]
            assert bool((batched.logp[i, n:] == 0).all())  # right padding
            torch.testing.assert_close(batched.logp[i, :n], alone.logp[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.entropy[i, :n], alone.entropy[0], atol=1e-5, rtol=0)
            if value_head:
                assert batched.values is not None and alone.values is not None
                torch.testing.assert_close(
                    batched.values[i, :n], alone.values[0], atol=1e-5, rtol=0
                )


@FAST_PATH
def test_masked_completion_positions_are_zero_and_grads_finite(
    make_policy: Make, tok: CharTokenizer, fast_path: bool
) -> None:
    policy = make_policy(value_head=True)
    policy.fast_path = fast_path
    batch = _batch(tok)
    mask = batch.completion_mask.clone()
    mask[2, -2:] = 0  # pretend row 2's completion ended early (right padding)
    out = score(policy, dataclasses.replace(batch, completion_mask=mask))
    assert torch.all(out.logp[2, -2:] == 0) and torch.all(out.entropy[2, -2:] == 0)
    assert out.values is not None and torch.all(out.values[2, -2:] == 0)
    (out.logp.sum() + out.values.sum()).backward()
    grads = [p.grad for p in policy.trainable_parameters() if p.grad is not None]
    assert len(grads) == len(policy.trainable_parameters())  # the value head's included
    assert all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------- LoRA / reference


def _logp(policy: Policy, batch: Rollout, reference: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return score(policy, batch, reference=reference).logp


def _sgd_step(policy: Policy, batch: Rollout) -> None:
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.5)
    loss = -score(policy, batch).logp.sum()
    loss.backward()
    opt.step()
    opt.zero_grad()


def test_lora_trainable_parameters_are_adapter_and_value_head(make_policy: Make) -> None:
    policy = make_policy(lora_rank=4, value_head=True)
    trainable = {id(p) for p in policy.trainable_parameters()}
    names = [n for n, p in policy.named_parameters() if id(p) in trainable]
    assert names and all("lora_" in n or n.startswith("value_head") for n in names)
    # rank 4 on c_attn (64->192), attn.c_proj (64->64), mlp.c_proj (256->64), 2 layers,
    # plus value head 64 + 1
    expected = 2 * 4 * ((64 + 192) + (64 + 64) + (256 + 64)) + 65
    assert policy.num_parameters(trainable_only=True) == expected
    frozen = [n for n, p in policy.named_parameters() if "lora_" not in n and "value_head" not in n]
    assert all(not dict(policy.named_parameters())[n].requires_grad for n in frozen)


def test_lora_reference_is_base_model(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy(lora_rank=4)
    batch = _batch(tok)
    before, ref_before = _logp(policy, batch), _logp(policy, batch, reference=True)
    torch.testing.assert_close(before, ref_before, atol=0, rtol=0)
    _sgd_step(policy, batch)
    after, ref_after = _logp(policy, batch), _logp(policy, batch, reference=True)
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(ref_after, ref_before, atol=1e-6, rtol=0)


def test_lora_freeze_reference_folds_adapter(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy(lora_rank=4)
    batch = _batch(tok)
    _sgd_step(policy, batch)
    trained = _logp(policy, batch)
    policy.freeze_reference()
    now, ref = _logp(policy, batch), _logp(policy, batch, reference=True)
    torch.testing.assert_close(now, trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref, trained, atol=1e-5, rtol=0)
    assert all("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)


def test_full_finetune_reference_is_frozen_copy(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy(value_head=True)
    batch = _batch(tok)
    with pytest.raises(RuntimeError, match="freeze_reference"), policy.reference():
        pass
    with pytest.raises(RuntimeError, match="freeze_reference"):
        score(policy, batch, reference=True)
    assert policy.reference_lm is None
    policy.freeze_reference()
    n_params = policy.num_parameters()
    before = _logp(policy, batch)
    _sgd_step(policy, batch)
    after = _logp(policy, batch)
    with torch.no_grad():
        ref = score(policy, batch, reference=True)
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(ref.logp, before, atol=1e-6, rtol=0)
    assert ref.values is None
    assert policy.num_parameters() == n_params  # the copy is not a parameter of the policy
    assert all(not k.startswith("_reference") for k in policy.state_dict())


def test_active_lm_and_reference_lm(make_policy: Make) -> None:
    policy = make_policy()
    assert policy.active_lm() is policy.lm
    policy.freeze_reference()
    reference = policy.reference_lm
    assert reference is not None and reference is not policy.lm
    assert not any(p.requires_grad for p in reference.parameters())
    with policy.reference():
        assert policy.active_lm() is reference
    assert policy.active_lm() is policy.lm
    lora = make_policy(lora_rank=4)
    assert lora.reference_lm is None
    with lora.reference():
        assert lora.active_lm() is lora.lm  # the adapter is disabled instead


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_trainable_named_parameters(make_policy: Make, lora_rank: int) -> None:
    policy = make_policy(lora_rank=lora_rank, value_head=True)
    named = policy.trainable_named_parameters()
    names = [n for n, _ in named]
    assert len(set(names)) == len(names)
    assert [id(p) for _, p in named] == [id(p) for p in policy.trainable_parameters()]
    assert names[-2:] == ["value_head.weight", "value_head.bias"]
    lm_params = dict(policy.lm.named_parameters())  # names relative to `lm`
    assert all(lm_params[n] is p for n, p in named[:-2])
    if lora_rank:
        assert all("lora_" in n for n in names[:-2])
    else:  # every LM parameter, the tied LM head once (as the embedding)
        assert names[:-2] == list(lm_params)
        assert "lm_head.weight" not in names


def test_cache_and_keep_kwargs(make_policy: Make, tok: CharTokenizer) -> None:
    """`cache_of` reads the KV cache of an output, `cache_kwarg` feeds it back, and
    `keep_kwarg` keeps the last logits: continuing from the cache equals the full forward."""
    policy = make_policy(seed=1)
    lm = policy.hf_model
    ids = torch.tensor([[tok.bos_id, *tok.encode("12+34=46")]])
    with torch.no_grad():
        full = lm(input_ids=ids).logits
        out = lm(input_ids=ids[:, :-2], use_cache=True)
        cache = policy.cache_of(out)
        assert cache.get_seq_length() == ids.shape[1] - 2
        more = lm(input_ids=ids[:, -2:], use_cache=True, **{policy.cache_kwarg: cache})
        assert policy.keep_kwarg is not None
        kept = lm(input_ids=ids, **{policy.keep_kwarg: 3}).logits
    torch.testing.assert_close(more.logits, full[:, -2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(kept, full[:, -3:], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- persistence


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_save_load_round_trip(
    make_policy: Make, tok: CharTokenizer, tmp_path: Path, lora_rank: int
) -> None:
    policy = make_policy(lora_rank=lora_rank, value_head=True)
    batch = _batch(tok)
    policy.freeze_reference()
    _sgd_step(policy, batch)
    policy.save(tmp_path)
    loaded = Policy.load(tmp_path)
    assert loaded.config == policy.config
    assert isinstance(loaded.tokenizer, CharTokenizer)
    with torch.no_grad():
        a, b = score(policy, batch), score(loaded, batch)
    ra, rb = _logp(policy, batch, reference=True), _logp(loaded, batch, reference=True)
    torch.testing.assert_close(a.logp, b.logp, atol=0, rtol=0)
    assert a.values is not None and b.values is not None
    torch.testing.assert_close(a.values, b.values, atol=0, rtol=0)
    torch.testing.assert_close(ra, rb, atol=0, rtol=0)


# ---------------------------------------------------------------------- checkpoints


def test_gpt2_checkpoint_loads_same_weights(
    make_policy: Make, tok: CharTokenizer, tmp_path: Path
) -> None:
    source = make_policy(seed=3)
    source.hf_model.save_pretrained(str(tmp_path))
    hf_char_tokenizer().save_pretrained(str(tmp_path))
    policy = build_policy(PolicyConfig(checkpoint=str(tmp_path)), None, seed=0)
    assert policy.tokenizer.eos_id == tok.eos_id
    batch = _batch(tok)
    torch.testing.assert_close(_logp(source, batch), _logp(policy, batch), atol=1e-6, rtol=0)


def test_llama_checkpoint_with_lora_all_linear(tok: CharTokenizer, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(tmp_path))
    hf_char_tokenizer().save_pretrained(str(tmp_path))
    policy = build_policy(
        PolicyConfig(checkpoint=str(tmp_path), lora_rank=2, value_head=True), None, seed=0
    )
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A" in n for n in names) and any("down_proj" in n for n in names)
    assert all("lora_" in n or n.startswith("value_head") for n in names)
    batched = _logp(policy, _batch(tok))
    for i, pair in enumerate(PAIRS):
        alone = _logp(policy, _batch(tok, [pair]))[0]
        torch.testing.assert_close(batched[i, : alone.shape[0]], alone, atol=1e-5, rtol=0)
    assert policy.max_length == 64


# ---------------------------------------------------------------------- devices


def test_resolve_device_cpu_and_auto() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_unavailable() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")


def test_resolve_device_unknown() -> None:
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
