"""The seeded Gumbel-max choice of many rows in one pass over the vocabulary (CPU, numba).

Both the worker's CPU decoding (`protocol.sampling.sample_rows`) and the verifier's sampling
check (`verifier.checks.sampling.position_scores`) need, per row, the best perturbed score
max_v(logits[v] / T + G(seed, t, v)) and its earliest token. Written with torch tensor
operations that costs about a dozen passes over a rows x vocabulary block of int32 hashes and
random lookups into the 64 MiB noise table: with a 151,936-entry vocabulary the verifier's
full check took 4.4x the model's own forward pass. Here compiled loops per row compute each
token's hash in registers and look the noise up only for tokens that can still reach the row's
best score (the noise table grows with the hash's top 24 bits, so the hash alone shows which
cannot): the same float32 operations on the same values, so the same best score and token, bit
for bit (tests/unit/protocol/test_sampling_fused.py compares with the tensor path).

Why our own kernel: torch has no fused integer-hash-then-argmax operation, `torch.compile`
needs a C++ toolchain at run time on every verifier and worker, and numba (a well-kept
LLVM-based compiler for exactly such loops) has explicit unsigned 32-bit arithmetic (products
widened to 64 bits, cast back), so the hash is exact by construction. Compiled once per
installation (`cache=True`, next to this file or in the user's cache), ~10 s; loading it
takes about a second, so `protocol.sampling` imports this module only for vocabularies where
it pays.

Only CPU logits come here, and `best_rows` answers None for logits with a NaN or an infinity
(whose max rules differ): callers keep the tensor path for those and for other devices.
Reading the logits costs one pass (each block's highest logit, and whether all are finite) plus
the few blocks the scan scores.
"""

from __future__ import annotations

import numpy as np
import torch

try:  # numba is a dependency; the import is guarded only so a broken install falls back, not fails
    import numba
except ImportError:  # pragma: no cover - exercised only without numba
    numba = None

_M32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
MARGIN = np.float32(1.0)  # score units below a bound that float32 rounding cannot cross (for |scores| < 2**20)
_PRUNE_LIMIT = np.float32(2.0**20)
_EXP = 0x7F800000  # float32 exponent bits: all ones for NaN and the infinities
_BLOCK = 256  # tokens that share one upper bound of their perturbed scores
_COARSE_SHIFT = 8  # the coarse table: the largest noise of each 2**8 consecutive table entries (256 KiB)


def _score_py(row, v, temp, key, vocab_hash, table):  # pragma: no cover - compiled
    """Token v's perturbed score: fl(fl(row[v] / temp) + G), as the tensor path computes it."""
    return np.float32(np.float32(row[v] / temp) + table[_mixed(key ^ vocab_hash[v]) >> np.uint32(8)])


def _best_rows_py(logits, logit_bits, temps, row_keys, vocab_hash, table, coarse, floor_tokens,
                  best_out, ids_out, finite_out):  # pragma: no cover - compiled
    """Per row r: the best of logits[r, v] / temps[r] + table[index(r, v)] over v, and its
    earliest v, given a token whose score is likely near the best (`floor_tokens[r]`, -1 for
    none); `logit_bits` is `logits` seen as uint32, `coarse` the largest noise of each
    2**`_COARSE_SHIFT` consecutive table entries. `finite_out[r]` says whether all of row r's logits are
    finite; where not, the row's best is not computed. Compiled by numba.

    Two passes over blocks of `_BLOCK` tokens. The first reads each block's logits as bits
    (the highest, as an order-preserving integer, and the largest magnitude, which shows a NaN
    or an infinity) and computes each token's noise index, keeping the largest: integer
    loops the compiler vectorises (a float max would need fast-math). The block's highest
    logit plus the noise of its largest index bounds every score in the block from above
    (float32 division and addition are monotone, the table is non-decreasing); the coarse
    table, small enough for the L2 cache, gives that noise without a random read of the
    64 MiB table per block. The second scores exactly only the blocks whose bound reaches the
    best found so far and a floor (the scores of the highest-logit token and of
    `floor_tokens[r]`), the most promising block first, and within them only tokens whose
    noise can reach it. Ties go to the earliest token, as `torch.max` does."""
    n, vocab = logits.shape
    blocks = (vocab + _BLOCK - 1) // _BLOCK
    for r in numba.prange(n):
        temp = temps[r]
        key = np.uint32(row_keys[r])
        row = logits[r]
        bits = logit_bits[r]
        top_bits = np.empty(blocks, dtype=np.int32)
        most = np.empty(blocks, dtype=np.uint32)
        magnitude = np.int32(0)
        for k in range(blocks):
            a = k * _BLOCK
            hi = np.int32(-(2**31))
            mag = np.int32(0)
            m = np.uint32(0)
            if a + _BLOCK <= vocab:
                for j in range(_BLOCK):  # a fixed trip count: the compiler vectorises it fully
                    x = np.int32(bits[a + j])
                    mag = max(mag, x & np.int32(0x7FFFFFFF))
                    hi = max(hi, x ^ ((x >> np.int32(31)) & np.int32(0x7FFFFFFF)))
                    m = max(m, _mixed(key ^ vocab_hash[a + j]) >> np.uint32(8))
            else:
                for v in range(a, vocab):
                    x = np.int32(bits[v])
                    mag = max(mag, x & np.int32(0x7FFFFFFF))
                    hi = max(hi, x ^ ((x >> np.int32(31)) & np.int32(0x7FFFFFFF)))
                    m = max(m, _mixed(key ^ vocab_hash[v]) >> np.uint32(8))
            top_bits[k] = hi ^ ((hi >> np.int32(31)) & np.int32(0x7FFFFFFF))
            most[k] = m
            magnitude = max(magnitude, mag)
        finite_out[r] = magnitude < np.int32(_EXP)
        if magnitude >= np.int32(_EXP):
            continue
        top = top_bits.view(np.float32).copy()
        k = np.argmax(top)
        top_id = k * _BLOCK
        while row[top_id] != top[k]:
            top_id += 1
        floor = _score(row, top_id, temp, key, vocab_hash, table)
        if floor_tokens[r] >= 0:
            floor = max(floor, _score(row, floor_tokens[r], temp, key, vocab_hash, table))
        bound = np.empty(blocks, dtype=np.float32)
        for k in range(blocks):
            top[k] = np.float32(top[k] / temp)
            bound[k] = np.float32(top[k] + coarse[most[k] >> np.uint32(_COARSE_SHIFT)])
        best = np.float32(-np.inf)
        best_id = vocab
        first = np.argmax(bound)
        for j in range(blocks + 1):
            k = first if j == 0 else j - 1
            if (j > 0 and k == first) or bound[k] < best or bound[k] < floor:
                continue
            a = k * _BLOCK
            low = max(best, floor)
            # tokens whose noise is below (low - MARGIN - the block's top) cannot reach the best
            near = abs(low) < _PRUNE_LIMIT and abs(top[k]) < _PRUNE_LIMIT
            need = np.searchsorted(table, np.float32(np.float32(low - MARGIN) - top[k])) if near else 0
            for v in range(a, min(vocab, a + _BLOCK)):
                i = _mixed(key ^ vocab_hash[v]) >> np.uint32(8)
                if i < need:
                    continue
                s = np.float32(np.float32(row[v] / temp) + table[i])
                if s > best or (s == best and v < best_id):
                    best = s
                    best_id = v
        best_out[r] = best
        ids_out[r] = best_id


