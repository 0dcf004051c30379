"""Members' weights: one weight set (`Weights`), and every weight set of an engine stacked in
one bank (`WeightBank`).

A bank holds one leaf tensor [K, ...] per parameter name for its K weight sets (an engine's
members' policies and their separate critics), and a value-head leaf for the sets that have
one. A forward call reads its weight sets as rows of the bank (`WeightBank.rows`): the leaf
itself when the call takes every row in order, else one ``index_select`` per name, so a call
stacks no per-set tensors and its backward leaves one gradient [K, ...] per name.

Each set is also a dict of its own leaves (`WeightBank.sets`) that alias its rows: Adam,
gradient clipping, TRPO's step and exports work per set on those, and a set's gradients are
views of the bank's (`WeightBank.bind_grads`), so a step computes the same numbers as per-set
leaves stacked in each call (tested bit for bit). Updates to a set's leaves must be in place
(``copy_``, Adam's); rebinding ``.data`` would break the alias.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import torch
from torch import Tensor, nn

Weights = dict[str, Tensor]
"""One member's trainable tensors by parameter name (views of leaf tensors, so gradients reach
them)."""

VALUE_KEYS = ("value_head.weight", "value_head.bias")


class WeightBank:
    """K weight sets of one architecture stacked by name (see the module docstring). The sets
    must have the same tensor names but `VALUE_KEYS`, which any of them may have; the bank
    copies them (the originals are never changed)."""

    def __init__(self, sets: Sequence[Weights]) -> None:
        if not sets:
            raise ValueError("a weight bank needs at least one weight set")
        names = [n for n in sets[0] if n not in VALUE_KEYS]
        for k, weights in enumerate(sets):
            own = [n for n in weights if n not in VALUE_KEYS]
            if sorted(own) != sorted(names):
                raise ValueError(f"weight set {k} has other tensors than weight set 0")
        self.size = len(sets)
        self.lm = {n: torch.stack([w[n].detach() for w in sets]).requires_grad_() for n in names}
        with_head = [k for k, w in enumerate(sets) if VALUE_KEYS[0] in w]
        self.head_row = {k: j for j, k in enumerate(with_head)}
        self.head = {
            n: torch.stack([sets[k][n].detach() for k in with_head]).requires_grad_()
            for n in (VALUE_KEYS if with_head else ())
        }
        self.sets: list[dict[str, nn.Parameter]] = [
            {n: nn.Parameter(self._row(n, k)) for n in weights} for k, weights in enumerate(sets)
        ]
        for leaf in self._leaves():
            leaf.grad = torch.zeros_like(leaf)
        self._bound = [False] * self.size

    def _row(self, name: str, k: int) -> Tensor:
        """Set k's ``name`` as a view of the bank's storage."""
        if name in VALUE_KEYS:
            return self.head[name].detach()[self.head_row[k]]
        return self.lm[name].detach()[k]

    def _leaves(self) -> list[Tensor]:
        return [*self.lm.values(), *self.head.values()]

    def rows(self, sets: Sequence[int]) -> BankRows:
        """Weight sets ``sets`` (indices into `sets`, in call order, repeats allowed) as one
        call's weights."""
        return BankRows(self, tuple(sets))

    def bind_grads(self, active: Iterable[int]) -> None:
        """Zero the bank's gradients and make them the gradients of the ``active`` sets' leaves
        (views of their rows); every other set's leaves get no gradient (None), so Adam skips
        them."""
        torch._foreach_zero_([leaf.grad for leaf in self._leaves()])
        wanted = set(active)
        for k, weights in enumerate(self.sets):
            if (k in wanted) == self._bound[k]:
                continue
            for name, p in weights.items():
                p.grad = self._grad_row(name, k) if k in wanted else None
            self._bound[k] = k in wanted

    def _grad_row(self, name: str, k: int) -> Tensor:
        if name in VALUE_KEYS:
            return self.head[name].grad[self.head_row[k]]
        return self.lm[name].grad[k]


class BankRows(Sequence[Weights]):
    """Some of a bank's weight sets, in a call's order: a sequence of each set's own leaves
    (for a forward that runs them one by one), or `stacked` and `value_heads` at once."""

    def __init__(self, bank: WeightBank, sets: tuple[int, ...]) -> None:
        self.bank, self.indices = bank, sets
        self._every = sets == tuple(range(bank.size))

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, j: int) -> Weights: ...
    @overload
    def __getitem__(self, j: slice) -> list[Weights]: ...
    def __getitem__(self, j: int | slice) -> Weights | list[Weights]:
        if isinstance(j, slice):
            return [self.bank.sets[k] for k in self.indices[j]]
        return self.bank.sets[self.indices[j]]

    def __iter__(self) -> Iterator[Weights]:
        return (self.bank.sets[k] for k in self.indices)

    def stacked(self) -> dict[str, Tensor]:
        """Every tensor but the value head, stacked over the sets: name -> [M, ...]."""
        leaves = self.bank.lm
        if self._every:
            return dict(leaves)
        index = torch.tensor(self.indices, device=next(iter(leaves.values())).device)
        return {n: leaf.index_select(0, index) for n, leaf in leaves.items()}

    def value_heads(self, width: int) -> tuple[Tensor, Tensor] | None:
        """Value heads (weight [M, H], bias [M]), zeros for a set without one; None when none
        of the sets has one."""
        bank = self.bank
        rows = [bank.head_row.get(k) for k in self.indices]
        if all(r is None for r in rows):
            return None
        weight, bias = (bank.head[n] for n in VALUE_KEYS)
        if None in rows:  # row 0 of a zero-padded copy stands for "no head"
            weight = torch.cat([torch.zeros_like(weight[:1]), weight])
            bias = torch.cat([torch.zeros_like(bias[:1]), bias])
            rows = [0 if r is None else r + 1 for r in rows]
        if rows != list(range(weight.shape[0])):
            index = torch.tensor(rows, device=weight.device)
            weight, bias = weight.index_select(0, index), bias.index_select(0, index)
        return weight.reshape(len(rows), width), bias.reshape(len(rows))
