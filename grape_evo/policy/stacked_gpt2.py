"""GPT-2 over M weight sets at once, as a prefix tree or one dense block (the fast path).

transformers' generic forward spends most of a small model's time in machinery (mask building,
cache classes, output objects), and most of its tokens are repeats: the G rows of a group share
their prompt, and a confident policy's completions share their first tokens. This module runs
the same function with plain tensor ops on stacked weights ``W[m]`` [M, ...] (stacked from each
member's own tensors, so gradients reach them), once per distinct prefix per member: a hidden
state depends only on its prefix and the member's weights. `supports` says when it computes
what transformers computes; callers fall back to `TransformersForward` otherwise.

Math (pre-LayerNorm GPT-2; ``conv(x) = x @ W + b`` is transformers' ``Conv1D``; nh heads of
size hd = H / nh), per member m::

    x_0 = wte[m][token] + wpe[m][position]
    a   = x + attn.c_proj(SDPA(q, k, v, mask, scale=hd ** -0.5)),  q|k|v = attn.c_attn(ln_1(x))
    x'  = a + mlp.c_proj(gelu(mlp.c_fc(ln_2(a))))
    logits = ln_f(x_n) @ head[m]^T           (head: lm_head.weight, tied to wte)

A position's output depends on the others only through their keys and values, so the last
layer runs its queries, projection and MLP only where the output is read: a block's scored
positions (its last completion positions; a prompt block's last position).

Layout: each member's N distinct prompts [M, N, P] (left-padded) run as one block; completion
tokens form a prefix tree per member, run level by level: level j holds, per member, the
distinct (parent, mask bit, token) triples of completion position j, padded to the member with
the most ([M, N_j]). Every node carries its whole key/value history (its parent's, then its
own), so a level needs only the one before it. As in transformers, a query attends to the real
(mask 1) keys at or before it, its own included when it is real; a query with no such key
(left padding, which nothing reads) attends to itself so it stays finite. Positions are
``cumsum(mask) - 1`` clamped at 0 along each prefix. A row's output at completion position j
is its level-j node's.

The tree pays one pass of the layer stack per completion position. Scoring (not decoding) can
instead run every row's whole sequence as one dense block (the same masks and positions, so the
same function): no sharing, one pass. `StackedGPT2.score` takes the cheaper by a cost model in
tokens (`PASS_COST_IN_TOKENS` per pass, `HISTORY_COST` per copied key/value entry): rows that
share no prompt (group size 1, e.g. PPO's minibatches) always run dense; many members or rows
sharing short prompts and answers run the tree; long completions run dense.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grape_evo.policy.forward import (
    VALUE_KEYS,
    MemberPrompts,
    MemberRows,
    TokenOutputs,
    Weights,
    token_logprobs,
    value_head_of,
)
from grape_evo.policy.weight_bank import BankRows

# transformers activation name -> F.gelu's `approximate` argument.
GELU_APPROXIMATE = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu": "none"}
Stacked = dict[str, Tensor]  # parameter name -> [M, *shape]


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


_RECORDERS = "transformers.utils.output_capturing"


def _foreign_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has forward hooks other than transformers' output recorders (which
    it installs on first use of ``output_hidden_states`` and which change no output)."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return any(getattr(hook, "__module__", "") != _RECORDERS for hook in hooks)


def supports(lm: nn.Module) -> bool:
    """Whether this module computes what ``lm``'s own forward computes: a plain
    ``GPT2LMHeadModel`` (no LoRA or other replaced layers, no cross-attention) with scaled
    attention, a GELU activation, no bias on the LM head, no dropout active and no hooks but
    transformers' output recorders."""
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
        if type(module) not in allowed or _foreign_hooks(module):
            return False
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            return False
    return True


def or_self(allowed: Tensor) -> Tensor:
    """[R, Lq, Lk] bool with each query that sees no key also seeing itself (key Lk - Lq + i)."""
    queries, keys = allowed.shape[-2:]
    index = torch.arange(keys, device=allowed.device)
    own = index[None, :] == index[keys - queries :, None]
    return allowed | (own & ~allowed.any(-1, keepdim=True))