def _mixed_py(x):  # pragma: no cover - compiled
    """lowbias32 of a uint32 (numba widens the products to 64 bits; the casts keep the low 32)."""
    x = x ^ (x >> np.uint32(16))
    x = np.uint32(x * np.uint32(_C1))
    x = x ^ (x >> np.uint32(15))
    x = np.uint32(x * np.uint32(_C2))
    return x ^ (x >> np.uint32(16))


if numba is not None:
    _mixed = numba.njit(inline="always", cache=True)(_mixed_py)
    _score = numba.njit(inline="always", cache=True)(_score_py)
    _best_rows = numba.njit(parallel=True, cache=True, nogil=True)(_best_rows_py)
else:  # pragma: no cover
    _best_rows = None


def available() -> bool:
    """Whether the kernel can run here (numba installed)."""
    return _best_rows is not None


_COARSE: dict[int, tuple[torch.Tensor, np.ndarray]] = {}


def _coarse(table: torch.Tensor) -> np.ndarray:
    """The largest noise of each 2**_COARSE_SHIFT consecutive entries of `table` (non-decreasing:
    each group's last), built once per table."""
    held = _COARSE.get(id(table))
    if held is None or held[0] is not table:
        t = table.numpy()
        held = (table, np.ascontiguousarray(t[(1 << _COARSE_SHIFT) - 1::1 << _COARSE_SHIFT]))
        _COARSE[id(table)] = held
    return held[1]


def _as_uint32(values: torch.Tensor) -> np.ndarray:
    """32-bit hash values as uint32: int32 tensors (what `protocol.sampling` keeps) are viewed
    without a copy, so a decoding step does not convert the vocabulary's hashes each time."""
    if values.dtype == torch.int32:
        return values.contiguous().numpy().view(np.uint32)
    return (values.to(torch.int64).numpy() & _M32).astype(np.uint32)


def best_rows(logits: torch.Tensor, temperatures: torch.Tensor, row_keys: torch.Tensor, vocab_hash: torch.Tensor,
              table: torch.Tensor, floor_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(best perturbed score float32 (N,), its earliest token int64 (N,)) of N rows of CPU
    logits (N, V), or None if a logit is NaN or infinite. `temperatures` (N,); `row_keys` (N,)
    the rows' first hash halves and `vocab_hash` (V,) the tokens' (32-bit values, any integer
    dtype) and `table` the noise table, as in `protocol.sampling`; `floor_tokens` (N,), if
    given, a token per row whose score is likely near the best (the chosen one), which lets the
    scan skip more."""
    n, vocab = logits.shape
    lg = logits.detach().to(torch.float32).contiguous().numpy()
    floors = np.full(n, -1, dtype=np.int64) if floor_tokens is None else floor_tokens.to(torch.int64).numpy()
    if ((floors < -1) | (floors >= vocab)).any():
        raise ValueError(f"floor tokens must be token ids below {vocab} (or -1)")
    best = np.empty(n, dtype=np.float32)
    ids = np.empty(n, dtype=np.int64)
    finite = np.empty(n, dtype=np.bool_)
    _best_rows(lg, lg.view(np.uint32), temperatures.to(torch.float32).contiguous().numpy(),
               _as_uint32(row_keys), _as_uint32(vocab_hash), table.numpy(), _coarse(table),
               np.ascontiguousarray(floors), best, ids, finite)
    if not finite.all():
        return None
    return torch.from_numpy(best), torch.from_numpy(ids)
