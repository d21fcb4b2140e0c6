"""TOPLOC 0.1.6 proof chunks: build them from hidden states, check hidden states against them.

This is the byte-compatible core under `protocol.proof` (the versioned container lives in
`blob.py`). Collaborators: `gf.py` for the field arithmetic; workers build chunks through
`protocol.proof.build_proof`, the verifier checks them through `verify_proof`.

The TOPLOC layout, reproduced exactly (every vector of `toploc-vectors/vectors.json`):
- chunk j is rows [c*j, min(c*j + c, T)) of the (T, H) bf16 hidden states, flattened
  row-major (c = chunk size, 32 by default);
- x = flat index within the chunk of each of the top-k values by |value|, y = the value's
  bf16 bit pattern; the modulus is the first m counting down from 65497 for which x mod m
  is injective; the proof is the polynomial of degree < k over GF(65497) through
  (x mod m, y mod 65497), stored as [m u16 BE][k coefficients u16 BE, ascending];
- verification takes the verifier's own top-k, evaluates the proof at index mod m and
  compares exponent bits 7..14 (mismatch count) and mantissa bits 0..6 (|difference| of
  the positions whose exponent matched: mean, and the upper median sorted[n // 2]); when no
  exponent matches, mean and median are 2**64, as in the reference.

Where we deliberately differ from the reference (each one has a test):
- any float dtype is cast to bf16 first (the reference silently returns null proofs for fp32);
- a chunk with fewer elements than top-k uses k = its element count and stores its
  polynomial zero-padded to top-k coefficients, so every chunk keeps the 258-byte size (the
  reference fails such inputs and returns null proofs for every chunk: vector `b5`); the
  verifier requires that padding to be zero;
- indices are reduced by the modulus on every path (the reference's Python path does not);
- top-k ties break deterministically towards the lower index (torch.topk leaves them open),
  so an honest worker and the verifier pick the same positions whenever their values agree;
- the sign bit is compared too (`sign_mismatches`, over the exponent-matched positions);
  the proof bytes are unchanged;
- a null (modulus 0) or malformed chunk raises ProofError instead of crashing the process;
- on request (`boundary_ulps`, the verifier's default 2) positions at the top-k boundary that
  an honest prover may not have selected are left out of the statistics (`_compare`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protocol.errors import ProofError
from protocol.proof import gf

NO_MATCH = float(2**64)  # the reference's mean/median when no exponent matched


@dataclass(frozen=True)
class ChunkStats:
    """How far one chunk of hidden states is from its proof. Every field is an error
    measure: larger is worse."""

    exp_mismatches: int       # top-k positions whose exponent bits differ
    mant_err_mean: float      # mean |mantissa difference| over exponent-matched positions
    mant_err_median: float    # upper median of the same
    sign_mismatches: int      # exponent-matched positions whose sign bit differs
    k: int                    # positions compared (top-k, or fewer in a small last chunk, less the skipped)
    non_finite: int = 0       # values the proof claims that are Inf or NaN (exponent bits all ones)
    non_finite_top: int = 0   # ... of them, where the verifier's value is in the top half of the top-k
    boundary_skipped: int = 0  # positions at the top-k boundary left out as not selected by the prover

    def as_tuple(self) -> tuple[int, float, float]:
        """The three numbers the reference reports."""
        return (self.exp_mismatches, self.mant_err_mean, self.mant_err_median)


def bf16_bits(hidden: torch.Tensor) -> np.ndarray:
    """(T, H) hidden states of any float dtype -> uint16 array of their bf16 bit patterns.

    fp32 is rounded to nearest-even in numpy (the same bits as torch's cast for every
    non-NaN value; NaN becomes a quiet NaN). Doing it in numpy keeps proof building
    single-threaded: torch's parallel cast stalls for milliseconds per call when the other
    core is busy (measured here: 200 ms instead of 9 ms for 16 completions)."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ProofError("hidden states must be a (T, H) tensor")
    if not hidden.is_floating_point():
        raise ProofError(f"hidden states must be floating point, not {hidden.dtype}")
    h = hidden.detach()
    if h.device.type != "cpu":
        h = h.to("cpu")
    if h.dtype == torch.bfloat16:
        return h.contiguous().view(torch.int16).numpy().view(np.uint16)
    if h.dtype in (torch.float32, torch.float16, torch.float64):
        f = np.ascontiguousarray(h.numpy(), dtype=np.float32)
    else:
        f = h.to(torch.float32).contiguous().numpy()
    u = f.view(np.uint32)
    r = u >> 16  # round to nearest even, in place on one temporary; wraps only for NaN patterns
    r &= 1
    r += u
    r += 0x7FFF
    r >>= 16
    rounded = r.astype(np.uint16)
    if f.size and np.isnan(f.max()):  # max propagates NaN: one pass, no temporary (inf rounds correctly)
        nan = np.isnan(f)
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def chunk_rows(T: int, chunk_size: int) -> list[tuple[int, int]]:
    """Half-open row ranges of the chunks of T tokens."""
    return [(s, min(s + chunk_size, T)) for s in range(0, T, chunk_size)]


