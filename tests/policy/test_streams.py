"""Counter-based uniforms (`grape_evo.policy.streams`): a pure function of (key, row, position),
in [0, 1), uniform and independent across rows, positions and keys; `permutation` is one.

Statistical bounds are set so that a correct generator fails with probability < 1e-3 per check
(and the checks are deterministic, so a pass is a pass forever).
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from grape_evo.policy.streams import MASK32, _mix, _mul32, permutation, stream_key, uniforms

KEYS = [stream_key(0, step, "sample") for step in range(4)]


def _ks_statistic(u: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance sup |F_n(x) - x| of a sample from U[0, 1)."""
    x = u.double().flatten().sort().values
    n = x.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - x, x - (i - 1) / n).max())


def _ks_critical(n: int, alpha: float = 1e-3) -> float:
    """Asymptotic critical value of the KS statistic: sqrt(-ln(alpha / 2) / 2) / sqrt(n)
    (1.9495 / sqrt(n) at alpha = 0.001)."""
    return math.sqrt(-math.log(alpha / 2) / 2) / math.sqrt(n)


def _chi2_critical(df: int, z: float = 3.0902) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile with ``df`` degrees of freedom
    at the standard normal quantile z (3.0902: the 99.9% quantile)."""
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def _pairs_chi2(a: torch.Tensor, b: torch.Tensor, bins: int = 10) -> float:
    """Pearson chi-square of the pairs (a, b) over a bins x bins grid against the uniform
    distribution on the unit square (what independent uniforms give)."""
    cell = (a * bins).long() * bins + (b * bins).long()
    counts = torch.bincount(cell.flatten(), minlength=bins * bins).double()
    expected = a.numel() / bins**2
    return float(((counts - expected) ** 2 / expected).sum())


def _draws(keys: list[int], rows: int, positions: int) -> torch.Tensor:
    """[K, positions, rows] uniforms."""
    tensor = torch.tensor(keys, dtype=torch.int64)
    return torch.stack([uniforms(tensor, rows, p) for p in range(positions)], 1)


def _lowbias32(x: int) -> int:
    """Chris Wellons' lowbias32 in Python integers."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


# ---------------------------------------------------------------------- arithmetic


EDGES = [0, 1, 2, 0xFFFF, 0x10000, 0x10001, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]


@pytest.mark.parametrize("c", [0, 1, 0x7FEB352D, 0x846CA68B, 0x9E3779B9, 2**32 - 1])
def test_mul32_is_product_mod_2_32(c: int) -> None:
    rng = random.Random(c)
    xs = EDGES + [rng.randrange(2**32) for _ in range(200)]
    got = _mul32(torch.tensor(xs, dtype=torch.int64), c).tolist()
    assert got == [(x * c) % 2**32 for x in xs]


def test_mix_is_lowbias32_and_injective() -> None:
    rng = random.Random(1)
    xs = EDGES + [rng.randrange(2**32) for _ in range(200)]
    assert _mix(torch.tensor(xs, dtype=torch.int64)).tolist() == [_lowbias32(x) for x in xs]
    inputs = torch.randperm(2**22, generator=torch.Generator().manual_seed(0))[: 2**18] * 1021
    outputs = _mix(inputs)
    assert bool(((outputs >= 0) & (outputs <= MASK32)).all())
    assert outputs.unique().numel() == inputs.numel()  # a bijection has no collisions


def test_stream_key_is_a_deterministic_32_bit_name() -> None:
    keys = [stream_key(seed, step, "sample") for seed in range(3) for step in range(50)]
    assert all(0 <= k < 2**32 for k in keys)
    assert len(set(keys)) == len(keys)
    assert stream_key(2, 7, "sample") == stream_key(2, 7, "sample")
    assert stream_key(2, 7, "sample") != stream_key(2, 7, "eval")


# ---------------------------------------------------------------------- uniforms


def test_uniforms_are_a_function_of_key_row_position() -> None:
    keys = torch.tensor(KEYS, dtype=torch.int64)
    a = uniforms(keys, 500, 3)
    assert a.shape == (4, 500) and a.dtype == torch.float32
    assert torch.equal(a, uniforms(keys, 500, 3))
    # Neither the number of rows nor the other keys beside it change an entry.
    assert torch.equal(uniforms(keys, 7, 3), a[:, :7])
    assert torch.equal(uniforms(keys[2:3], 500, 3)[0], a[2])
    assert torch.equal(uniforms(keys.flip(0), 500, 3), a.flip(0))
    assert not torch.equal(uniforms(keys, 500, 4), a)  # another position, other numbers


