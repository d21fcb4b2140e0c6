"""Seeded Gumbel-max sampling: the rule every worker must follow and the verifier re-checks.

The token at completion position t of the sample with seed s is

    argmax_v( logits[t, v] / temperature + G(s, t, v) ),    G = -log(-log(U(s, t, v)))

where U is a counter-based hash of (s, t, v) mapped into (0, 1). Because the noise is a pure
function of (seed, position, token id), it does not depend on batch layout, device, thread
count or engine: a worker cannot re-draw it (no cherry-picking), and the verifier can
regenerate it exactly and check each chosen token against its own logits.

The hash is lowbias32 (C. Wellons' integer hash) computed with int64 tensor arithmetic that
never overflows (32-bit multiplies are split into 16-bit halves), so CPU and GPU agree
bit for bit on U. Greedy decoding is not a valid policy here: temperature must be > 0.
`gumbel_noise` is that definition, written plainly; it is the reference.

The batched path (`gumbel_noise_rows`, `gumbel_noise_at`: engines decoding a batch, the
verifier's sampling check over position x vocabulary chunks) computes the same bits about 3x
faster and in a quarter of the memory: the hash in int32 with wrapping multiplies (the low
32 bits of a product do not depend on signedness; logical shifts are arithmetic shifts
masked), and G looked up in a table of its 2**24 possible float32 values (U has 24 bits;
the table is built once per device with the float64 formula above, 64 MiB). Tests check it
against `gumbel_noise` bit for bit.

On the CPU, the best perturbed score of a row and its token (`perturbed_max_rows`: a worker's
decoding step, the verifier's sampling check) come from a compiled kernel that never builds
the rows x vocabulary noise (`protocol/sampling_fused.py`; `fused_max_rows`): the same bits.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
_U_BITS = 24
FUSED_MIN_VOCAB = 4096  # below this the tensor path's per-call cost is lower than the fused kernel's

__all__ = ["gumbel_noise", "gumbel_noise_rows", "gumbel_noise_at", "gumbel_index_rows", "gumbel_index_at",
           "gumbel_table", "sample_tokens", "sample_rows", "perturbed_max_rows", "fused_max_rows", "check_temperatures",
           "perturbed_scores", "hash32"]


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 tensors holding values in [0, 2**32), without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of each element (int64 tensor, values taken mod 2**32)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def _seed_key(seed: int) -> int:
    """Fold a 63-bit seed into a 32-bit key (two rounds, so both halves matter)."""
    lo = torch.tensor([seed & _M32], dtype=torch.int64)
    hi = torch.tensor([(seed >> 32) & _M32], dtype=torch.int64)
    return int(hash32(hash32(lo ^ 0x9E3779B9) ^ hi)[0])


_VOCAB_HASH: dict[tuple[int, str], torch.Tensor] = {}


def _vocab_hash(vocab_size: int, device: torch.device) -> torch.Tensor:
    key = (vocab_size, str(device))
    h = _VOCAB_HASH.get(key)
    if h is None:
        h = hash32(torch.arange(vocab_size, dtype=torch.int64, device=device) * 2 + 1)
        _VOCAB_HASH[key] = h
    return h


def gumbel_noise(seed: int, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Gumbel noise G(seed, t, v) for every t in `positions` (int64, any device) and every
    token id v < vocab_size: a float32 tensor of shape (len(positions), vocab_size)."""
    device = positions.device
    pos = hash32(positions.to(torch.int64) ^ _seed_key(seed))
    h = hash32(pos[:, None] ^ _vocab_hash(vocab_size, device)[None, :])
    return _gumbel_of_hash(h)


def _gumbel_of_hash(h: torch.Tensor) -> torch.Tensor:
    """G from the hash's top `_U_BITS` bits (the float64 formula; result float32)."""
    u = ((h >> (32 - _U_BITS)).to(torch.float64) + 0.5) / float(1 << _U_BITS)
    return (-torch.log(-torch.log(u))).to(torch.float32)


