"""Counter-based random numbers: a uniform is a pure function of (key, row, position).

A sampler that draws token ``position`` of row ``row`` with ``uniforms(key, ...)`` draws the
same number whatever else is sampled beside it: alone or as one member of a population, in any
order, on any device. Members that share a key (the same seed and step) therefore see the same
random numbers: common random numbers, which make paired comparisons of objectives sharper.

The mixing function is Chris Wellons' ``lowbias32`` integer hash on 32-bit lanes held in int64
tensors (every product is split into 16-bit halves so nothing overflows int64); a uniform keeps
its hash's top 24 bits: ``u = (h >> 8) * 2**-24`` in [0, 1), the resolution of float32.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2**32`` for x in [0, 2**32) and a 32-bit constant c, without int64 overflow."""
    high = (((x >> 16) * c) & 0xFFFF) << 16
    return (high + (x & 0xFFFF) * c) & MASK32


def _mix(x: Tensor) -> Tensor:
    """lowbias32: a bijective avalanche hash of 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def stream_key(*parts: int | str) -> int:
    """A 32-bit key naming one random stream, e.g. ``stream_key(seed, step, "sample")``."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def uniforms(keys: Tensor, rows: int, position: int) -> Tensor:
    """[M, rows] float32 uniforms in [0, 1): entry (m, r) is a function of (keys[m], r, position).

    Args:
        keys: [M] int64 stream keys (`stream_key`), on the device the numbers are wanted on.
        rows: how many rows to draw for.
        position: the draw's index along the row (a decode step, a pass).
    """
    row = torch.arange(rows, device=keys.device, dtype=torch.int64)
    # position + 1: lowbias32 maps 0 to 0, so position 0 would give key 0's row 0 u = 0.
    at = _mix(torch.tensor(((position + 1) * _GOLDEN) & MASK32, device=keys.device))
    h = _mix(_mix(keys[:, None] ^ at) ^ row[None, :])
    return (h >> 8).to(torch.float32) * 2.0**-24


def permutation(key: int, n: int, position: int = 0, device: torch.device | None = None) -> Tensor:
    """[n] long: a random permutation of ``range(n)`` fixed by (key, position)."""
    keys = torch.tensor([key], dtype=torch.int64, device=device)
    return torch.argsort(uniforms(keys, n, position)[0], stable=True)
