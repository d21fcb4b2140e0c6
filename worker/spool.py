"""The submission spool: finished work on disk until the coordinator has it.

Every finished submission is written to `data_dir/spool/pending/<lease_id>.json` (written to
a temporary file, fsynced, renamed, directory fsynced) BEFORE it is sent, and leaves
`pending/` only when the coordinator acknowledged it:

- accepted for verification (or "already have it") -> moved to `awaiting/` with its
  submission id, where it waits for the verdict that turns it into credit, then deleted;
- refused for good (any other 4xx) -> moved to `rejected/` with the reason, kept for the
  contributor to inspect, never resent.

So a crash at any point loses no finished work, and a restart resends each pending entry;
the coordinator answers a resend of something it already holds as "already have it", so
each submission is stored exactly once. The spool stores the unsigned body: it is sealed
afresh at every send, because a signed envelope goes stale after the clock-skew window.
One submission per lease, so the lease id names the file. Each entry records the run of its
lease: it is sent only to a coordinator of that run (`worker.submitter`), so a worker started
against another run's coordinator (a wrong URL, the operator's next run) keeps it pending
instead of having it refused there and set aside for good.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from protocol.durable import fsync_dir, remove_temporaries, write_atomic
from protocol.messages import Submission

log = logging.getLogger(__name__)

PENDING, AWAITING, REJECTED = "pending", "awaiting", "rejected"

# A spool file larger than this is not one this worker wrote (a submission is bounded by the
# coordinator's body cap, 4 MiB by default): it is set aside unread rather than read into memory.
MAX_ENTRY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SpoolEntry:
    lease_id: str
    submission: Submission
    tokens: int
    created_at: float
    expires_at: float
    submission_id: str = ""
    run_id: str = ""          # the run of its lease ("": written before runs were recorded)


def _write_doc(path: Path, doc: dict, durable: bool = True) -> None:
    write_atomic(path, json.dumps(doc, separators=(",", ":")), durable=durable)


class Spool:
    """Durable queue of finished submissions (one process uses a spool at a time)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in (PENDING, AWAITING, REJECTED):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.root.glob("*/.*.tmp"))  # a crash mid-write leaves only these

    def _path(self, where: str, lease_id: str) -> Path:
        if not lease_id or "/" in lease_id or lease_id.startswith("."):
            raise ValueError(f"unsafe lease id {lease_id!r}")
        return self.root / where / f"{lease_id}.json"

    def put(self, submission: Submission, tokens: int, expires_at: float, run_id: str = "") -> SpoolEntry:
        entry = SpoolEntry(lease_id=submission.lease_id, submission=submission, tokens=tokens,
                           created_at=time.time(), expires_at=expires_at, run_id=run_id)
        _write_doc(self._path(PENDING, entry.lease_id), _to_doc(entry))
        return entry

    def pending(self) -> list[SpoolEntry]:
        return self._list(PENDING)

    def awaiting(self) -> list[SpoolEntry]:
        return self._list(AWAITING)

    def count(self, where: str) -> int:
        """Entries in `where` (PENDING, AWAITING, REJECTED), by their file names alone: the
        status counters are refreshed after every batch and every send, and reading back every
        entry (each with its proofs) for a count cost the engine's CPU more as verdicts lagged."""
        return sum(1 for _ in (self.root / where).glob("*.json"))

    def rejected(self) -> list[str]:
        return sorted(p.stem for p in (self.root / REJECTED).glob("*.json"))

    def acknowledge(self, entry: SpoolEntry, submission_id: str) -> None:
        """The coordinator holds it: wait for its verdict in `awaiting/`. Not fsynced: once the
        coordinator holds the submission, a power loss here can at worst bring the pending
        entry back (resent, answered "already have it") or lose the local note that a verdict
        is awaited (only this session's counters; the credit itself is the coordinator's). A
        process crash loses nothing either way. This saves three fsyncs per submission."""
        doc = _to_doc(entry)
        doc["submission_id"] = submission_id
        _write_doc(self._path(AWAITING, entry.lease_id), doc, durable=False)
        self._path(PENDING, entry.lease_id).unlink(missing_ok=True)

    def set_aside(self, entry: SpoolEntry, reason: str) -> None:
        """Refused for good: keep it under `rejected/` with the reason, never resend."""
        doc = _to_doc(entry)
        doc["reason"] = reason
        _write_doc(self._path(REJECTED, entry.lease_id), doc)
        self._path(PENDING, entry.lease_id).unlink(missing_ok=True)
        fsync_dir(self.root / PENDING)

    def forget(self, entry: SpoolEntry) -> None:
        """The coordinator settled it at once (accepted, rejected at intake, "already have it"):
        nothing is awaited, so it leaves `pending/` by a delete alone, which a full disk allows
        (it used to be written to `awaiting/` first, only to be deleted from there)."""
        self._path(PENDING, entry.lease_id).unlink(missing_ok=True)
        self._path(AWAITING, entry.lease_id).unlink(missing_ok=True)

    def settle(self, entry: SpoolEntry) -> None:
        """Its verdict is known (credit counted): forget it."""
        self._path(AWAITING, entry.lease_id).unlink(missing_ok=True)

    def _list(self, where: str) -> list[SpoolEntry]:
        out = []
        for p in (self.root / where).glob("*.json"):
            try:
                out.append(_read_entry(p))
            except FileNotFoundError:
                continue  # settled or moved by another thread between the listing and the read
            except (ValueError, KeyError, TypeError, OverflowError, RecursionError, OSError) as exc:
                # Written atomically, so this is outside damage (or no file at all: a folder, a
                # file no submission could fill): keep the bytes, stop resending, list the rest.
                _set_aside_damaged(p, exc)
        return sorted(out, key=lambda e: e.created_at)