def test_uniforms_in_unit_interval_on_a_24_bit_grid() -> None:
    u = _draws(KEYS, 2000, 25)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    scaled = u.double() * 2**24
    assert torch.equal(scaled, scaled.floor())  # u = k / 2**24 with an integer k


@pytest.mark.parametrize(
    ("keys", "rows", "positions"),
    [
        (KEYS, 1000, 25),  # 4 named streams x 1000 rows x 25 positions
        (list(range(100)), 1000, 1),  # consecutive integer keys, one position
        ([KEYS[0]], 100, 1000),  # one stream along 1000 positions
    ],
)
def test_uniforms_pass_kolmogorov_smirnov(keys: list[int], rows: int, positions: int) -> None:
    u = _draws(keys, rows, positions)
    assert u.numel() == 100_000
    assert _ks_statistic(u) < _ks_critical(u.numel())


def test_adjacent_rows_positions_and_keys_are_uncorrelated() -> None:
    """Pearson correlations of 100k pairs of independent uniforms are ~N(0, 1/n): |r| < 5 /
    sqrt(n) fails with probability 6e-7. Pairs of adjacent cells are also jointly uniform on a
    10 x 10 grid (chi-square below its 99.9% quantile, 148.2 at 99 degrees of freedom)."""
    u = _draws(list(range(1000)), 101, 2)  # [keys, positions, rows]
    pairs = {
        "rows": (u[:, :, :-1], u[:, :, 1:]),
        "positions": (u[:, 0], u[:, 1]),
        "keys": (u[:-1], u[1:]),
    }
    for name, (a, b) in pairs.items():
        a, b = a.double().flatten(), b.double().flatten()
        n = a.numel()
        assert n >= 100_000, name
        r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert abs(r) < 5 / math.sqrt(n), (name, r)
        assert _pairs_chi2(a, b) < _chi2_critical(99), name


def test_differences_within_a_stream_are_uniform() -> None:
    """Along one stream (100k rows of one key) and across consecutive keys, ``(u[i+1] - u[i])
    mod 1`` and ``(u[i+2] - 2 u[i+1] + u[i]) mod 1`` are uniform (an independent uniform plus
    anything independent of it, mod 1, is uniform); a lattice such as ``u[i] = i * d mod 1``
    would concentrate them on one value."""
    streams = {
        "rows": uniforms(torch.tensor([KEYS[1]]), 100_002, 2)[0],
        "keys": uniforms(torch.arange(100_002), 1, 0)[:, 0],
    }
    for name, u in streams.items():
        u = u.double()
        for diff in ((u[1:-1] - u[:-2]) % 1, (u[2:] - 2 * u[1:-1] + u[:-2]) % 1):
            assert _ks_statistic(diff) < _ks_critical(diff.numel()), name


def test_default_key_is_not_a_fixed_point() -> None:
    """lowbias32 maps 0 to 0: the small keys callers pass (0 is `sample`'s default) must still
    draw ordinary numbers at row 0, position 0 (u = 0 would draw the lowest token id with
    nonzero probability whatever the distribution)."""
    u = uniforms(torch.arange(1024), 64, 0)
    assert float(u[0, 0]) > 0
    assert int((u == 0).sum()) == 0  # 65536 draws: 0.004 zeros expected


# ---------------------------------------------------------------------- permutation


def test_permutation_is_a_deterministic_permutation() -> None:
    for n in (1, 2, 10, 1000):
        perm = permutation(KEYS[0], n, position=3)
        assert perm.dtype == torch.long
        assert torch.equal(perm.sort().values, torch.arange(n))
        assert torch.equal(perm, permutation(KEYS[0], n, position=3))
    base = permutation(KEYS[0], 1000, position=3)
    assert not torch.equal(base, permutation(KEYS[0], 1000, position=4))
    assert not torch.equal(base, permutation(KEYS[1], 1000, position=3))


def test_permutation_first_element_is_uniform() -> None:
    """Over 1000 keys, the first element of a permutation of 10 falls on each value about 100
    times (chi-square below its 99.9% quantile at 9 degrees of freedom, 27.9)."""
    firsts = torch.stack([permutation(key, 10)[0] for key in range(1000)])
    counts = torch.bincount(firsts, minlength=10).double()
    chi2 = float(((counts - 100) ** 2 / 100).sum())
    assert chi2 < _chi2_critical(9)
