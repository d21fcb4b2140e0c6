"""The daemon's background chores: heartbeats, verdict polling (credit), standing.

One thread, one loop, three cadences:
- a signed heartbeat every `heartbeat_s` (policy version, leases held, tokens/s, phase), so
  the coordinator knows the worker is alive and does not hand its leases to others;
- the verdicts of acknowledged submissions (`spool/awaiting/`), polled every `poll_s`:
  accepted -> credit (accepted tokens), rejected/dropped -> counted; then forgotten;
- the coordinator's record of this identity (`GET /v1/workers/{id}`) every `info_s`, shown
  as lifetime credit; a ban stops the daemon with the coordinator's reason.
Failures here are logged at debug level and retried at the next tick: the main loop is
what reports an unreachable coordinator.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from protocol.errors import Rejected, Unavailable
from protocol.http import short
from protocol.messages import Heartbeat, SubmissionStatus
from worker.coordinator_client import CoordinatorClient
from worker.spool import Spool
from worker.state import WorkerState

log = logging.getLogger(__name__)

MAX_POLLS_PER_TICK = 64
# An acknowledged submission whose verdict is still unknown this long after its lease expired
# is forgotten locally (the credit is the coordinator's; `awaiting/` only feeds this session's
# counters). Without it, a coordinator that never answers for some ids (neither a status nor
# `unknown`) grew `awaiting/` without bound, every file read back every `poll_s`, and the
# oldest MAX_POLLS_PER_TICK entries kept the newer ones from ever being asked about.
AWAITING_MAX_S = 24 * 3600.0


class Housekeeper:
    def __init__(self, coord: CoordinatorClient, spool: Spool, state: WorkerState, worker_id: str,
                 stop: threading.Event, held_leases: Callable[[], list[str]], on_banned: Callable[[str], None],
                 heartbeat_s: float = 5.0, poll_s: float = 3.0, info_s: float = 10.0):
        self.coord = coord
        self.spool = spool
        self.state = state
        self.worker_id = worker_id
        self.stop = stop
        self.held_leases = held_leases
        self.on_banned = on_banned
        self.heartbeat_s, self.poll_s, self.info_s = heartbeat_s, poll_s, info_s
        self._thread = threading.Thread(target=self._loop, daemon=True, name="housekeeping")
        self._batch_route = True  # False once the coordinator answered 404/405 to the statuses route

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        next_hb = next_poll = next_info = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_hb:
                self._heartbeat()
                next_hb = now + self.heartbeat_s
            if now >= next_poll:
                self.poll_verdicts()
                next_poll = now + self.poll_s
            if now >= next_info:
                self._standing()
                next_info = now + self.info_s
            self.stop.wait(max(0.05, min(next_hb, next_poll, next_info) - time.monotonic()))

    def _heartbeat(self) -> None:
        s = self.state.snapshot()
        hb = Heartbeat(policy_version=s["policy_version"], active_lease_ids=self.held_leases()[:256],
                       tokens_per_s=max(0.0, s["tokens_per_s"]), status=s["phase"][:64])
        try:
            self.coord.heartbeat(hb)
        except (Unavailable, Rejected) as exc:
            log.debug("heartbeat failed: %s", exc)

    def poll_verdicts(self) -> None:
        """Turn verdicts of acknowledged submissions into counters (and credit). All awaited
        submissions are asked for in one request; one request each from a coordinator that
        does not serve the batch route."""
        entries = []
        now = time.time()
        run = getattr(self.coord, "run_id", "")  # (a stand-in coordinator may not say)
        for entry in self.spool.awaiting():
            if entry.submission_id and now - entry.expires_at > AWAITING_MAX_S:
                log.warning("submission %s (lease %s): no verdict %.0f h after its lease expired; no longer polled",
                            entry.submission_id, entry.lease_id, (now - entry.expires_at) / 3600)
                self.spool.settle(entry)
                self.state.add(dropped=1)
            elif entry.run_id and run and entry.run_id != run:
                continue  # another run's: this coordinator would call it unknown (worker.spool)
            elif not entry.submission_id:
                self.spool.settle(entry)
            elif len(entries) < MAX_POLLS_PER_TICK:
                entries.append(entry)
        if not entries or self.stop.is_set():
            return
        statuses = self._statuses([e.submission_id for e in entries])
        if statuses is None:
            return
        for entry in entries:
            if entry.submission_id not in statuses:  # not asked this time (the coordinator went away)
                continue
            st = statuses[entry.submission_id]
            if st is None:  # the coordinator lost it (e.g. a reset database)
                self.spool.settle(entry)
                self.state.add(dropped=1)
                continue
            if st.status == "queued":
                continue
            if st.status == "accepted":
                self.state.add(accepted=1, credits_tokens=st.tokens or entry.tokens)
            elif st.status == "rejected":
                log.warning("submission %s (lease %s) rejected: %s", entry.submission_id, entry.lease_id,
                            short(st.reason))
                self.state.add(rejected=1)
                self.state.set(last_error=f"rejected: {st.reason}"[:300])
            else:
                self.state.add(dropped=1)
            self.spool.settle(entry)
        self.state.set(spool_awaiting=len(self.spool.awaiting()))

    def _statuses(self, ids: list[str]) -> dict[str, SubmissionStatus | None] | None:
        """submission id -> its status (None: unknown to the coordinator); None if unreachable."""
        if self._batch_route:
            try:
                got = self.coord.submission_statuses(ids)
                return {**{s.submission_id: s for s in got.statuses}, **{i: None for i in got.unknown}}
            except Unavailable as exc:
                log.debug("verdict poll failed: %s", exc)
                return None
            except Rejected as exc:
                if exc.status not in (404, 405):
                    log.debug("verdict poll refused: %s", exc)
                    return None
                self._batch_route = False
        out: dict[str, SubmissionStatus | None] = {}
        for i in ids:
            if self.stop.is_set():
                break
            try:
                out[i] = self.coord.submission_status(i)
            except Unavailable as exc:
                log.debug("verdict poll failed: %s", exc)
                break
            except Rejected as exc:
                if exc.status == 404:
                    out[i] = None
        return out

    def _standing(self) -> None:
        try:
            info = self.coord.worker_info(self.worker_id)
        except (Unavailable, Rejected) as exc:
            log.debug("worker info failed: %s", exc)
            return
        self.state.set(lifetime={**info.model_dump(mode="json"), "ban_reason": short(info.ban_reason),
                                 "worker_id": short(info.worker_id, 80)})
        if info.status == "banned":
            self.on_banned(info.ban_reason or "no reason given")
