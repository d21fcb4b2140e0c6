"""Sending spooled submissions, and turning the coordinator's answers into spool moves.

`Submitter.flush` sends every entry of `spool/pending/` (oldest first), each sealed afresh,
retrying network failures with backoff (`protocol.retry`), with up to `lanes` sends in flight
(the background sender uses several: over a long round trip, one send at a time held every
finished group in the spool for the round trips of those before it). What each answer means:

| answer                                   | spool                  | counters                    |
|------------------------------------------|------------------------|-----------------------------|
| 200 queued / accepted                    | -> awaiting (its id)   | submitted (+accepted)       |
| 200 rejected                             | removed                | submitted, rejected         |
| 409 duplicate_submission: "already have" | removed (acknowledged) | submitted                   |
| 404 and this worker is unknown           | stays; re-register (*) |                             |
| any other 4xx (other 409s included)      | -> rejected/ (reason)  | rejected                    |
| no answer / 5xx / 429                    | stays; retried later   |                             |
| 408, 400 stale / disconnected            | stays; retried later   |                             |
| (not sent: the entry is of another run)  | stays pending          |                             |

A 409 with reason `duplicate_submission` is what a resend after a crash gets when the first
send had arrived: the coordinator stores one submission per lease (and only the lease's own
worker may submit it), so each is stored exactly once. Any other conflict (the same
completions already stored for the task under another lease, a replayed nonce, or a
coordinator that names no reason) means this submission was not stored: it is set aside with
the coordinator's reason and counted, never taken for delivered.

A refusal that says nothing about the submission (`TRANSIENT_REFUSALS`: a timestamp outside the
coordinator's clock-skew window, a body cut off in transit, a proxy's 408) is retried like an
outage: the body is sealed afresh at every send, so a worker clock that drifted (a laptop
resumed from sleep, NTP not synced yet at boot) once set finished work aside for good. The
retries end when the lease expires (410: set aside) or the send goes through.

(*) once per forgetting, with the daemon's other threads (`worker.registration`): a 404 that
arrives after another thread registered again is sent again without registering.
"""

from __future__ import annotations

import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor

from protocol.envelope import IDENT_CHARS
from protocol.errors import Rejected, Unavailable
from protocol.http import short
from protocol.messages import REASON_DUPLICATE_SUBMISSION
from protocol.retry import Reachability, retry_call
from worker.coordinator_client import CoordinatorClient
from worker.registration import Registrations
from worker.spool import AWAITING, PENDING, REJECTED, Spool, SpoolEntry
from worker.state import WorkerState

log = logging.getLogger(__name__)

# (status, reason) of refusals that say nothing about the submission itself: retried, kept
# pending (reason None: any reason). See the module docstring.
TRANSIENT_REFUSALS = {(400, "stale"), (400, "disconnected"), (408, None)}


def sane_id(submission_id: str) -> str:
    """The coordinator's id for a submission, or "" when it is none a coordinator would give (it
    is stored in `awaiting/` and sent back in every verdict poll's URL; "" is settled unpolled)."""
    return submission_id if re.fullmatch(rf"[{IDENT_CHARS}]{{1,128}}", submission_id) else ""


def transient(exc: Rejected) -> bool:
    return (exc.status, exc.reason) in TRANSIENT_REFUSALS or (exc.status, None) in TRANSIENT_REFUSALS


