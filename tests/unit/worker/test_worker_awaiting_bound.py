"""`spool/awaiting/` is bounded even when the coordinator never gives a verdict for some ids."""

from __future__ import annotations

import threading
import time

from protocol.messages import Completion, EngineInfo, Submission, SubmissionStatuses
from worker.housekeeping import AWAITING_MAX_S, Housekeeper
from worker.spool import Spool
from worker.state import WorkerState


class Silent:
    """A coordinator that answers the statuses route but names none of the asked ids."""

    def __init__(self):
        self.asked: list[list[str]] = []

    def submission_statuses(self, ids):
        self.asked.append(list(ids))
        return SubmissionStatuses(statuses=[], unknown=[])


def _sub(lease_id: str) -> Submission:
    return Submission(lease_id=lease_id, policy_version=0,
                      completions=[Completion(token_ids=[1, 2], finish_reason="length", proof="AAAA")],
                      engine=EngineInfo(name="transformers"))


def test_awaited_verdicts_that_never_come_are_forgotten_and_newer_ones_still_polled(tmp_path):
    spool = Spool(tmp_path / "spool")
    old_expiry = time.time() - AWAITING_MAX_S - 60
    for i in range(70):  # more than one tick's polls, all long expired, never answered
        spool.acknowledge(spool.put(_sub(f"old-{i:03d}"), 2, old_expiry), f"sub-old-{i}")
    spool.acknowledge(spool.put(_sub("new"), 2, time.time() + 60), "sub-new")
    coord = Silent()
    state = WorkerState(peer_id="w", coordinator_url="http://x", engine={})
    keeper = Housekeeper(coord, spool, state, "w", threading.Event(), held_leases=list, on_banned=lambda r: None)
    keeper.poll_verdicts()
    assert coord.asked == [["sub-new"]]       # before: the 64 oldest, never the new one
    assert [e.lease_id for e in spool.awaiting()] == ["new"]  # before: all 71 kept for ever
    keeper.poll_verdicts()
    assert [e.lease_id for e in spool.awaiting()] == ["new"]  # still awaited: its lease is recent


def test_awaited_verdicts_of_another_run_are_not_asked_of_this_coordinator_but_still_age_out(tmp_path):
    """A coordinator of another run knows none of this spool's submission ids: asked, it called
    them unknown and they were settled as dropped. They are not asked; past AWAITING_MAX_S they
    are forgotten like any other."""
    spool = Spool(tmp_path / "spool")
    spool.acknowledge(spool.put(_sub("other"), 2, time.time() + 60, run_id="old-run"), "sub-other")
    spool.acknowledge(spool.put(_sub("ancient"), 2, time.time() - AWAITING_MAX_S - 60, run_id="old-run"), "sub-a")
    spool.acknowledge(spool.put(_sub("mine"), 2, time.time() + 60, run_id="run"), "sub-mine")
    coord = Silent()
    coord.run_id = "run"
    state = WorkerState(peer_id="w", coordinator_url="http://x", engine={})
    keeper = Housekeeper(coord, spool, state, "w", threading.Event(), held_leases=list, on_banned=lambda r: None)
    keeper.poll_verdicts()
    assert coord.asked == [["sub-mine"]]
    assert sorted(e.lease_id for e in spool.awaiting()) == ["mine", "other"]
