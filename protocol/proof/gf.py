"""Arithmetic over GF(65497), vectorised over a batch of polynomials: the maths of proofs.

Collaborators: `toploc.py` interpolates one polynomial per chunk of hidden states
(`interpolate`) and evaluates proofs at the verifier's own top-k indices (`evaluate`).

Why our own code: TOPLOC ships a C++ extension (one chunk at a time, Newton form, and it
does not build against recent torch without a source build); the reference Python path is
a loop of Python ints. Here every step works on a whole batch of chunks at once with numpy:

- interpolation is Lagrange in the monomial basis. With M(z) = prod_i (z - x_i) and
  weights w_i = y_i / M'(x_i), the interpolant is sum_i w_i M(z)/(z - x_i), and the
  coefficient of z^j in M(z)/(z - x_i) is sum_s m_{j+1+s} x_i^s. So: M'(x_i) is an
  evaluation of M', v_s = sum_i w_i x_i^s is a power sum, and c_j = sum_s v_s m_{j+1+s} is
  a Hankel product, i.e. one convolution (`convolve`). Evaluations and power sums use baby-step/giant-step powers
  (x^s = (x^b)^a * x^r with b ~ sqrt(k)), so they are small batched matrix products instead
  of a (k, k) power matrix per chunk; the powers are rows of a table cached per point range; M(z) itself is a few vector steps per group of
  points, then a product tree of convolutions.
- convolutions of up to 512 terms go through a float64 FFT and are rounded: its error
  bound stays far below 1/2 there (see FFT_MAX_LEN), so the result is still exact.
- all arithmetic is float64 holding exact integers: products of residues are < 2**32 and
  sums of up to 4096 of them stay below 2**44, well inside 2**50, where a division-free
  reduction (`_reduce`) is exact. (int64 `%` is several times slower here.)
- inverses are lookups in a 65,497-entry table built once per process from discrete logs
  (generator 7) and read-only afterwards (faster than a**(P-2) by 16 squarings).

Invariants: every array holds canonical residues in [0, P); the points of one polynomial
are distinct (the caller reduces them by an injective modulus first).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

P = 65497  # the prime of TOPLOC's field
_INV_P = 1.0 / P


def _reduce(a: np.ndarray) -> np.ndarray:
    """a mod P in place, for float64 arrays of non-negative integers below 2**50.

    Division-free: q = floor((a + 0.5) / P) is exact there because the +0.5 keeps every
    a/P at least 0.5/P (7.6e-6) away from an integer boundary, while the float64 error of
    (a + 0.5) * (1/P) stays below 4e-6 for a < 2**50."""
    q = a + 0.5
    q *= _INV_P
    np.floor(q, out=q)
    q *= P
    a -= q
    return a


GENERATOR = 7  # a generator of the multiplicative group of GF(65497) (order 65496 = 2^3 * 3 * 2729)


@functools.cache
def _tables() -> tuple[np.ndarray, np.ndarray]:
    """(EXP, LOG): EXP[e] = 7**e mod P for e < P-1, LOG[EXP[e]] = e (LOG[0] unused). Built
    once per process by doubling (17 vector steps, ~1 ms) and never written again."""
    exp = np.empty(P - 1, dtype=np.int64)
    exp[0] = 1
    h, gh = 1, GENERATOR
    while h < P - 1:
        m = min(h, P - 1 - h)
        exp[h : h + m] = (exp[:m] * gh) % P
        gh = gh * gh % P
        h *= 2
    log = np.zeros(P, dtype=np.int64)
    log[exp] = np.arange(P - 1, dtype=np.int64)
    exp.flags.writeable = False
    log.flags.writeable = False
    return exp, log


def _residues(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.int64) % P).astype(np.float64)


def powers(x: np.ndarray, n: int) -> np.ndarray:
    """x**s mod P for s in [0, n) as float64: shape x.shape + (n,). Built by doubling along
    a leading axis (contiguous blocks): exponents [h, 2h) are [0, h) times x**h."""
    xr = _residues(x)
    out = np.empty((n,) + xr.shape, dtype=np.float64)
    if n:
        out[0] = 1.0
    h, xh = 1, xr
    while h < n:
        m = min(h, n - h)
        block = out[h : h + m]
        np.multiply(out[:m], xh, out=block)
        _reduce(block)
        xh = _reduce(xh * xh)
        h *= 2
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


@functools.cache
def _inverse_table() -> np.ndarray:
    """INV[a] = a**-1 mod P for 0 < a < P (INV[0] = 0, unused), float64, read-only."""
    exp, log = _tables()
    inv = exp[(P - 1 - log) % (P - 1)].astype(np.float64)
    inv[0] = 0.0
    inv.flags.writeable = False
    return inv


def inverse(a: np.ndarray) -> np.ndarray:
    """The inverse mod P of every non-zero residue in `a`, as float64 (one table lookup)."""
    ai = np.asarray(a).astype(np.int64)
    if ai.size and (ai.min() < 0 or ai.max() >= P):
        ai %= P
    return np.take(_inverse_table(), ai)


def _poly_mul_direct(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Products of polynomial pairs (..., L) x (..., L) -> (..., 2L-1), coefficients ascending:
    out[t] = sum_u a[L-1-u] * b[t+u-(L-1)], a sliding window over zero-padded b."""
    L = a.shape[-1]
    padded = np.zeros(b.shape[:-1] + (3 * L - 2,), dtype=np.float64)
    padded[..., L - 1 : 2 * L - 1] = b
    windows = sliding_window_view(padded, L, axis=-1)  # [..., t, u] = padded[t + u]
    return _reduce(np.einsum("...tu,...u->...t", windows, a[..., ::-1]))


