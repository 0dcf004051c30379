"""Policy construction, log-probs, LoRA / reference semantics, persistence, devices."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from grape_evo.policy import (
    CharTokenizer,
    Policy,
    PolicyConfig,
    build_policy,
    resolve_device,
)

Make = Callable[..., Policy]


def _batch(tok: CharTokenizer) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Three sequences of different lengths, left-padded to a common width."""
    rows = [
        [tok.bos_id, *tok.encode("12+34=46")],
        [tok.bos_id, *tok.encode("9+9=18")],
        [tok.bos_id, *tok.encode("100+1=101")],
    ]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, rows


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


def test_forward_logprobs_matches_manual_unpadded(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy()
    row = [tok.bos_id, *tok.encode("12+34=46"), tok.eos_id]
    with torch.no_grad():
        out = policy.forward_logprobs(torch.tensor([row]), torch.ones(1, len(row)).long(), 4)
        logp, ent = _manual_logp(policy, row, 4)
    assert out.logp.shape == (1, 4) and out.logp.dtype == torch.float32
    torch.testing.assert_close(out.logp[0], logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.entropy[0], ent, atol=1e-5, rtol=0)
    assert out.values is None


@pytest.mark.parametrize("value_head", [False, True])
def test_left_padded_rows_equal_rows_alone(
    make_policy: Make, tok: CharTokenizer, value_head: bool
) -> None:
    policy = make_policy(value_head=value_head)
    ids, mask, rows = _batch(tok)
    n = 3
    with torch.no_grad():
        batched = policy.forward_logprobs(ids, mask, n)
        for i, row in enumerate(rows):
            alone = policy.forward_logprobs(torch.tensor([row]), torch.ones(1, len(row)).long(), n)
            torch.testing.assert_close(batched.logp[i], alone.logp[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batched.entropy[i], alone.entropy[0], atol=1e-5, rtol=0)
            if value_head:
                assert batched.values is not None and alone.values is not None
                torch.testing.assert_close(batched.values[i], alone.values[0], atol=1e-5, rtol=0)


def test_masked_completion_positions_are_zero_and_grads_finite(
    make_policy: Make, tok: CharTokenizer
) -> None:
    policy = make_policy(value_head=True)
    ids, mask, _ = _batch(tok)
    mask = mask.clone()
    mask[0, -2:] = 0  # pretend row 0's completion ended early (right padding)
    out = policy.forward_logprobs(ids, mask, 3)
    assert torch.all(out.logp[0, -2:] == 0) and torch.all(out.entropy[0, -2:] == 0)
    assert out.values is not None and torch.all(out.values[0, -2:] == 0)
    (out.logp.sum() + out.values.sum()).backward()
    grads = [p.grad for p in policy.trainable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_n_completion_out_of_range(make_policy: Make) -> None:
    ids = torch.ones(1, 5).long()
    with pytest.raises(ValueError, match="n_completion"):
        make_policy().forward_logprobs(ids, ids, 5)


# ---------------------------------------------------------------------- LoRA / reference


def _sgd_step(policy: Policy, ids: torch.Tensor, mask: torch.Tensor) -> None:
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=0.5)
    loss = -policy.forward_logprobs(ids, mask, 4).logp.sum()
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
    ids, mask, _ = _batch(tok)
    with torch.no_grad():
        before = policy.forward_logprobs(ids, mask, 4).logp
        with policy.reference():
            ref_before = policy.forward_logprobs(ids, mask, 4).logp
    torch.testing.assert_close(before, ref_before, atol=0, rtol=0)
    _sgd_step(policy, ids, mask)
    with torch.no_grad():
        after = policy.forward_logprobs(ids, mask, 4).logp
        with policy.reference():
            ref_after = policy.forward_logprobs(ids, mask, 4).logp
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(ref_after, ref_before, atol=1e-6, rtol=0)


def test_lora_freeze_reference_folds_adapter(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy(lora_rank=4)
    ids, mask, _ = _batch(tok)
    _sgd_step(policy, ids, mask)
    with torch.no_grad():
        trained = policy.forward_logprobs(ids, mask, 4).logp
    policy.freeze_reference()
    with torch.no_grad():
        now = policy.forward_logprobs(ids, mask, 4).logp
        with policy.reference():
            ref = policy.forward_logprobs(ids, mask, 4).logp
    torch.testing.assert_close(now, trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref, trained, atol=1e-5, rtol=0)
    assert all("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)


def test_full_finetune_reference_is_frozen_copy(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy(value_head=True)
    ids, mask, _ = _batch(tok)
    with pytest.raises(RuntimeError, match="freeze_reference"), policy.reference():
        pass
    policy.freeze_reference()
    n_params = policy.num_parameters()
    with torch.no_grad():
        before = policy.forward_logprobs(ids, mask, 4).logp
    _sgd_step(policy, ids, mask)
    with torch.no_grad():
        after = policy.forward_logprobs(ids, mask, 4).logp
        with policy.reference():
            ref = policy.forward_logprobs(ids, mask, 4)
    assert (after - before).abs().max() > 1e-4
    torch.testing.assert_close(ref.logp, before, atol=1e-6, rtol=0)
    assert ref.values is None
    assert policy.num_parameters() == n_params  # the copy is not a parameter of the policy
    assert all(not k.startswith("_reference") for k in policy.state_dict())


# ---------------------------------------------------------------------- persistence


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_save_load_round_trip(
    make_policy: Make, tok: CharTokenizer, tmp_path: Path, lora_rank: int
) -> None:
    policy = make_policy(lora_rank=lora_rank, value_head=True)
    ids, mask, _ = _batch(tok)
    policy.freeze_reference()
    _sgd_step(policy, ids, mask)
    policy.save(tmp_path)
    loaded = Policy.load(tmp_path)
    assert loaded.config == policy.config
    assert isinstance(loaded.tokenizer, CharTokenizer)
    with torch.no_grad():
        a, b = policy.forward_logprobs(ids, mask, 4), loaded.forward_logprobs(ids, mask, 4)
        with policy.reference(), loaded.reference():
            ra = policy.forward_logprobs(ids, mask, 4).logp
            rb = loaded.forward_logprobs(ids, mask, 4).logp
    torch.testing.assert_close(a.logp, b.logp, atol=0, rtol=0)
    assert a.values is not None and b.values is not None
    torch.testing.assert_close(a.values, b.values, atol=0, rtol=0)
    torch.testing.assert_close(ra, rb, atol=0, rtol=0)


# ---------------------------------------------------------------------- checkpoints


def _save_hf_tokenizer(tok: CharTokenizer, path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(
        tokenizer_object=tok.backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    ).save_pretrained(str(path))


def test_gpt2_checkpoint_loads_same_weights(
    make_policy: Make, tok: CharTokenizer, tmp_path: Path
) -> None:
    source = make_policy(seed=3)
    source.hf_model.save_pretrained(str(tmp_path))
    _save_hf_tokenizer(tok, tmp_path)
    policy = build_policy(PolicyConfig(checkpoint=str(tmp_path)), None, seed=0)
    assert policy.tokenizer.eos_id == tok.eos_id
    ids, mask, _ = _batch(tok)
    with torch.no_grad():
        a = source.forward_logprobs(ids, mask, 4).logp
        b = policy.forward_logprobs(ids, mask, 4).logp
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


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
    _save_hf_tokenizer(tok, tmp_path)
    policy = build_policy(
        PolicyConfig(checkpoint=str(tmp_path), lora_rank=2, value_head=True), None, seed=0
    )
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A" in n for n in names) and any("down_proj" in n for n in names)
    assert all("lora_" in n or n.startswith("value_head") for n in names)
    ids, mask, rows = _batch(tok)
    with torch.no_grad():
        out = policy.forward_logprobs(ids, mask, 3)
        for i, row in enumerate(rows):
            alone = policy.forward_logprobs(torch.tensor([row]), torch.ones(1, len(row)).long(), 3)
            torch.testing.assert_close(out.logp[i], alone.logp[0], atol=1e-5, rtol=0)
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