def topk_indices(flat_bits: np.ndarray, k: int) -> np.ndarray:
    """Indices (C, k), ascending, of the k largest |value| in each row of bf16 bits (C, n).
    Ties break towards the lower index: each value's key packs (|value| bits, reversed index)
    into one integer, all distinct, so the selected set is unique. Partitioning the keys
    themselves and reading the index back from their low bits is ~5x faster than
    argpartition (numpy's SIMD partition for int32) and than torch.topk."""
    n = flat_bits.shape[1]
    if k >= n:
        return np.broadcast_to(np.arange(n), flat_bits.shape).copy()
    dtype, shift = (np.int32, 16) if n <= 1 << 16 else (np.int64, 32)
    low = (1 << shift) - 1
    # in place on one fresh array: each temporary of this size would be a fresh mmap (page faults)
    keys = flat_bits.astype(dtype)
    keys &= 0x7FFF
    keys <<= shift
    keys |= low - np.arange(n, dtype=dtype)
    keys.partition(n - k, axis=1)
    top = keys[:, n - k:]
    top &= low
    return np.sort(low - top, axis=1).astype(np.int64)


def injective_modulus(x: np.ndarray) -> int:
    """The first m counting down from 65497 for which x mod m is injective (0 if none)."""
    if x.size == 0 or int(x.max()) < gf.P:
        return gf.P
    for m in range(gf.P, x.size - 1, -1):
        r = np.sort(x % m)
        if not np.any(r[1:] == r[:-1]):
            return m
    return 0


@dataclass
class _Group:
    """Chunks with the same number of values, processed as one batch."""

    n: int
    rows: np.ndarray                  # (C, n) bf16 bits, one chunk per row
    where: list[tuple[int, int]]      # (array index, chunk index) of each row


def _chunk_groups(bit_arrays: list[np.ndarray], chunk_size: int) -> list[_Group]:
    """Full chunks are reshaped views of each array (no per-chunk Python work); the short
    last chunk of each array goes to the group of its size."""
    rows: dict[int, list[np.ndarray]] = {}
    where: dict[int, list[tuple[int, int]]] = {}
    for j, bits in enumerate(bit_arrays):
        T, H = bits.shape
        nfull = T // chunk_size
        if nfull and H:
            n = chunk_size * H
            rows.setdefault(n, []).append(bits[: nfull * chunk_size].reshape(nfull, n))
            where.setdefault(n, []).extend((j, c) for c in range(nfull))
        if T > nfull * chunk_size and H:
            n = (T - nfull * chunk_size) * H
            rows.setdefault(n, []).append(bits[nfull * chunk_size:].reshape(1, n))
            where.setdefault(n, []).append((j, nfull))
    return [_Group(n, np.concatenate(rows[n]) if len(rows[n]) > 1 else rows[n][0], where[n]) for n in rows]


def encode_chunks(moduli: np.ndarray, coeffs: np.ndarray, topk: int) -> list[bytes]:
    """TOPLOC chunk bytes of C polynomials: [modulus][coefficients, zero-padded to top-k]."""
    C, k = coeffs.shape
    arr = np.zeros((C, topk + 1), dtype=">u2")
    arr[:, 0] = moduli
    arr[:, 1 : 1 + k] = coeffs
    raw, size = arr.tobytes(), 2 * (topk + 1)
    return [raw[i * size : (i + 1) * size] for i in range(C)]