def check_temperatures(temperatures: float | torch.Tensor) -> None:
    """Refuse a temperature that is not a finite number > 0 (NaN included: a NaN would make every
    score NaN, which no comparison catches). Greedy decoding is not a valid swarmrl policy."""
    t = torch.as_tensor(temperatures, dtype=torch.float64)
    if not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError("temperature must be a finite number > 0 (greedy decoding is not a valid swarmrl policy)")


def perturbed_scores(logits: torch.Tensor, temperature: float, seed: int, positions: torch.Tensor) -> torch.Tensor:
    """logits (N, V) / temperature + Gumbel noise of (seed, positions); float32."""
    check_temperatures(temperature)
    noise = gumbel_noise(seed, positions.to(logits.device), logits.shape[-1])
    return logits.float() / temperature + noise


def sample_tokens(logits: torch.Tensor, temperature: float, seeds: list[int], position: int) -> torch.Tensor:
    """One decoding step for a batch: logits (B, V) of B samples at the same completion
    position, one seed per sample; returns the chosen token ids (B,), int64."""
    out = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
    pos = torch.tensor([position], dtype=torch.int64, device=logits.device)
    for i, seed in enumerate(seeds):
        out[i] = perturbed_scores(logits[i : i + 1], temperature, seed, pos).argmax(dim=-1)[0]
    return out


# -- many samples at once (engines decoding a batch) ------------------------------------------
def _hash32_int(x: int) -> int:
    """lowbias32 on a Python int (same values as `hash32`)."""
    x &= _M32
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


def _seed_key_int(seed: int) -> int:
    """`_seed_key` without tensors (cheap enough to call per row and step)."""
    return _hash32_int(_hash32_int((seed & _M32) ^ 0x9E3779B9) ^ ((seed >> 32) & _M32))


_TABLE: dict[str, torch.Tensor] = {}
_VOCAB_HASH32: dict[tuple[int, str], torch.Tensor] = {}


def _gumbel_table(device: torch.device) -> torch.Tensor:
    """G for every possible 24-bit U, float32 (2**24 entries): `_gumbel_of_hash` of each."""
    t = _TABLE.get(str(device))
    if t is None:
        t = _gumbel_of_hash(torch.arange(1 << _U_BITS, dtype=torch.int64, device=device) << (32 - _U_BITS))
        _TABLE[str(device)] = t
    return t


