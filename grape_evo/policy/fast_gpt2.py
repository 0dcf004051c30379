"""A lean forward pass of transformers' `GPT2LMHeadModel` that computes each shared prefix once.

At this project's sizes (2 layers, 64 wide, about 12 tokens a row) a transformers forward
spends much of its time in generic machinery (mask building, cache classes, output objects),
and most of its tokens are repeats: the G rows of a group share their prompt, and a confident
policy's completions share their first tokens (32 x 8 addition rollouts of 4 tokens hold
about 150 distinct completion prefixes, not 768). This module runs the same function with plain
tensor ops on the parameters of the HF model it is given (no copies, so gradients reach them),
once per distinct prefix: a hidden state depends only on its prefix, so rows that share a prefix
share its hidden states, keys and values. transformers' forward stays the reference
implementation: `supports` says when this one computes the same function, and callers fall back
otherwise (LoRA layers, other architectures, hooks, active dropout).

Math (pre-LayerNorm GPT-2; ``conv(x) = x @ W + b`` is transformers' ``Conv1D``, W stored
[in, out]; nh heads of size hd = H / nh)::

    x_0 = wte[token] + wpe[position]
    a   = x + attn.c_proj(SDPA(q, k, v, mask, scale=hd ** -0.5)),  q|k|v = attn.c_attn(ln_1(x))
    x'  = a + mlp.c_proj(gelu(mlp.c_fc(ln_2(a))))
    logits = ln_f(x_n) @ lm_head.weight^T

Layout: N distinct prompts [N, P] (left-padded) run as one block. Completion tokens form a
prefix tree, run level by level: level j holds the M_j distinct (parent, mask bit, token)
triples of completion position j. As in transformers, a query attends to the real (mask 1) keys
at or before it, its own included when it is real: for a node, its prompt's real keys, its
real ancestors and itself if real. A query with no such key (left padding, which nothing reads)
attends to itself, so it stays finite. Positions are ``cumsum(mask) - 1`` clamped at 0 along
each prefix, as in `position_ids_from_mask`. A row's output at completion position j is its
level-j node's.

Shapes: B rows, N prompts of P tokens, M_j nodes at level j, H hidden size, V vocabulary.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GELU_APPROXIMATE",
    "PrefixTreeDecoder",
    "completion_logits",
    "or_self",
    "shared_prompts",
    "supports",
]

# transformers activation name -> F.gelu's `approximate` argument.
GELU_APPROXIMATE = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu": "none"}


@functools.cache
def _gpt2_types() -> tuple[type, frozenset[type]]:
    """(the LM class, every module type of a plain transformers GPT-2 LM)."""
    from transformers.activations import ACT2FN
    from transformers.models.gpt2 import modeling_gpt2 as gpt2
    from transformers.pytorch_utils import Conv1D

    plain = {gpt2.GPT2LMHeadModel, gpt2.GPT2Model, gpt2.GPT2Block, gpt2.GPT2Attention}
    plain |= {gpt2.GPT2MLP, Conv1D, nn.ModuleList, nn.LayerNorm, nn.Embedding, nn.Dropout}
    plain |= {nn.Linear} | {type(ACT2FN[name]) for name in GELU_APPROXIMATE}
    return gpt2.GPT2LMHeadModel, frozenset(plain)


def supports(lm: nn.Module) -> bool:
    """Whether this module computes what ``lm``'s own forward computes.

    True for a plain ``GPT2LMHeadModel`` (no LoRA or other replaced layers, no cross-attention)
    with scaled attention, a GELU activation, no bias on the LM head, no dropout active and no
    module hooks.
    """
    lm_type, allowed = _gpt2_types()
    if type(lm) is not lm_type:
        return False
    cfg = lm.config
    if (
        cfg.activation_function not in GELU_APPROXIMATE
        or cfg.add_cross_attention
        or not cfg.scale_attn_weights
        or cfg.scale_attn_by_inverse_layer_idx
        or cfg.reorder_and_upcast_attn
        or lm.lm_head.bias is not None
    ):
        return False
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return False
    for module in lm.modules():
        if type(module) not in allowed or module._forward_hooks or module._forward_pre_hooks:
            return False
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            return False
    return True


def shared_prompts(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge consecutive rows with the same prompt (the G rows of a sampled group).

    Args:
        prompt_ids, prompt_mask: [B, P].

    Returns:
        (ids [N, P], mask [N, P], rows [B] long) with ``ids[rows] == prompt_ids`` and
        ``mask[rows] == prompt_mask``; N is the number of runs of equal rows.
    """
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1)
    same &= (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    starts = torch.cat([same.new_ones(1), ~same])  # [B] True where a new prompt starts
    rows = starts.long().cumsum(0) - 1
    return prompt_ids[starts], prompt_mask[starts], rows


# ---------------------------------------------------------------------- building blocks


def _conv(x: Tensor, conv: nn.Module) -> Tensor:
    """transformers ``Conv1D``: ``x @ W + b`` over the last dimension (W is [in, out])."""
    out = torch.addmm(conv.bias, x.reshape(-1, x.shape[-1]), conv.weight)
    return out.view(*x.shape[:-1], out.shape[-1])


def _layer_norm(x: Tensor, norm: nn.Module) -> Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _qkv(block: nn.Module, x: Tensor, n_head: int) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v [R, nh, L, hd] of ``block``'s attention for hidden states x [R, L, H]."""
    rows, length, width = x.shape
    qkv = _conv(_layer_norm(x, block.ln_1), block.attn.c_attn)
    qkv = qkv.view(rows, length, 3, n_head, width // n_head).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def _finish(block: nn.Module, x: Tensor, attn: Tensor, gelu: str) -> Tensor:
    """Residual attention output, then the residual MLP: x [R, L, H], attn [R, nh, L, hd]."""
    x = x + _conv(attn.transpose(1, 2).reshape(x.shape), block.attn.c_proj)
    h = F.gelu(_conv(_layer_norm(x, block.ln_2), block.mlp.c_fc), approximate=gelu)
    return x + _conv(h, block.mlp.c_proj)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """SDPA of q [R, nh, Lq, hd] over k, v [R, nh, Lk, hd]; mask [R, 1, Lq, Lk] bool."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)


def _embed(lm: nn.Module, ids: Tensor, positions: Tensor) -> Tensor:
    wte, wpe = lm.transformer.wte.weight, lm.transformer.wpe.weight
    return F.embedding(ids, wte) + F.embedding(positions, wpe)


def _logits(lm: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(logits [..., V], final hidden ``ln_f(x)`` [..., H]) of hidden states x [..., H]."""
    hidden = _layer_norm(x, lm.transformer.ln_f)
    return hidden @ lm.lm_head.weight.T, hidden


# ---------------------------------------------------------------------- the prefix tree


def or_self(allowed: Tensor) -> Tensor:
    """[R, Lq, Lk] bool with each query that sees no key also seeing itself (key Lk - Lq + i)."""
    queries, keys = allowed.shape[-2:]
    index = torch.arange(keys, device=allowed.device)
    own = index[None, :] == index[keys - queries :, None]  # [Lq, Lk], query i is key Lk - Lq + i
    return allowed | (own & ~allowed.any(-1, keepdim=True))


@dataclass
class _Level:
    """The M nodes of one completion position: tokens fed at it and their layers' state."""

    parent: Tensor  # [M] long: index into the previous level (level 0: into the prompts)
    real: Tensor  # [M] bool: the token's attention-mask bit (keys of unreal tokens are hidden)
    count: Tensor  # [M] long: real tokens in the prefix up to and including this node
    kv: list[tuple[Tensor, Tensor]]  # per layer, keys and values [M, nh, 1, hd]


class _PrefixTree:
    """Prompts and completion levels of one forward; `extend` runs one more level."""

    def __init__(self, lm: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor) -> None:
        """Run the N prompts [N, P]; `last` holds their last position's hidden state [N, H]
        (before ``ln_f``)."""
        self.lm = lm
        self.gelu, self.n_head = GELU_APPROXIMATE[lm.config.activation_function], lm.config.n_head
        self.prompt_mask = prompt_mask.bool()
        self.prompt_len = prompt_mask.long().sum(-1)
        width = prompt_ids.shape[1]
        tril = torch.ones(width, width, dtype=torch.bool, device=prompt_ids.device).tril()
        attn_mask = or_self(tril & self.prompt_mask[:, None, :])[:, None]  # [N, 1, P, P]
        x = _embed(lm, prompt_ids, (prompt_mask.long().cumsum(-1) - 1).clamp(min=0))
        self.prompt_kv: list[tuple[Tensor, Tensor]] = []
        for block in lm.transformer.h:
            q, k, v = _qkv(block, x, self.n_head)
            x = _finish(block, x, _attend(q, k, v, attn_mask), self.gelu)
            self.prompt_kv.append((k, v))
        self.last = x[:, -1]
        self.levels: list[_Level] = []

    def extend(self, tokens: Tensor, parent: Tensor, real: Tensor) -> Tensor:
        """Run a level of M new nodes; returns their hidden states [M, H] (before ``ln_f``).

        Args:
            tokens: [M] long.
            parent: [M] long, each node's parent: a node of the last level, or for the first
                level a prompt.
            real: [M] bool, the nodes' attention-mask bits.
        """
        chain = [parent]  # ancestors, nearest first, ending at the prompt
        for level in reversed(self.levels):
            chain.append(level.parent.index_select(0, chain[-1]))
        root = chain.pop()
        before = self.levels[-1].count if self.levels else self.prompt_len
        count = before.index_select(0, parent) + real.long()
        ancestors = list(zip(self.levels, reversed(chain), strict=True))  # oldest first
        visible = [self.prompt_mask.index_select(0, root)]
        visible += [level.real.index_select(0, idx)[:, None] for level, idx in ancestors]
        visible.append(real[:, None])
        attn_mask = or_self(torch.cat(visible, dim=1)[:, None, :])[:, None]  # [M, 1, 1, P+j+1]
        x = _embed(self.lm, tokens[:, None], (count[:, None] - 1).clamp(min=0))
        kv = []
        for i, block in enumerate(self.lm.transformer.h):
            q, k, v = _qkv(block, x, self.n_head)
            pk, pv = self.prompt_kv[i]
            keys = [pk.index_select(0, root)]
            values = [pv.index_select(0, root)]
            for level, idx in ancestors:
                keys.append(level.kv[i][0].index_select(0, idx))
                values.append(level.kv[i][1].index_select(0, idx))
            attn = _attend(q, torch.cat([*keys, k], 2), torch.cat([*values, v], 2), attn_mask)
            x = _finish(block, x, attn, self.gelu)
            kv.append((k, v))
        self.levels.append(_Level(parent, real, count, kv))
        return x[:, 0]


def _distinct(
    parent: Tensor, real: Tensor, tokens: Tensor, vocab: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Distinct (parent, real, token) triples of B rows [B] each.

    Returns:
        (parent [M], real [M] bool, tokens [M], node [B]) with row r's triple at node[r].
    """
    code = (parent * 2 + real.long()) * vocab + tokens
    unique, node = torch.unique(code, return_inverse=True)
    return unique // (2 * vocab), (unique // vocab) % 2 == 1, unique % vocab, node


# ---------------------------------------------------------------------- scoring


def completion_logits(
    lm: nn.Module, input_ids: Tensor, attention_mask: Tensor, n_completion: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits and final hidden states of the distinct positions that predict the last T tokens.

    The first L - T tokens of each row are its prompt, the last T its completion. Consecutive
    rows with the same prompt share one prompt pass (`shared_prompts`); completion positions
    0 .. T - 2 run as prefix-tree levels (position T - 1 predicts nothing that is scored).

    Args:
        lm: a model `supports` accepts.
        input_ids, attention_mask: [B, L].
        n_completion: T, with 0 < T < L.

    Returns:
        (logits [K, V], hidden [K, H], index [B, T] long) for the K distinct prefixes:
        ``logits[index[b, t]]`` predicts ``input_ids[b, L - T + t]`` and equals the
        transformers forward's ``logits[b, L - T - 1 + t]`` wherever that token is real (the
        same for ``hidden`` and the last hidden state).
    """
    split = input_ids.shape[1] - n_completion
    ids, mask, node = shared_prompts(input_ids[:, :split], attention_mask[:, :split])
    tree = _PrefixTree(lm, ids, mask)
    outputs, index = [tree.last], [node]
    offset = tree.last.shape[0]  # rows of `outputs` so far
    vocab = lm.transformer.wte.weight.shape[0]
    for j in range(split, input_ids.shape[1] - 1):
        parent, real, tokens, node = _distinct(
            node, attention_mask[:, j].bool(), input_ids[:, j], vocab
        )
        outputs.append(tree.extend(tokens, parent, real))
        index.append(node + offset)
        offset += outputs[-1].shape[0]
    logits, hidden = _logits(lm, torch.cat(outputs))
    return logits, hidden, torch.stack(index, dim=1)


# ---------------------------------------------------------------------- sampling


class PrefixTreeDecoder:
    """Incremental decoding over a prefix tree: each step runs the distinct (prefix, token)
    pairs of the B rows once and hands every row its node's next-token logits.

    Call under ``torch.no_grad()``.
    """

    def __init__(self, lm: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, rows: Tensor):
        """Args: lm accepted by `supports`; prompt_ids, prompt_mask [N, P] the distinct
        prompts; rows [B] long, the prompt of each row."""
        self.lm = lm
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.node = rows  # [B] each row's node in the last level (the prompts at first)
        self.vocab = lm.transformer.wte.weight.shape[0]
        self.tree: _PrefixTree | None = None

    def prefill(self) -> Tensor:
        """Run the prompts; returns next-token logits [B, V] for every row."""
        self.tree = _PrefixTree(self.lm, self.prompt_ids, self.prompt_mask)
        logits, _ = _logits(self.lm, self.tree.last)
        return logits.index_select(0, self.node)

    def step(self, tokens: Tensor, active: Tensor) -> Tensor:
        """Feed one token per row; returns next-token logits [B, V].

        Args:
            tokens: [B] long, the tokens just drawn.
            active: [B] bool, rows still generating: the new token is a real (attended) one,
                and advances the position, only for them (as an attention-mask column of
                ``active`` does in transformers).
        """
        assert self.tree is not None, "call prefill first"
        parent, real, new_tokens, self.node = _distinct(self.node, active, tokens, self.vocab)
        logits, _ = _logits(self.lm, self.tree.extend(new_tokens, parent, real))
        return logits.index_select(0, self.node)