class Submitter:
    def __init__(self, coord: CoordinatorClient, spool: Spool, state: WorkerState, reach: Reachability,
                 worker_id: str, registrations: Registrations):
        self.coord = coord
        self.spool = spool
        self.state = state
        self.reach = reach
        self.worker_id = worker_id
        self.registrations = registrations
        self._other_run_noted: set[str] = set()   # lease ids of other runs' entries, logged once

    def flush(self, stop: threading.Event, give_up_after_s: float | None = None, lanes: int = 1) -> int:
        """Send everything pending, oldest first, up to `lanes` sends in flight at once; returns
        how many entries are still pending.

        Blocks (retrying with backoff) while the coordinator is unreachable, until `stop`
        is set (raises Stopped, once every lane has ended) or `give_up_after_s` passes for one
        entry (then no further entry is started). Each entry is sent by one lane only."""
        todo = iter(self._of_this_run(self.spool.pending()))
        take = threading.Lock()
        gave_up = threading.Event()

        def lane() -> None:
            while not gave_up.is_set():
                with take:
                    entry = next(todo, None)
                if entry is None:
                    return
                try:
                    self._send(entry, stop, give_up_after_s)
                except Unavailable:
                    gave_up.set()
                finally:
                    self.refresh_counts()

        if lanes <= 1:
            lane()
        else:
            # leaving the block waits for every lane, also when one raised Stopped
            with ThreadPoolExecutor(lanes, thread_name_prefix="send") as pool:
                for f in [pool.submit(lane) for _ in range(lanes)]:
                    f.result()
        return self.state.get("spool_pending")

    def _of_this_run(self, entries: list[SpoolEntry]) -> list[SpoolEntry]:
        """`entries` that may be sent to this coordinator: those of its run, and those written
        before entries recorded their run. The others stay pending, said once per process."""
        run = getattr(self.coord, "run_id", "")  # (a stand-in coordinator may not say)
        out = []
        for e in entries:
            if not e.run_id or not run or e.run_id == run:
                out.append(e)
            elif e.lease_id not in self._other_run_noted:
                self._other_run_noted.add(e.lease_id)
                log.warning("lease %s: finished work of run %r, not of this coordinator's run %r; kept in %s "
                            "for a coordinator of its run", e.lease_id, e.run_id, run, self.spool.root / PENDING)
        return out

    def refresh_counts(self) -> None:
        self.state.set(spool_pending=self.spool.count(PENDING), spool_awaiting=self.spool.count(AWAITING),
                       spool_rejected=self.spool.count(REJECTED))

    def _send(self, entry: SpoolEntry, stop: threading.Event, give_up_after_s: float | None) -> None:
        what = f"submitting lease {entry.lease_id}"
        for attempt in range(2):
            seen = self.registrations.epoch()
            try:
                resp = retry_call(lambda: self._submit_once(entry), what, stop,
                                  reach=self.reach, give_up_after_s=give_up_after_s)
            except Rejected as exc:
                if exc.status == 409 and exc.reason == REASON_DUPLICATE_SUBMISSION:
                    log.info("lease %s: the coordinator already has this submission (%s)", entry.lease_id, exc.detail)
                    self.spool.forget(entry)
                    self.state.add(submitted=1)
                    return
                if exc.status == 404 and attempt == 0 and self.registrations.again(seen, stop, self._forgotten):
                    log.warning("the coordinator did not know this worker; sending again after registering")
                    continue
                why = f"HTTP {exc.status}" + (f" {exc.reason}" if exc.reason else "") + f": {exc.detail}"
                log.error("lease %s: submission refused (%s); set aside in %s", entry.lease_id, why,
                          self.spool.root / "rejected")
                try:
                    self.spool.set_aside(entry, why)
                except OSError as disk:
                    self._disk_error(entry, "set aside", disk)
                    return
                self.state.add(rejected=1)
                self.state.set(last_error=f"submission refused: {exc.detail}")
                return
            self.state.add(submitted=1)
            if resp.status == "rejected":
                log.warning("lease %s: submission rejected at intake: %s", entry.lease_id, short(resp.message))
                self.spool.forget(entry)
                self.state.add(rejected=1)
            elif resp.status == "accepted":
                self.spool.forget(entry)
                self.state.add(accepted=1, credits_tokens=entry.tokens)
            else:
                try:
                    self.spool.acknowledge(entry, sane_id(resp.submission_id))
                except OSError as disk:
                    # the coordinator holds it; the entry stays pending and its resend is
                    # answered "already have it" (forgotten then: a delete needs no space)
                    self._disk_error(entry, f"noted as {resp.submission_id} (awaiting its verdict)", disk)
            log.info("lease %s submitted as %s (%s, %d tokens)", entry.lease_id, short(resp.submission_id, 80),
                     resp.status, entry.tokens)
            return

    def _disk_error(self, entry: SpoolEntry, what: str, exc: OSError) -> None:
        """The spool could not record the coordinator's answer (a full disk, most often): the
        entry stays in `pending/`, nothing is lost, and a later pass sends it again."""
        log.error("lease %s: the coordinator answered but the spool could not be %s (%s); it stays in %s "
                  "and is sent again later", entry.lease_id, what, exc, self.spool.root / PENDING)
        self.state.set(last_error=f"spool write failed: {exc}")

    def _submit_once(self, entry: SpoolEntry):
        """One send; a transient refusal becomes Unavailable (kept pending, retried with backoff)."""
        try:
            return self.coord.submit(entry.submission)
        except Rejected as exc:
            if not transient(exc):
                raise
            raise Unavailable(f"lease {entry.lease_id}: refused for now (HTTP {exc.status}"
                              + (f" {exc.reason}" if exc.reason else "") + f": {exc.detail}); "
                              "kept in the spool and sent again") from exc

    def _forgotten(self) -> bool:
        """Is this worker unknown to the coordinator (as opposed to the lease)?"""
        try:
            self.coord.worker_info(self.worker_id)
        except Rejected as exc:
            return exc.status == 404
        except Unavailable:
            return False
        return False