PASS_COST_IN_TOKENS = {"cpu": 100.0}
"""What one pass of the layer stack costs beyond its tokens (dispatch, small kernels), in
tokens, and what copying one key/value history entry per level costs (`HISTORY_COST`): fitted
on the tiny policy on a 2-core CPU (benchmarks/README.md, "Dense or tree"). Other devices are
taken to be like CUDA, where a launch costs far more than a token (not measured)."""
PASS_COST_DEFAULT = 4096.0
HISTORY_COST = 0.1


@dataclass(frozen=True)
class _TreePlan:
    """The prefix tree of M members' rows: per completion position j < T - 1 its level's
    distinct (parent, real, token) nodes [M, N_j] and each row's node [M, B]."""

    levels: list[tuple[Tensor, Tensor, Tensor]]
    nodes: list[Tensor]

    def cost(self, rows: MemberRows, per_pass: float) -> float:
        """Estimated cost in tokens: one pass per level, every node once, and each level's
        copy of its nodes' key/value history."""
        m, n, p = rows.prompts.ids.shape
        cost = per_pass + m * n * p
        for j, (parent, _, _) in enumerate(self.levels):
            width = parent.numel()
            cost += per_pass + width + HISTORY_COST * width * (p + j + 1)
        return cost


def _dense_cost(rows: MemberRows, per_pass: float) -> float:
    """Estimated cost in tokens of one block over every row's whole sequence."""
    m, b, t = rows.ids.shape
    return per_pass + m * b * (rows.prompts.ids.shape[-1] + t - 1)


@dataclass
class _Level:
    """The last level run: per node (M * N rows), its keys and values per layer
    [M * N, nh, L, hd] (its whole history), which of them are real [M * N, L], how many real
    tokens its prefix holds [M * N], and its hidden state before ``ln_f`` [M, N, H]."""

    kv: list[tuple[Tensor, Tensor]]
    visible: Tensor
    count: Tensor
    x: Tensor

    @property
    def width(self) -> int:
        return self.x.shape[1]


