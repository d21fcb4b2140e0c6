"""The registration proof of work (hashcash), when the operator turns it on.

`GET /v1/run` gives `pow_challenge` and `pow_difficulty`; the worker finds a nonce such that
sha256(challenge || signer hex || nonce as decimal) starts with `difficulty` zero bits
(`protocol.messages.Registration` states the rule). It costs ~2**difficulty hashes once per
identity, which makes mass-producing identities expensive and costs an honest worker little.
"""

from __future__ import annotations

import hashlib
import threading

from worker.errors import Stopped


def leading_zero_bits(digest: bytes) -> int:
    n = 0
    for b in digest:
        if b == 0:
            n += 8
            continue
        return n + 8 - b.bit_length()
    return n


def pow_ok(challenge: str, signer_hex: str, nonce: int, difficulty: int) -> bool:
    d = hashlib.sha256(f"{challenge}{signer_hex}{nonce}".encode()).digest()
    return leading_zero_bits(d) >= difficulty


def solve_pow(challenge: str, signer_hex: str, difficulty: int, stop: threading.Event | None = None) -> int:
    """The smallest nonce that meets `difficulty` (0 when the proof of work is off)."""
    if difficulty <= 0:
        return 0
    prefix = hashlib.sha256(f"{challenge}{signer_hex}".encode())
    nonce = 0
    while True:
        h = prefix.copy()
        h.update(str(nonce).encode())
        if leading_zero_bits(h.digest()) >= difficulty:
            return nonce
        nonce += 1
        if stop is not None and nonce % 65536 == 0 and stop.is_set():
            raise Stopped("stopped while solving the registration proof of work")