# Longest operand convolved by FFT. A float64 FFT product of residues (< P) of length L has
# an error below ||a||_2 ||b||_2 * 3 log2(N) * 5 eps (N the FFT size: the classic bound,
# e.g. Percival 2003), at most L * P**2 * 3 log2(N) * 5 eps: 0.03 for L = 512, N = 1024,
# so rounding gives the exact integers with a wide margin. Longer operands take the direct
# path (sliding windows), which is exact by construction.
FFT_MAX_LEN = 512
# Equal-length operands up to this length are multiplied directly: for the small products at
# the leaves of `master_poly` the sliding-window product is cheaper than three FFTs.
DIRECT_MAX_LEN = 17


def convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Linear convolutions mod P of residue vectors along the last axis (broadcast over the
    leading ones): (..., La) x (..., Lb) -> (..., La+Lb-1) float64 residues."""
    La, Lb = a.shape[-1], b.shape[-1]
    n = La + Lb - 1
    if max(La, Lb) > FFT_MAX_LEN or (La == Lb and La <= DIRECT_MAX_LEN):
        L = max(La, Lb)
        pa = np.zeros(a.shape[:-1] + (L,))
        pa[..., :La] = a
        pb = np.zeros(b.shape[:-1] + (L,))
        pb[..., :Lb] = b
        return _poly_mul_direct(pa, pb)[..., :n]
    N = 1 << (n - 1).bit_length()
    r = np.fft.irfft(np.fft.rfft(a, N) * np.fft.rfft(b, N), N)[..., :n]
    np.rint(r, out=r)
    return _reduce(r)


def master_poly(x: np.ndarray, group: int = 8) -> np.ndarray:
    """Coefficients (ascending, length k+1, float64) of prod_i (z - x_i) for each row of
    x (C, k). The points are split into groups of `group`: each group's product takes
    `group` vector steps (all groups and rows at once), then the group products are
    multiplied pairwise in a tree (padding points contribute the constant 1)."""
    xr = _residues(x)
    C, k = xr.shape
    n_groups = 1
    while n_groups * group < k:
        n_groups *= 2
    pad = n_groups * group - k
    scale = np.concatenate([(P - xr) % P, np.ones((C, pad))], axis=1).reshape(C, n_groups, group)
    shift = np.concatenate([np.ones((C, k)), np.zeros((C, pad))], axis=1).reshape(C, n_groups, group)
    m = np.zeros((C, n_groups, group + 1), dtype=np.float64)
    m[..., 0] = 1.0
    for i in range(group):  # multiply by (z - x_i), or by 1 for a padding point
        new = m * scale[..., i : i + 1]
        new[..., 1:] += m[..., :-1] if not pad else m[..., :-1] * shift[..., i : i + 1]
        # residues < 2**16: one unreduced step stays < 2**33, the next < 2**50 (still exact)
        m = _reduce(new) if i % 2 or i == group - 1 else new
    while m.shape[1] > 1:
        m = convolve(m[:, 0::2], m[:, 1::2])
    return m[:, 0, : k + 1]


def _split(n: int) -> tuple[int, int]:
    """Baby-step size b and giant-step count g with b * g >= n (b ~ sqrt(n))."""
    b = max(1, math.isqrt(max(n - 1, 0)) + 1)
    return b, -(-n // b)


# Baby/giant powers come from a cached table with one row per possible point, sized to the
# largest point in use rounded up to this step (capped at P): a chunk of 32 tokens x H = 128
# has its indices below 4,096, so its table is 4,096 rows (~0.7 MB); a row gather is ~7x
# cheaper than the doubling steps of `powers` on the points themselves.
_TABLE_ROUNDING = 4096


@functools.lru_cache(maxsize=8)
def _power_table(limit: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(baby (limit, b), giant (limit, g)) powers of every point 0 <= x < limit for
    polynomials of n coefficients. Read-only; a few hundred KB for limit 4096, n 128."""
    b, g = _split(n)
    x = np.arange(limit, dtype=np.int64)
    baby = powers(x, b + 1)
    giant = powers(baby[:, b], g)
    baby = np.ascontiguousarray(baby[:, :b])
    baby.flags.writeable = False
    giant.flags.writeable = False
    return baby, giant


