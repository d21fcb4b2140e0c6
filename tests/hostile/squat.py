"""Hostile fixture: lease squatters, throw-away identities that take leases and never submit.

For the hostile-swarm test and bench/hostile.py: a plain protocol client on threads, against
any coordinator.

    from tests.hostile.squat import LeaseSquatter

    with LeaseSquatter("http://127.0.0.1:8700", sources=["127.0.0.150", ...]) as squat:
        ...                               # the run goes on
    squat.leased, squat.most_held         # leases taken in all; most held at once

Each of `len(sources)` identities registers from its own address (solving the run's proof of
work: identities are free to make, one per address) and then asks for as many leases as it
may hold, again and again (held requests, `wait_s`), and never submits: its leases sit until
they expire and it takes new ones. Before the room of the swarm's bound was split by lane
(`coordinator.rules.lease_size.Demand`), a few of these held the whole bound and honest workers
with verified work were refused every lease.

Stop: leaving the `with` block (or `.stop()`) ends the threads.
"""

from __future__ import annotations

import threading
import time

import httpx

from protocol import routes
from protocol.errors import ProtocolError
from protocol.http import SignedClient
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
    HardwareReport,
    LeaseRequest,
    LeaseResponse,
    Registration,
    RunInfo,
)
from protocol.pow import solve_pow


class LeaseSquatter:
    def __init__(self, url: str, *, sources: list[str], max_tasks: int = 64, wait_s: float = 2.0):
        self.url, self.sources, self.max_tasks, self.wait_s = url.rstrip("/"), list(sources), max_tasks, wait_s
        self._run_id = ""                         # the run's id, from GET /v1/run at the first registration
        self.leased = 0
        self.held: dict[str, list[float]] = {}    # identity -> expiry times of the leases it holds
        self.most_held = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(src,), daemon=True, name=f"squat-{src}")
                         for src in self.sources]

    def __enter__(self) -> "LeaseSquatter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LeaseSquatter":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self, source: str) -> None:
        with httpx.Client(timeout=30.0, transport=httpx.HTTPTransport(local_address=source)) as http:
            key = None
            while not self._stop.is_set():
                try:
                    if key is None:
                        key = self._register(http)
                    client = SignedClient(self.url, key, client=http, run_id=self._run_id)
                    got = client.post_signed(routes.LEASES, KIND_LEASE_REQUEST,
                                             LeaseRequest(max_tasks=self.max_tasks, wait_s=self.wait_s),
                                             LeaseResponse).leases
                    self._count(key.peer_id, [float(e.body["expires_at"]) for e in got])
                except (httpx.HTTPError, ProtocolError, ValueError) as exc:
                    with self._lock:
                        self.errors.append(f"{source}: {type(exc).__name__}: {str(exc)[:200]}")
                    if "banned" in str(exc) or "unknown_worker" in str(exc):
                        key = None            # a new identity, as a squatter would
                self._stop.wait(0.5)

    def _register(self, http: httpx.Client) -> KeyPair:
        info = RunInfo.model_validate_json(http.get(self.url + routes.RUN).content)
        self._run_id = info.run_id
        key = KeyPair.generate()
        pow_nonce = solve_pow(info.pow_challenge, key.public.hex, info.pow_difficulty) if info.pow_difficulty else None
        SignedClient(self.url, key, client=http, run_id=info.run_id).post_signed(
            routes.REGISTER, KIND_REGISTRATION,
            Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1 << 30), pow_nonce=pow_nonce))
        return key

    def _count(self, who: str, expiries: list[float]) -> None:
        now = time.time()
        with self._lock:
            self.leased += len(expiries)
            mine = [e for e in self.held.get(who, []) if e > now] + expiries
            self.held[who] = mine
            self.most_held = max(self.most_held, sum(len(v) for v in self.held.values()))

    def summary(self) -> dict:
        with self._lock:
            return {"identities": len(self.held), "leased": self.leased, "most_held": self.most_held,
                    "errors": len(self.errors)}
