"""Seeded fuzzing of the activation-proof decoders (`protocol.proof`).

Starting from real proofs of a few lengths, a seeded generator truncates, extends, flips bytes
(in the header and anywhere), sets header fields to their extremes (chunk size, top-k, T, H at
0/1/max/0xFFFF/0xFFFFFFFF), splices two proofs, repeats chunks, and makes random bytes; the
base64 text is mangled too. What must hold: `from_b64`, `decode_header` and `verify_proof`
(against hidden states of the size the header claims, when small) either succeed or raise
`ProofError` (never IndexError, ValueError, struct.error, MemoryError...), and decoding
allocates no more than a small multiple of the input (tracemalloc sees numpy's buffers).
"""

from __future__ import annotations

import base64
import random
import struct
import tracemalloc

import pytest
import torch

from protocol.errors import ProofError
from protocol.proof import build_proof, decode_header, from_b64, to_b64, verify_proof
from protocol.proof.blob import HEADER

H = 32
CASES = 400


def _hidden(t: int, h: int = H, seed: int = 0) -> torch.Tensor:
    return torch.randn(t, h, generator=torch.Generator().manual_seed(seed))


SEEDS = {t: build_proof(_hidden(t)) for t in (0, 1, 31, 33, 64)}
FIELDS = {"version": (2, "B"), "flags": (3, "B"), "chunk_size": (4, "H"), "topk": (6, "H"), "tokens": (8, "I"),
          "hidden": (12, "I")}
EXTREMES = {"B": [0, 1, 2, 0xFF], "H": [0, 1, 31, 32, 33, 127, 128, 129, 4096, 4097, 0xFFFF],
            "I": [0, 1, 32, 33, 1 << 20, (1 << 20) + 1, 0x7FFFFFFF, 0xFFFFFFFF]}


def mutate(rng: random.Random) -> tuple[str, bytes]:
    t = rng.choice(list(SEEDS))
    blob = bytearray(SEEDS[t])
    r = rng.random()
    if r < 0.15:
        n = rng.randrange(len(blob) + 1)
        return f"T={t} cut to {n}", bytes(blob[:n])
    if r < 0.25:
        extra = rng.randbytes(rng.choice([1, 2, 257, 258, 259, 4096]))
        return f"T={t} + {len(extra)} bytes", bytes(blob) + extra
    if r < 0.5:
        name = rng.choice(list(FIELDS))
        off, fmt = FIELDS[name]
        value = rng.choice(EXTREMES[fmt])
        struct.pack_into(">" + fmt, blob, off, value)
        return f"T={t} {name}={value}", bytes(blob)
    if r < 0.7:
        for _ in range(rng.choice([1, 3, 30])):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        return f"T={t} flipped", bytes(blob)
    if r < 0.8:
        other = SEEDS[rng.choice(list(SEEDS))]
        return f"T={t} spliced", bytes(blob[: rng.randrange(len(blob) + 1)]) + other[rng.randrange(len(other) + 1):]
    if r < 0.9 and len(blob) > HEADER.size:
        return f"T={t} chunks repeated", bytes(blob) + bytes(blob[HEADER.size:])
    return "random", rng.randbytes(rng.choice([0, 1, 15, 16, 17, 274, 1000]))


def mangle_b64(rng: random.Random, text: str) -> str:
    return rng.choice([text[:-1], text + "=", text + "==", "=" + text, text.replace("A", "-"), text + "\x00",
                       text + "é", " " + text, text[: len(text) // 2], "", "====", text.lower(), text + "\n"])


def _check(label: str, blob: bytes) -> None:
    tracemalloc.start()
    try:
        try:
            header = decode_header(blob)
        except ProofError:
            return
        finally:
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 4 * len(blob) + (1 << 20), (label, peak, len(blob))
    if header.tokens * header.hidden_size > 1 << 16:
        return
    try:
        stats = verify_proof(_hidden(header.tokens, max(1, header.hidden_size), seed=1), blob)
    except ProofError:
        return
    assert len(stats) == header.n_chunks, label


def test_mutated_proof_bytes_decode_or_raise_proof_error():
    rng = random.Random(1)
    decoded = 0
    for _ in range(CASES):
        label, blob = mutate(rng)
        _check(label, blob)
        try:
            from_b64(to_b64(blob))
            decode_header(blob)
            decoded += 1
        except ProofError:
            pass
    assert 0 < decoded < CASES


def test_mangled_base64_is_a_proof_error():
    rng = random.Random(2)
    for _ in range(CASES):
        text = to_b64(SEEDS[rng.choice(list(SEEDS))])
        bad = mangle_b64(rng, text)
        try:
            blob = from_b64(bad)
        except ProofError:
            continue
        _check(f"b64 {bad[:30]!r}", blob)


@pytest.mark.parametrize("value", [None, 5, b"TP", bytearray(b"x"), ["a"], "\ud800", "A" * 3, "é"])
def test_from_b64_of_anything_is_a_proof_error_or_bytes(value):
    try:
        out = from_b64(value)
    except ProofError:
        return
    assert isinstance(out, bytes)


@pytest.mark.parametrize("t", sorted(SEEDS))
def test_every_truncation_of_a_real_proof_is_a_proof_error(t):
    blob = SEEDS[t]
    for n in range(len(blob)):
        with pytest.raises(ProofError):
            decode_header(blob[:n])
    assert base64.b64decode(to_b64(blob)) == blob