def _bases(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """x**r for r < b and (x**b)**a for a < g: every x**s (s < n) is one product of the two.
    Costs O(sqrt(n)) per point instead of a full (k, n) power matrix; rows of a cached
    table (`_power_table`) for the point range in use."""
    b, g = _split(n)
    xi = np.asarray(x, dtype=np.int64)
    if xi.size and (xi.min() < 0 or xi.max() >= P):
        xi = xi % P
    top = int(xi.max()) + 1 if xi.size else 1
    limit = min(P, -(-top // _TABLE_ROUNDING) * _TABLE_ROUNDING)
    baby_tab, giant_tab = _power_table(limit, n)
    return np.take(baby_tab, xi, axis=0), np.take(giant_tab, xi, axis=0), b, g  # take: ~2x fancy indexing


def evaluate_residues(coeffs: np.ndarray, x: np.ndarray, bases=None) -> np.ndarray:
    """sum_s coeffs[c, s] * x[c, i]**s mod P as float64 (C, n); coeffs (C, K) residues.
    `bases`: `_bases(x, K)` when the caller already has them."""
    C, K = coeffs.shape
    baby, giant, b, g = bases or _bases(x, K)
    padded = np.zeros((C, b * g), dtype=np.float64)
    padded[:, :K] = coeffs
    blocks = padded.reshape(C, g, b)                                   # [a, r] = c_{a*b+r}
    inner = _reduce(np.matmul(baby, blocks.transpose(0, 2, 1)))        # sum over r: (C, n, g)
    return _reduce(np.einsum("cna,cna->cn", inner, giant))              # sum over a


def power_sums(w: np.ndarray, x: np.ndarray, K: int, bases=None) -> np.ndarray:
    """v[c, s] = sum_i w[c, i] * x[c, i]**s mod P for s < K, as float64 (C, K)."""
    C = w.shape[0]
    baby, giant, b, g = bases or _bases(x, K)
    wg = _reduce(w[:, :, None] * giant)                                 # w_i x_i^(a*b)
    v = _reduce(np.matmul(wg.transpose(0, 2, 1), baby))                # [a, r]: (C, g, b)
    return v.reshape(C, g * b)[:, :K]


def interpolate(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Monomial coefficients (C, k), ascending, int64, of the polynomials of degree < k
    through the points (x[c, i], y[c, i]). x: distinct residues per row; y: any
    non-negative ints (reduced mod P here)."""
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError("x and y must be (C, k) arrays of the same shape")
    C, k = x.shape
    if k == 0:
        return np.zeros((C, 0), dtype=np.int64)
    m = master_poly(x)                                              # (C, k+1)
    dm = _reduce(m[:, 1:] * np.arange(1, k + 1, dtype=np.float64))  # M'(z)
    bases = _bases(x, k)
    deriv = evaluate_residues(dm, x, bases)                         # M'(x_i)
    w = _reduce(_residues(y) * inverse(deriv))                      # Lagrange weights
    v = power_sums(w, x, k, bases)                                  # v_s = sum_i w_i x_i^s
    # c_j = sum_s v_s m_{j+1+s} (a Hankel product) = (reversed v * m)[j + k], one convolution
    return convolve(v[:, ::-1], m)[:, k : 2 * k].astype(np.int64)


def evaluate(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Values (C, n), int64, of the polynomials with ascending coefficients (C, K) at x (C, n)."""
    c = _residues(coeffs)
    if c.shape[1] == 0:
        return np.zeros(np.shape(x), dtype=np.int64)
    return evaluate_residues(c, np.asarray(x, dtype=np.int64)).astype(np.int64)
