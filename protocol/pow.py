"""Registration proof of work (hashcash style), as `messages.Registration` defines it.

A registration passes when sha256(challenge || signer hex || nonce as decimal), all UTF-8,
has at least `difficulty` leading zero bits. The challenge and difficulty come from the
coordinator's `GET /v1/run`; the coordinator checks with `pow_ok`, workers find a nonce
with `solve_pow` (about 2**difficulty hashes). Difficulty 0 means no proof is required.

The challenge changes per run and per epoch (`epoch_challenge`): it is derived from a
secret seed the coordinator draws once per run, the run id and the epoch number, so no one
can solve ahead for a later epoch or reuse work across runs, and a ban cannot be dodged
with a stock of pre-solved identities. A solution is good for its epoch and the next one
(a worker that solved just before the turn is not refused).
"""

from __future__ import annotations

import hashlib
import threading

from protocol.errors import Stopped

__all__ = ["leading_zero_bits", "pow_ok", "solve_pow", "epoch_challenge"]


def epoch_challenge(seed: str, run_id: str, epoch: int) -> str:
    """The challenge of `epoch` (32 hex characters)."""
    return hashlib.sha256(f"swarmrl-pow/1|{seed}|{run_id}|{epoch}".encode()).hexdigest()[:32]


def leading_zero_bits(digest: bytes) -> int:
    n = int.from_bytes(digest, "big")
    return len(digest) * 8 - n.bit_length()


def _digest(challenge: str, signer_hex: str, nonce: int) -> bytes:
    return hashlib.sha256(f"{challenge}{signer_hex}{nonce}".encode()).digest()


def pow_ok(challenge: str, signer_hex: str, nonce: int | None, difficulty: int) -> bool:
    if difficulty <= 0:
        return True
    if nonce is None or nonce < 0:
        return False
    return leading_zero_bits(_digest(challenge, signer_hex, nonce)) >= difficulty


STOP_CHECK_EVERY = 1 << 14   # nonces tried between two looks at `stop` (a few ms)


def solve_pow(challenge: str, signer_hex: str, difficulty: int, start: int = 0,
              stop: threading.Event | None = None) -> int:
    """The first nonce >= start that passes (0 when difficulty is 0). With `stop`: raises
    Stopped within a few milliseconds of it being set (at difficulty 30, ~2**30 hashes, a
    solve takes minutes; one that ignored the stop held a worker's SIGTERM as long)."""
    if difficulty <= 0:
        return start
    nonce = start
    while leading_zero_bits(_digest(challenge, signer_hex, nonce)) < difficulty:
        nonce += 1
        if stop is not None and not nonce % STOP_CHECK_EVERY and stop.is_set():
            raise Stopped("stopped while solving the registration proof of work")
    return nonce