def _distinct(
    parent: Tensor, real: Tensor, tokens: Tensor, n_parents: int, vocab: int, pad_id: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each member's distinct (parent, real, token) triples of its B rows, padded to [M, N].

    Returns:
        (parent [M, N], real [M, N] bool, tokens [M, N], node [M, B]) with row (m, b)'s triple
        at node ``node[m, b]`` of member m; padding nodes read parent 0 with token ``pad_id``.
    """
    m = parent.shape[0]
    member = torch.arange(m, device=parent.device)[:, None]
    code = ((member * n_parents + parent) * 2 + real.long()) * vocab + tokens
    unique, inverse = torch.unique(code.flatten(), return_inverse=True)
    owner = unique // (n_parents * 2 * vocab)
    counts = torch.bincount(owner, minlength=m)
    slot = torch.arange(unique.shape[0], device=parent.device) - (counts.cumsum(0) - counts)[owner]
    width = int(counts.max())
    out_parent = torch.zeros(m, width, dtype=torch.long, device=parent.device)
    out_real = torch.zeros(m, width, dtype=torch.bool, device=parent.device)
    out_tokens = torch.full((m, width), pad_id, dtype=torch.long, device=parent.device)
    out_parent[owner, slot] = (unique // (2 * vocab)) % n_parents
    out_real[owner, slot] = (unique // vocab) % 2 == 1
    out_tokens[owner, slot] = unique % vocab
    return out_parent, out_real, out_tokens, slot[inverse].view(parent.shape)


class StackedGPT2:
    """The `Forward` of a plain GPT-2 (`supports`) for M members; the reference is a frozen
    copy of its weights (None: no reference yet, e.g. while the warm start trains).
    ``stacks``: the caller's calls stack several weight sets (see `_norm`)."""

    def __init__(self, lm: nn.Module, reference: nn.Module | None, stacks: bool = False) -> None:
        cfg = lm.config
        # With ``stacks`` (an engine whose calls stack several weight sets) every call, M = 1
        # included, computes LayerNorm's affine outside the fused kernel, as a stacked call
        # must: at its warm start a member then scores, in the same layout, bit for bit what
        # its reference (M = 1) scores, not a rounding away (which the KL term would turn
        # into a gradient and Adam into a step). Without it (every call M = 1, a lone run)
        # the fused kernel is used: a fifth faster per tiny GRPO step on CPU.
        self.stacks = stacks
        self.n_layer, self.n_head = cfg.n_layer, cfg.n_head
        self.eps, self.gelu = cfg.layer_norm_epsilon, GELU_APPROXIMATE[cfg.activation_function]
        self.vocab, self.width = cfg.vocab_size, cfg.n_embd
        self.dense: bool | None = None  # None: per call, whichever is estimated cheaper
        self.pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        self.reference = (
            None
            if reference is None
            else {n: p.detach()[None] for n, p in reference.named_parameters()}
        )

    # ---- weights and building blocks --------------------------------------------------
    def _stack(self, weights: Sequence[Weights] | None) -> Stacked:
        """Stacked [M, ...] weights of the members (the reference's, M = 1, for None)."""
        if weights is None:
            if self.reference is None:
                raise RuntimeError("no reference policy: call policy.freeze_reference() first")
            return self.reference
        if isinstance(weights, BankRows):
            return weights.stacked()
        names = [n for n in weights[0] if n not in VALUE_KEYS]
        if len(weights) == 1:
            return {n: weights[0][n][None] for n in names}
        return {n: torch.stack([w[n] for w in weights]) for n in names}

    def _norm(self, x: Tensor, w: Stacked, name: str) -> Tensor:
        """LayerNorm of x [M, R, ..., H] with member m's ``name`` weight and bias [M, H]: the
        fused kernel for M = 1 unless ``stacks``; one formula for every M otherwise."""
        weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
        if weight.shape[0] == 1 and not self.stacks:
            return F.layer_norm(x, x.shape[-1:], weight[0], bias[0], self.eps)
        shape = (weight.shape[0],) + (1,) * (x.dim() - 2) + (weight.shape[-1],)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * weight.view(shape) + bias.view(shape)

    @staticmethod
    def _linear(x: Tensor, w: Stacked, name: str) -> Tensor:
        """transformers ``Conv1D`` per member: x [M, ..., I] @ W [M, I, O] + b [M, O]."""
        weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        return torch.baddbmm(bias[:, None], flat, weight).view(*x.shape[:-1], -1)

    def _embed(self, w: Stacked, ids: Tensor, positions: Tensor) -> Tensor:
        """wte[m][ids] + wpe[m][positions] for ids, positions [M, ...]."""
        wte, wpe = w["transformer.wte.weight"], w["transformer.wpe.weight"]
        if wte.shape[0] == 1:
            return F.embedding(ids, wte[0]) + F.embedding(positions, wpe[0])
        shape = (-1,) + (1,) * (ids.dim() - 1)
        member = torch.arange(ids.shape[0], device=ids.device).view(shape)
        x = F.embedding(ids + member * wte.shape[1], wte.flatten(0, 1))
        return x + F.embedding(positions + member * wpe.shape[1], wpe.flatten(0, 1))

    def _layers(
        self,
        w: Stacked,
        x: Tensor,
        attn_mask: Tensor,
        past: list[tuple[Tensor, Tensor]] | None,
        keep: int | None = None,
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Every block on L new tokens x [M, R, L, H] whose keys follow ``past`` (per layer
        [M * R, nh, L_past, hd], or None); attn_mask [M * R, 1, L, L_past + L] bool. Returns
        the output [M, R, L', H] and each layer's keys and values with the new ones appended
        (all L). L' = L, or ``keep``: the last layer then runs its queries, projection and MLP
        on the last ``keep`` positions only, all that the caller reads of the output (a
        position's output depends on the others only through their keys and values)."""
        m, r, length, width = x.shape
        kv = []
        for i in range(self.n_layer):
            block = f"transformer.h.{i}"
            qkv = self._linear(self._norm(x, w, f"{block}.ln_1"), w, f"{block}.attn.c_attn")
            qkv = qkv.view(m * r, length, 3, self.n_head, width // self.n_head)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [M * R, nh, L, hd]
            if past is not None:
                k, v = torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2)
            kv.append((k, v))
            if keep is not None and keep < length and i == self.n_layer - 1:
                q, attn_mask, x, length = (
                    q[:, :, -keep:],
                    attn_mask[:, :, -keep:],
                    x[:, :, -keep:],
                    keep,
                )
            attn = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, scale=q.shape[-1] ** -0.5
            )
            attn = attn.transpose(1, 2).reshape(m, r, length, width)
            x = x + self._linear(attn, w, f"{block}.attn.c_proj")
            h = self._linear(self._norm(x, w, f"{block}.ln_2"), w, f"{block}.mlp.c_fc")
            x = x + self._linear(F.gelu(h, approximate=self.gelu), w, f"{block}.mlp.c_proj")
        return x, kv

    def _head(self, w: Stacked, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits [M, K, V], final hidden ``ln_f(x)`` [M, K, H]) of states x [M, K, H]."""
        hidden = self._norm(x, w, "transformer.ln_f")
        head = w.get("lm_head.weight", w["transformer.wte.weight"])  # [M, V, H]
        return torch.bmm(hidden, head.transpose(1, 2)), hidden

    # ---- the prefix tree ----------------------------------------------------------------
    def _block(
        self, w: Stacked, ids: Tensor, mask: Tensor, keep: int
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Run sequences ids [M, R, L] (``mask`` bool: real tokens) as one causal block: the
        output of the last ``keep`` positions [M, R, keep, H] and each layer's keys and
        values (all L positions)."""
        m, r, length = mask.shape
        tril = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
        attn_mask = or_self(tril & mask.view(m * r, 1, length))[:, None]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return self._layers(w, self._embed(w, ids, positions), attn_mask, None, keep)

    def _prompts(self, w: Stacked, prompts: MemberPrompts) -> _Level:
        """Run each member's distinct prompts [M, N, P] as one block."""
        mask = prompts.mask.bool()
        m, n, length = mask.shape
        x, kv = self._block(w, prompts.ids, mask, keep=1)
        return _Level(kv, mask.view(m * n, length), mask.long().sum(-1).flatten(), x[:, :, -1])

    def _extend(
        self, w: Stacked, level: _Level, parent: Tensor, real: Tensor, tokens: Tensor
    ) -> _Level:
        """Run one level of nodes [M, N] (parents index the previous level's nodes)."""
        m, n = tokens.shape
        member = torch.arange(m, device=tokens.device)[:, None]
        flat = (member * level.width + parent).flatten()
        visible = torch.cat([level.visible.index_select(0, flat), real.view(-1, 1)], 1)
        count = level.count.index_select(0, flat) + real.flatten().long()
        attn_mask = or_self(visible[:, None, :])[:, None]  # [M * N, 1, 1, L]
        past = [(k.index_select(0, flat), v.index_select(0, flat)) for k, v in level.kv]
        positions = (count - 1).clamp(min=0).view(m, n, 1)
        x, kv = self._layers(w, self._embed(w, tokens[:, :, None], positions), attn_mask, past)
        return _Level(kv, visible, count, x[:, :, 0])

    def _plan(self, rows: MemberRows) -> _TreePlan:
        """Each member's prefix tree over its rows (index work only, no model)."""
        levels, nodes, width, node = [], [], rows.prompts.ids.shape[1], rows.prompts.rows
        for j in range(rows.ids.shape[-1] - 1):
            real = rows.mask[:, :, j].bool()
            parent, node_real, tokens, node = _distinct(
                node, real, rows.ids[:, :, j], width, self.vocab, self.pad_id
            )
            levels.append((parent, node_real, tokens))
            nodes.append(node)
            width = tokens.shape[1]
        return _TreePlan(levels, nodes)

    def _tree(self, w: Stacked, rows: MemberRows, plan: _TreePlan) -> tuple[Tensor, Tensor]:
        """Hidden states [M, K, H] of every distinct scored position, run as the prompt block
        and then one tree level per completion position 0 .. T - 2, and the state of each row's
        completion token [M, B, T] (an index into K)."""
        level = self._prompts(w, rows.prompts)
        states, index = [level.x], [rows.prompts.rows]
        offset = level.width
        for (parent, node_real, tokens), node in zip(plan.levels, plan.nodes, strict=True):
            level = self._extend(w, level, parent, node_real, tokens)
            states.append(level.x)
            index.append(node + offset)
            offset += level.width
        return torch.cat(states, 1), torch.stack(index, -1)

    def _dense(self, w: Stacked, rows: MemberRows) -> tuple[Tensor, Tensor]:
        """The same as `_tree`, computed as one block over every row's whole sequence (its
        prompt, then its completion; the state of completion token j is that of sequence
        position P - 1 + j): K = B * T, with no sharing between rows."""
        prompts = rows.prompts
        m, b, t = rows.ids.shape
        pick = rows.prompts.rows[:, :, None].expand(-1, -1, prompts.ids.shape[-1])
        # The last completion token predicts nothing scored: [M, B, P + T - 1].
        ids = torch.cat([prompts.ids.gather(1, pick), rows.ids[:, :, :-1]], -1)
        mask = torch.cat([prompts.mask.gather(1, pick), rows.mask[:, :, :-1]], -1).bool()
        x, _ = self._block(w, ids, mask, keep=t)
        states = x.reshape(m, b * t, -1)
        index = torch.arange(b * t, device=ids.device).view(1, b, t).expand(m, -1, -1)
        return states, index

    # ---- the Forward protocol -------------------------------------------------------------
    def score(
        self,
        rows: MemberRows,
        weights: Sequence[Weights] | None,
        full: bool = False,
        temperature: float = 1.0,
    ) -> TokenOutputs:
        """Per-token outputs [M, B, T] of softmax(logits / ``temperature``); completion
        positions 0 .. T - 2 run as tree levels (position T - 1 predicts nothing scored)."""
        w = self._stack(weights)
        m, b, t = rows.ids.shape
        # Rows that share no prompt share no prefix: the tree would only add passes.
        unshared = rows.prompts.ids.shape[1] >= b
        plan = None if self.dense or (unshared and self.dense is None) else self._plan(rows)
        if plan is not None and self.dense is None:
            per_pass = PASS_COST_IN_TOKENS.get(rows.ids.device.type, PASS_COST_DEFAULT)
            plan = plan if plan.cost(rows, per_pass) < _dense_cost(rows, per_pass) else None
        states, index = self._dense(w, rows) if plan is None else self._tree(w, rows, plan)
        logits, hidden = self._head(w, states)  # [M, K, V], [M, K, H]
        if temperature != 1.0:
            logits = logits / temperature
        k = logits.shape[1]
        member = torch.arange(m, device=logits.device)[:, None, None]
        flat_index = (index + member * k).view(m * b, t)
        ids, mask = rows.ids.reshape(m * b, t), rows.mask.reshape(m * b, t)
        logp, entropy = token_logprobs(logits.flatten(0, 1), flat_index, ids, mask)
        values = log_dist = None
        heads = value_head_of(weights or [], self.width, logits.device)
        if heads is not None:
            per_node = torch.einsum("mkh,mh->mk", hidden, heads[0]) + heads[1][:, None]
            values = per_node.flatten().index_select(0, flat_index.flatten()).view(m, b, t)
            values = torch.where(rows.mask.bool(), values, torch.zeros_like(values))
        if full:
            dist = F.log_softmax(logits.float(), -1).flatten(0, 1)
            log_dist = dist.index_select(0, flat_index.flatten()).view(m, b, t, -1)
        return TokenOutputs(logp.view(m, b, t), entropy.view(m, b, t), values, log_dist)

    def decoder(self, prompts: MemberPrompts, weights: Sequence[Weights] | None) -> _TreeDecoder:
        return _TreeDecoder(self, self._stack(weights), prompts)


class _TreeDecoder:
    """Incremental decoding over the prefix tree: each step runs each member's distinct
    (prefix, token) pairs once and hands every row its node's next-token logits."""

    def __init__(self, model: StackedGPT2, w: Stacked, prompts: MemberPrompts) -> None:
        self.model, self.w, self.prompts = model, w, prompts
        self.node = prompts.rows  # [M, B]: each row's node in the last level
        self.level: _Level | None = None

    def _logits(self) -> Tensor:
        assert self.level is not None
        logits, _ = self.model._head(self.w, self.level.x)  # [M, N, V]
        index = self.node[:, :, None].expand(-1, -1, logits.shape[-1])
        return logits.gather(1, index).float()

    def prefill(self) -> Tensor:
        self.level = self.model._prompts(self.w, self.prompts)
        return self._logits()

    def step(self, tokens: Tensor, active: Tensor) -> Tensor:
        assert self.level is not None, "call prefill first"
        model = self.model
        parent, real, new_tokens, self.node = _distinct(
            self.node, active, tokens, self.level.width, model.vocab, model.pad_id
        )
        self.level = model._extend(self.w, self.level, parent, real, new_tokens)
        return self._logits()