def _read_entry(p: Path) -> SpoolEntry:
    with open(p, "rb") as fh:  # a folder named *.json raises IsADirectoryError here
        if os.fstat(fh.fileno()).st_size > MAX_ENTRY_BYTES:
            raise ValueError(f"over {MAX_ENTRY_BYTES} bytes, larger than any submission")
        data = fh.read(MAX_ENTRY_BYTES + 1)  # and a file that grows meanwhile is still bounded
    if len(data) > MAX_ENTRY_BYTES:
        raise ValueError(f"over {MAX_ENTRY_BYTES} bytes, larger than any submission")
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise TypeError(f"a JSON {type(doc).__name__}, not an object")
    return _from_doc(doc)


def _set_aside_damaged(p: Path, exc: BaseException) -> None:
    """Rename `p` to `<name>.corrupt` (`.corrupt.N` when that is taken: an earlier damaged file of
    the same name is never overwritten) and say so; the bytes stay for the contributor."""
    target = p.with_name(p.name + ".corrupt")
    n = 1
    while target.exists() or target.is_symlink():
        target = p.with_name(f"{p.name}.corrupt.{n}")
        n += 1
    try:
        p.rename(target)
    except FileNotFoundError:
        return  # moved by another thread meanwhile
    log.error("spool file %s is unreadable (%s: %s); moved aside to %s, never resent",
              p, type(exc).__name__, str(exc)[:200], target.name)


def _to_doc(e: SpoolEntry) -> dict:
    return {"lease_id": e.lease_id, "submission": e.submission.model_dump(mode="json"),
            "tokens": e.tokens, "created_at": e.created_at, "expires_at": e.expires_at,
            "submission_id": e.submission_id, "run_id": e.run_id}


def _from_doc(d: dict) -> SpoolEntry:
    return SpoolEntry(lease_id=d["lease_id"], submission=Submission.model_validate(d["submission"]),
                      tokens=int(d["tokens"]), created_at=float(d["created_at"]),
                      expires_at=float(d["expires_at"]), submission_id=d.get("submission_id", ""),
                      run_id=str(d.get("run_id") or ""))