def gumbel_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """G for every 24-bit index (`gumbel_index_rows`), float32; non-decreasing in the index."""
    return _gumbel_table(torch.device(device))


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) as int32 with the same 32 bits."""
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


def _vocab_hash32(vocab_size: int, device: torch.device) -> torch.Tensor:
    key = (vocab_size, str(device))
    h = _VOCAB_HASH32.get(key)
    if h is None:
        h = _to_int32(_vocab_hash(vocab_size, device))
        _VOCAB_HASH32[key] = h
    return h


def _row_keys(seeds: list[int], positions: torch.Tensor) -> torch.Tensor:
    """hash32(position ^ seed key) per row, as int32 (the first half of the noise's hash)."""
    keys = torch.tensor([_seed_key_int(s) for s in seeds], dtype=torch.int64, device=positions.device)
    return _to_int32(hash32(positions.to(torch.int64) ^ keys))


def _index_of_mixed(x: torch.Tensor) -> torch.Tensor:
    """The G table index (top 24 bits of hash32(x)) for int32 `x` = row key ^ vocab hash,
    computed in place: lowbias32 with wrapping int32 multiplies and masked shifts."""
    x.bitwise_xor_(x.bitwise_right_shift(16).bitwise_and_(0xFFFF))
    x.mul_(_C1 - (1 << 32) if _C1 >= 1 << 31 else _C1)
    x.bitwise_xor_(x.bitwise_right_shift(15).bitwise_and_(0x1FFFF))
    x.mul_(_C2 - (1 << 32) if _C2 >= 1 << 31 else _C2)
    x.bitwise_xor_(x.bitwise_right_shift(16).bitwise_and_(0xFFFF))
    return x.bitwise_right_shift_(32 - _U_BITS).bitwise_and_((1 << _U_BITS) - 1)


def gumbel_index_rows(seeds: list[int], positions: torch.Tensor, vocab_size: int, *,
                      vocab_start: int = 0, vocab_end: int | None = None) -> torch.Tensor:
    """`gumbel_noise_rows` before its table lookup: int32 indices into `gumbel_table`
    (noise = table[index]; a larger index never means smaller noise)."""
    end = vocab_size if vocab_end is None else vocab_end
    x = _row_keys(seeds, positions)[:, None] ^ _vocab_hash32(vocab_size, positions.device)[None, vocab_start:end]
    return _index_of_mixed(x)


def gumbel_noise_rows(seeds: list[int], positions: torch.Tensor, vocab_size: int, *,
                      vocab_start: int = 0, vocab_end: int | None = None) -> torch.Tensor:
    """Noise for B samples in one call: row i equals gumbel_noise(seeds[i], positions[i:i+1],
    vocab_size)[0] (columns vocab_start:vocab_end only, when given). `positions` (B,) int64 on
    the device wanted; returns (B, vocab_end - vocab_start) float32."""
    index = gumbel_index_rows(seeds, positions, vocab_size, vocab_start=vocab_start, vocab_end=vocab_end)
    return _gumbel_table(positions.device)[index]


def gumbel_index_at(seeds: list[int], positions: torch.Tensor, token_ids: torch.Tensor,
                    rows: torch.Tensor | None = None) -> torch.Tensor:
    """`gumbel_index_rows` at one token per entry: entry k is row `rows[k]`'s (default: row
    k's) index for `token_ids[k]`; int32, the shape of `token_ids`."""
    vh = _to_int32(hash32(token_ids.to(torch.int64) * 2 + 1)).to(positions.device)
    keys = _row_keys(seeds, positions)
    return _index_of_mixed((keys if rows is None else keys[rows]) ^ vh)


def gumbel_noise_at(seeds: list[int], positions: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The noise of one token per row: element i equals gumbel_noise(seeds[i],
    positions[i:i+1], V)[0, token_ids[i]] for any V > token_ids[i]; float32 (B,)."""
    return _gumbel_table(positions.device)[gumbel_index_at(seeds, positions, token_ids)]


def fused_max_rows(logits: torch.Tensor, temperatures: torch.Tensor, seeds: list[int], positions: torch.Tensor,
                   floor_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`perturbed_max_rows` by the fused CPU kernel (`protocol.sampling_fused`: no rows x
    vocabulary tensor, the same bits), or None where it does not serve: another device, a
    vocabulary below `FUSED_MIN_VOCAB`, a non-finite logit, no numba. `floor_tokens` (N,), a
    token per row likely to score near the best (the chosen one), lets it skip more."""
    check_temperatures(temperatures)
    if logits.shape[-1] < FUSED_MIN_VOCAB or logits.device.type != "cpu":
        return None
    from protocol import sampling_fused  # numba: imported (and compiled) only where it serves

    if not sampling_fused.available():
        return None
    return sampling_fused.best_rows(logits, temperatures, _row_keys(seeds, positions.to(logits.device)),
                                    _vocab_hash32(logits.shape[-1], logits.device), _gumbel_table(logits.device),
                                    floor_tokens)


def perturbed_max_rows(logits: torch.Tensor, temperatures: torch.Tensor, seeds: list[int],
                       positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row i: the best perturbed score max_v(logits[i, v] / temperatures[i] + G(seeds[i],
    positions[i], v)) (float32) and its earliest token (int64), as `torch.max` over
    `perturbed_scores` gives them (NaN wins); by the fused kernel where it serves."""
    temps = temperatures.to(logits.device, torch.float32)
    fused = fused_max_rows(logits, temps, seeds, positions)  # checks the temperatures
    if fused is not None:
        return fused
    noise = gumbel_noise_rows(seeds, positions.to(logits.device), logits.shape[-1])
    return (logits.float() / temps[:, None] + noise).max(dim=-1)


def sample_rows(logits: torch.Tensor, temperatures: torch.Tensor, seeds: list[int], positions: torch.Tensor) -> torch.Tensor:
    """One decoding step for B samples, each with its own temperature (B,), seed and
    completion position (B,): the same tokens as `sample_tokens` row by row, in one pass."""
    return perturbed_max_rows(logits, temperatures, seeds, positions)[1]
