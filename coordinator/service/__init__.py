"""The coordinator's operations: one function per API call, on a `Context`.

Each takes a verified message (`protocol.envelope.Opened`) or plain arguments, applies the
rules of `coordinator.rules` to the state in `coordinator.store` inside one transaction, and
returns a response type of `protocol.messages`, or raises a `coordinator.errors` error (and
then changes nothing). The FastAPI routes in `coordinator.app` are thin adapters over these.

- `join`          run info, registration, heartbeats, worker standing
- `work`          leases, releases, submissions (the cheap checks and rewards), their status
- `verification`  the verifier's claims and verdicts (reputation, bans)
- `judged`        a verdict must name the digests of the submission and lease stored
- `training`      training batches (long-poll, acknowledgements), policy versions
- `upkeep`        the periodic sweep (expired leases, silent workers, old nonces) and stats
"""

from __future__ import annotations

from sqlalchemy import Connection, Row

from coordinator.errors import Conflict, Forbidden, NotFound
from coordinator.privacy import public_reason
from coordinator.store import workers
from protocol.envelope import Opened


def use_nonce(conn: Connection, opened: Opened, now: float) -> None:
    """Record the message's nonce in this transaction; a second use is a replay."""
    if not workers.remember_nonce(conn, opened.envelope.signer, opened.nonce, now):
        raise Conflict("replay", "replayed message: this nonce was already used by this signer")


def require_worker(conn: Connection, worker_id: str) -> Row:
    row = workers.get(conn, worker_id)
    if row is None:
        raise NotFound("unknown_worker", f"worker {worker_id} is not registered; register first")
    if row.status == "banned":
        raise Forbidden("banned", f"worker {worker_id} is banned: {public_reason(row.ban_reason)}")
    return row
