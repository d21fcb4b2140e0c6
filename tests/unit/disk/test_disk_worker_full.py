"""A full disk (ENOSPC) under the worker's spool while the coordinator answers.

The coordinator's answer needs no disk to be honoured: a submission it settled (accepted, or
"already have it") leaves `pending/` by a delete, which a full disk allows; one it queued whose
`awaiting/` note cannot be written stays pending (sent again later, answered "already have it").
The background sender reports the error and keeps sending once space returns; nothing is lost."""

import errno
import logging
import threading
import time

import pytest

from protocol.errors import Rejected
from protocol.messages import (
    REASON_DUPLICATE_SUBMISSION,
    Completion,
    EngineInfo,
    Submission,
    SubmissionResponse,
)
from protocol.retry import Reachability
from worker import spool as spool_mod
from worker.sender import BackgroundSender
from worker.spool import Spool
from worker.state import WorkerState
from worker.submitter import Submitter


def _sub(lease_id: str) -> Submission:
    return Submission(lease_id=lease_id, policy_version=3,
                      completions=[Completion(token_ids=[1, 2, 3], finish_reason="length", proof="AAAA")],
                      engine=EngineInfo(name="transformers"))


class _Coord:
    def __init__(self, status: str):
        self.status = status
        self.have: set[str] = set()
        self.calls = 0

    def submit(self, sub: Submission) -> SubmissionResponse:
        self.calls += 1
        if sub.lease_id in self.have:
            raise Rejected(409, "already have it", reason=REASON_DUPLICATE_SUBMISSION)
        self.have.add(sub.lease_id)
        return SubmissionResponse(submission_id=f"s-{sub.lease_id}", status=self.status)


class _Registrations:
    def epoch(self) -> int:
        return 0


class _DiskFull:
    """write_atomic of the spool raising ENOSPC while `full`."""

    def __init__(self, monkeypatch):
        self.full = False
        real = spool_mod.write_atomic

        def write_atomic(path, data, **kw):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, data, **kw)

        monkeypatch.setattr(spool_mod, "write_atomic", write_atomic)


def _submitter(tmp_path, status):
    spool = Spool(tmp_path)
    coord = _Coord(status)
    return Submitter(coord, spool, WorkerState(), Reachability(), "w", _Registrations()), spool, coord


@pytest.mark.parametrize("status", ["accepted", "rejected"])
def test_a_settled_submission_leaves_pending_on_a_full_disk(tmp_path, monkeypatch, status):
    disk = _DiskFull(monkeypatch)
    sub, spool, _ = _submitter(tmp_path, status)
    spool.put(_sub("l1"), 3, time.time() + 60)
    disk.full = True
    assert sub.flush(threading.Event()) == 0
    assert spool.pending() == [] and spool.awaiting() == []
    assert sub.state.get("accepted") == (1 if status == "accepted" else 0)


def test_already_have_it_leaves_pending_on_a_full_disk(tmp_path, monkeypatch):
    disk = _DiskFull(monkeypatch)
    sub, spool, coord = _submitter(tmp_path, "accepted")
    spool.put(_sub("l1"), 3, time.time() + 60)
    coord.have.add("l1")
    disk.full = True
    sub.flush(threading.Event())
    assert spool.pending() == []


def test_a_queued_submission_stays_pending_while_its_note_cannot_be_written(tmp_path, monkeypatch, caplog):
    disk = _DiskFull(monkeypatch)
    sub, spool, _ = _submitter(tmp_path, "queued")
    spool.put(_sub("l1"), 3, time.time() + 60)
    disk.full = True
    with caplog.at_level(logging.ERROR):
        sub.flush(threading.Event())   # no OSError out of the flush
    assert [e.lease_id for e in spool.pending()] == ["l1"], "the finished work must stay pending"
    assert any("No space left" in r.getMessage() for r in caplog.records)
    disk.full = False                  # space returns: sent again, the coordinator has it
    sub.flush(threading.Event())
    assert spool.pending() == []


def test_the_background_sender_survives_a_disk_error(tmp_path, monkeypatch):
    sub, spool, _ = _submitter(tmp_path, "queued")
    calls = []
    real = sub.flush

    def flaky_flush(stop, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(stop, **kw)

    monkeypatch.setattr(sub, "flush", flaky_flush)
    monkeypatch.setattr("worker.sender.IDLE_CHECK_S", 0.05)
    stop = threading.Event()
    sender = BackgroundSender(sub, stop)
    spool.put(_sub("l1"), 3, time.time() + 60)
    sender.start()
    try:
        deadline = time.monotonic() + 5
        while spool.pending() and time.monotonic() < deadline:
            sender.kick()
            time.sleep(0.05)
        assert spool.pending() == [], "the sender died on the first disk error"
        assert len(calls) >= 2
    finally:
        stop.set()
        sender.stop_and_join(5)