def decode_chunks(chunks: list[bytes], topk: int) -> tuple[np.ndarray, np.ndarray]:
    """(moduli (C,), coefficients (C, topk)) of well-formed chunks; ProofError otherwise."""
    size = 2 + 2 * topk
    for i, c in enumerate(chunks):
        if len(c) != size:
            raise ProofError(f"proof chunk {i} has {len(c)} bytes, expected {size}")
    arr = np.frombuffer(b"".join(chunks), dtype=">u2").reshape(len(chunks), topk + 1).astype(np.int64)
    moduli, coeffs = arr[:, 0], arr[:, 1:]
    for i in np.flatnonzero(moduli == 0)[:1]:
        raise ProofError(f"null proof chunk {i} (modulus 0): the prover produced no proof")
    for i in np.flatnonzero(moduli > gf.P)[:1]:
        raise ProofError(f"proof chunk {i} modulus {moduli[i]} exceeds the field prime {gf.P}")
    if np.any(coeffs >= gf.P):
        raise ProofError("proof chunk coefficient outside GF(65497)")
    return moduli, coeffs


def build_chunk_lists(bit_arrays: list[np.ndarray], chunk_size: int, topk: int) -> list[list[bytes]]:
    """Proof chunks for several (T, H) bf16 bit arrays at once (all chunks of the same
    size are interpolated in one batch)."""
    out: list[list[bytes]] = [[b""] * -(-bits.shape[0] // chunk_size) for bits in bit_arrays]
    # Top-k per group of equal chunk size; then one interpolation for all chunks with the same
    # number of points (short completions of different lengths would otherwise cost one
    # interpolation call each).
    by_k: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]]] = {}
    for g in _chunk_groups(bit_arrays, chunk_size):
        k = min(topk, g.n)
        idx = topk_indices(g.rows, k)
        ys = np.take_along_axis(g.rows, idx, axis=1)
        if g.n <= gf.P:  # every index is already below the prime: the first modulus works
            moduli = np.full(len(idx), gf.P, dtype=np.int64)
        else:
            moduli = np.array([injective_modulus(row) for row in idx], dtype=np.int64)
            if np.any(moduli == 0):
                raise ProofError("no injective modulus for a chunk (top-k too large)")
        by_k.setdefault(k, []).append((idx % moduli[:, None], ys, moduli, g.where))
    for parts in by_k.values():
        xs, ys, moduli = (np.concatenate([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i in range(3))
        coeffs = gf.interpolate(xs, ys)
        where = [w for p in parts for w in p[3]]
        for (j, c), data in zip(where, encode_chunks(moduli, coeffs, topk)):
            out[j][c] = data
    return out


def verify_chunk_list(bits: np.ndarray, chunks: list[bytes], chunk_size: int, topk: int, *,
                      boundary_ulps: int = 0) -> list[ChunkStats]:
    """Compare (T, H) bf16 bits with one proof chunk per chunk of rows (`boundary_ulps`: see
    `_compare`; 0 is the reference's comparison)."""
    n_chunks = -(-bits.shape[0] // chunk_size)
    if len(chunks) != n_chunks:
        raise ProofError(f"proof has {len(chunks)} chunks, the hidden states have {n_chunks}")
    if not chunks:
        return []
    moduli_all, coeffs_all = decode_chunks(chunks, topk)
    stats: list[ChunkStats | None] = [None] * n_chunks
    for g in _chunk_groups([bits], chunk_size):
        k = min(topk, g.n)
        members = [c for _, c in g.where]
        moduli, coeffs = moduli_all[members], coeffs_all[members]
        if k < topk and np.any(coeffs[:, k:]):
            raise ProofError(f"proof chunk of {g.n} values must have zero coefficients past {k}")
        if g.n <= gf.P and np.any(moduli != gf.P):
            raise ProofError(f"proof chunk of {g.n} values must use modulus {gf.P}")
        idx = topk_indices(g.rows, k)
        actual = np.take_along_axis(g.rows, idx, axis=1).astype(np.int64)
        claimed = gf.evaluate(coeffs, idx % moduli[:, None])
        boundary = boundary_ulps if k < g.n else 0  # every value selected: no boundary to cross
        for c, st in zip(members, _compare(claimed, actual, boundary)):
            stats[c] = st
    return [s for s in stats if s is not None]


def _compare(claimed: np.ndarray, actual: np.ndarray, boundary_ulps: int = 0) -> list[ChunkStats]:
    """Per-row statistics of claimed (proof) vs actual bf16 bit patterns, (C, k) each.

    `boundary_ulps` > 0 leaves out the positions an honest prover may not have selected: where
    the verifier's |value| is within that many bf16 steps of its k-th largest (the top-k
    boundary) and the claim is further from it than that (another exponent, or a mantissa more
    steps off). Values a step apart from the verifier's can swap places across the boundary,
    and the proof evaluated at a position its prover did not select is an arbitrary bit
    pattern. Rare in honest float32 work, but one is enough: in the hostile-swarm test an
    honest worker was banned twice in ~13 runs, once for 3 such positions in 4 two-token
    completions (3/512 > the pooled 0.5%), once for one whose arbitrary claim happened to
    share the exponent (mantissa error 13 over 127 values > 0.1). A changed computation moves
    values everywhere, not only at the boundary, so what is left out costs the checks nothing
    they rely on; the count is reported (`boundary_skipped`)."""
    k = claimed.shape[1]
    exp_match = ((claimed >> 7) & 0xFF) == ((actual >> 7) & 0xFF)
    mant_err = np.abs((claimed & 0x7F) - (actual & 0x7F))
    mag = actual & 0x7FFF  # |value| order of finite bf16 bit patterns
    if boundary_ulps > 0:
        near = mag <= mag.min(axis=1, keepdims=True) + boundary_ulps
        skip = near & ~(exp_match & (mant_err <= boundary_ulps))
    else:
        skip = np.zeros_like(exp_match)
    keep = ~skip
    skipped = skip.sum(axis=1)
    sign_diff = ((claimed >> 15) & 1) != ((actual >> 15) & 1)
    exp_match &= keep
    matched = exp_match.sum(axis=1)
    sums = np.where(exp_match, mant_err, 0).sum(axis=1)
    ordered = np.sort(np.where(exp_match, mant_err, np.iinfo(np.int64).max), axis=1)
    signs = (sign_diff & exp_match).sum(axis=1)
    non_finite = ((claimed >> 7) & 0xFF) == 0xFF
    claimed_non_finite = (non_finite & keep).sum(axis=1)
    # A claimed value at an index the prover did not select is an arbitrary bit pattern (the
    # polynomial evaluated off its points), so a non-finite claim there is honest noise. An index
    # whose value ranks in the top half of the verifier's top-k was selected by any prover whose
    # values are near the verifier's: a non-finite claim there is the prover's own.
    half = max(1, k // 2)
    cut = np.partition(mag, k - half, axis=1)[:, k - half][:, None]
    top_non_finite = (non_finite & (mag >= cut)).sum(axis=1)
    out = []
    for r in range(claimed.shape[0]):
        cnt = int(matched[r])
        if cnt:
            mean, median = float(sums[r]) / cnt, float(ordered[r, cnt // 2])
        else:
            mean = median = NO_MATCH
        compared = k - int(skipped[r])
        out.append(ChunkStats(exp_mismatches=compared - cnt, mant_err_mean=mean, mant_err_median=median,
                              sign_mismatches=int(signs[r]), k=compared, non_finite=int(claimed_non_finite[r]),
                              non_finite_top=int(top_non_finite[r]), boundary_skipped=int(skipped[r])))
    return out


def build_chunks(hidden: torch.Tensor, chunk_size: int = 32, topk: int = 128) -> list[bytes]:
    """TOPLOC-layout proof chunks (no container) of one (T, H) tensor; TOPLOC's
    `build_proofs_bytes(x, chunk_size, topk, skip_prefill=True)` with the differences above."""
    return build_chunk_lists([bf16_bits(hidden)], chunk_size, topk)[0]


def verify_chunks(hidden: torch.Tensor, chunks: list[bytes], chunk_size: int = 32, topk: int = 128) -> list[ChunkStats]:
    """TOPLOC's `verify_proofs_bytes(x, proofs, chunk_size, topk, skip_prefill=True)`,
    plus the sign count; ProofError for malformed or null chunks."""
    return verify_chunk_list(bf16_bits(hidden), chunks, chunk_size, topk)
