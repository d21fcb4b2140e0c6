"""Sending the spool in the background, so the engine never waits for the coordinator.

Over a slow link every submission costs at least one round trip (more when the connection has
to be opened again, or a send is retried); sent from the generation loop, each of those round
trips left the engine idle (bench/wan.py rollouts at RTT 100 ms: accepted groups/min 0.58 of
loopback). The daemon now spools a finished batch (fsynced, as before) and `kick`s this
thread, which runs `Submitter.flush` until the spool is empty and generation goes on at once.

Invariants:
- one flush at a time: this thread is the only sender while it runs (its flush sends up to
  `SEND_LANES` entries at once, each entry by one lane); `stop_and_join` returns only after
  its last send finished, so the daemon's final synchronous flush (shutdown) never races it
  over the same spool entry;
- nothing is lost: an entry leaves `pending/` only when the coordinator answered
  (`worker.submitter`); a flush that meets an unreachable coordinator keeps retrying with
  backoff until `stop`, and whatever is left is sent at the next start;
- a kick during a flush is not lost: the event is cleared before the flush starts, so work
  spooled meanwhile is picked up by another pass.

Collaborators: `worker.daemon` (kicks after each spooled batch, stops it before shutdown),
`worker.submitter.Submitter` (the sends and what each answer does to the spool).
"""

from __future__ import annotations

import logging
import threading

from protocol.errors import Stopped
from worker.submitter import Submitter

log = logging.getLogger(__name__)

IDLE_CHECK_S = 5.0   # also look at the spool this often without a kick (entries left by a failed pass)
# Sends in flight at once. One at a time, a finished group waited in the spool for the round
# trips of every group before it, and one lost packet (a TCP retransmission timeout, >= 200 ms)
# held up all that followed: at RTT 100 ms and 0.5% loss a submission reached the coordinator
# 0.36-0.50 s (median; p90 1.4-1.7 s) after its batch ended, against 0.07-0.11 s on loopback
# (bench/wan.py rollouts), and the coordinator counts those leases as work on its way. Each
# lane is its own keep-alive connection; the coordinator allows 32 per address.
SEND_LANES = 4


class BackgroundSender:
    def __init__(self, submitter: Submitter, stop: threading.Event):
        self.submitter = submitter
        self.stop = stop
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sender")

    def start(self) -> None:
        self._kick.set()  # send what a previous run left, at once
        self._thread.start()

    def kick(self) -> None:
        """New work is in the spool: send it."""
        self._kick.set()

    def stop_and_join(self, timeout_s: float = 60.0) -> bool:
        """Wait for the thread to end (the caller has set `stop`); a send in flight finishes first.
        False if it is still sending after `timeout_s` (then nobody else may flush the spool)."""
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the background sender did not stop within %.0f s", timeout_s)
                return False
        return True

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._kick.wait(IDLE_CHECK_S)
            if self.stop.is_set():
                return
            self._kick.clear()
            try:
                self.submitter.flush(self.stop, lanes=SEND_LANES)
            except Stopped:
                return
            except OSError as exc:
                # the spool's disk failed (full, read-only, ...): the entries stay where they are;
                # this thread must outlive it, or nothing would be sent until the next start
                log.error("sending the spool failed on its disk (%s); trying again in %.0f s", exc, IDLE_CHECK_S)
