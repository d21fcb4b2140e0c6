"""Stand-ins for the worker's unit tests: a small coordinator and a local weights source.

`FakeCoordinator` speaks the real wire protocol (protocol.routes, protocol.messages, signed
envelopes checked with protocol.envelope) but keeps its state in memory and lets a test
script failures: answer 503 for a while, forget workers, ban one, refuse a submission, answer
a route with anything at all (`hostile`).
One submission per lease, like the real one: a second gets 409. The integration tests
(tests/integration/test_worker*.py) run the worker against the real coordinator instead.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from protocol import routes
from protocol.envelope import AUDIENCE_COORDINATOR, AUDIENCE_WORKER, Envelope, open_envelope, seal
from protocol.errors import ProtocolError
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_HEARTBEAT,
    KIND_LEASE,
    KIND_LEASE_RELEASE,
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
    KIND_SUBMISSION,
    REASON_DUPLICATE_SUBMISSION,
    Heartbeat,
    Lease,
    LeaseRelease,
    LeaseRequest,
    LeaseResponse,
    Registration,
    RegistrationResponse,
    RunInfo,
    SamplingParams,
    Submission,
    SubmissionResponse,
    SubmissionStatus,
    WorkerInfo,
)
from worker.config import WorkerConfig


class FakeCoordinator:
    def __init__(self, *, prompt=(5, 6, 7), group_size=2, max_tokens=4, eos=1, version=0, window=1,
                 lease_ttl_s=60.0, tasks=None, relays=()):
        self.key = KeyPair.from_seed(b"C" * 32)
        self.operator = KeyPair.from_seed(b"O" * 32)
        self.prompt, self.group_size, self.max_tokens, self.eos = list(prompt), group_size, max_tokens, eos
        self.version, self.window, self.lease_ttl_s = version, window, lease_ttl_s
        self.tasks_left = tasks  # None: endless
        self.relays = list(relays)
        self.lock = threading.Lock()
        self.workers: dict[str, dict] = {}
        self.leases: dict[str, Lease] = {}
        self.released: list[str] = []
        self.submissions: dict[str, dict] = {}   # submission id -> {lease_id, worker, body, status}
        self.by_lease: dict[str, str] = {}
        self.submit_calls = 0
        self.heartbeats = 0
        self.unavailable_until = 0.0
        self.refuse_submissions: int | None = None  # HTTP status to answer submissions with
        self.refuse_reason = ""                      # ... and the `reason` it names
        self.verdict = "accepted"                    # what a polled submission turns into
        self.statuses_route = True                   # serve GET /v1/submission-statuses (newer coordinators)
        self.status_calls = {"single": 0, "batch": 0}
        self.banned: dict[str, str] = {}
        self.delay_s = 0.0             # every answer waits this long (a slow link's round trip)
        self.hold_leases = False       # lease requests wait while this is True
        self.leases_held_back = 0      # lease requests waiting now
        self.submits_in_flight = 0
        self.most_submits_in_flight = 0
        self.lease_log: list[tuple[int, int]] = []  # per lease request: (leases the worker held, submits in flight)
        self.lease_waits: list[float] = []          # per lease request: the wait_s it asked for
        self.empty_retry_s = 0.2                    # retry_after_s of an answer with no leases
        self.hostile: dict[str, Any] = {}           # path -> async fn(request): its answer (None: the usual one)
        self._ids = itertools.count(1)
        self.app = self._make_app()

    # -- scripting -------------------------------------------------------------------------
    def down_for(self, seconds: float) -> None:
        self.unavailable_until = time.time() + seconds

    def forget_workers(self) -> None:
        with self.lock:
            self.workers.clear()

    def _guard(self) -> None:
        if time.time() < self.unavailable_until:
            raise HTTPException(503, "coordinator is restarting")

    async def _open(self, request: Request, kind: str, body_type):
        try:
            env = Envelope.model_validate_json(await request.body())
            return open_envelope(env, kind, body_type, run_id="run", audience=AUDIENCE_COORDINATOR)
        except (ProtocolError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from exc

    def _known(self, wid: str) -> None:
        if wid in self.banned:
            raise HTTPException(403, f"worker {wid} is banned: {self.banned[wid]}")
        if wid not in self.workers:
            raise HTTPException(404, f"unknown worker {wid}; register first")

    def run_info(self) -> RunInfo:
        return RunInfo(run_id="run", coordinator_key=self.key.public.hex, operator_key=self.operator.public.hex,
                       verifier_keys=[], relays=self.relays, current_policy_version=self.version,
                       async_window=self.window)

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def round_trip(request: Request, call_next):
            submit = request.url.path == routes.SUBMISSIONS
            self.submits_in_flight += submit
            self.most_submits_in_flight = max(self.most_submits_in_flight, self.submits_in_flight)
            try:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                answer = self.hostile.get(request.url.path)
                out = await answer(request) if answer is not None else None
                return out if out is not None else await call_next(request)
            finally:
                self.submits_in_flight -= submit

        @app.get(routes.RUN)
        def run() -> dict:
            self._guard()
            return self.run_info().model_dump(mode="json")

        @app.post(routes.REGISTER)
        async def register(request: Request) -> dict:
            self._guard()
            o = await self._open(request, KIND_REGISTRATION, Registration)
            if o.signer_id in self.banned:
                raise HTTPException(403, f"banned: {self.banned[o.signer_id]}")
            with self.lock:
                self.workers[o.signer_id] = {"hardware": o.body.hardware, "registrations":
                                             self.workers.get(o.signer_id, {}).get("registrations", 0) + 1}
            return RegistrationResponse(worker_id=o.signer_id, check_rate=1.0, run=self.run_info()).model_dump(mode="json")

        @app.post(routes.HEARTBEAT)
        async def heartbeat(request: Request) -> dict:
            self._guard()
            o = await self._open(request, KIND_HEARTBEAT, Heartbeat)
            self._known(o.signer_id)
            self.heartbeats += 1
            return {"ok": True}

        @app.post(routes.LEASES)
        async def lease(request: Request) -> dict:
            self._guard()
            o = await self._open(request, KIND_LEASE_REQUEST, LeaseRequest)
            self._known(o.signer_id)
            self.lease_waits.append(o.body.wait_s)
            self.leases_held_back += 1
            try:
                while self.hold_leases:
                    await asyncio.sleep(0.02)
            finally:
                self.leases_held_back -= 1
            out = []
            now = time.time()
            with self.lock:
                held = sum(1 for lid, le in self.leases.items() if le.worker_id == o.signer_id
                           and lid not in self.by_lease and lid not in self.released and le.expires_at > now)
                self.lease_log.append((held, self.submits_in_flight))
                for _ in range(o.body.max_tasks):
                    if self.tasks_left is not None:
                        if self.tasks_left <= 0:
                            break
                        self.tasks_left -= 1
                    n = next(self._ids)
                    lease = Lease(lease_id=f"lease-{n}", run_id="run", worker_id=o.signer_id, task_id=f"task-{n}",
                                  prompt_token_ids=self.prompt, seeds=[1000 * n + i for i in range(self.group_size)],
                                  sampling=SamplingParams(temperature=1.0, max_tokens=self.max_tokens),
                                  eos_token_id=self.eos, min_policy_version=max(0, self.version - self.window),
                                  max_policy_version=self.version, issued_at=now, expires_at=now + self.lease_ttl_s)
                    self.leases[lease.lease_id] = lease
                    out.append(seal(KIND_LEASE, lease, self.key, run_id="run", audience=AUDIENCE_WORKER))
            return LeaseResponse(leases=out, retry_after_s=0.0 if out else self.empty_retry_s).model_dump(mode="json")

        @app.post(routes.LEASE_RELEASE)
        async def release(request: Request) -> dict:
            self._guard()
            o = await self._open(request, KIND_LEASE_RELEASE, LeaseRelease)
            n = 0
            with self.lock:
                for lid in o.body.lease_ids:
                    if lid in self.leases and lid not in self.by_lease:
                        self.released.append(lid)
                        n += 1
            return {"released": n}

        @app.post(routes.SUBMISSIONS)
        async def submit(request: Request) -> Any:
            self._guard()
            o = await self._open(request, KIND_SUBMISSION, Submission)
            self.submit_calls += 1
            self._known(o.signer_id)
            if self.refuse_submissions:
                return JSONResponse({"detail": "refused by the test", "reason": self.refuse_reason},
                                    status_code=self.refuse_submissions)
            with self.lock:
                lid = o.body.lease_id
                if lid not in self.leases:
                    raise HTTPException(404, f"unknown lease {lid}")
                if lid in self.by_lease:
                    return JSONResponse({"detail": f"lease {lid} already submitted as {self.by_lease[lid]}",
                                         "reason": REASON_DUPLICATE_SUBMISSION}, status_code=409)
                sid = f"sub-{next(self._ids)}"
                self.by_lease[lid] = sid
                self.submissions[sid] = {"lease_id": lid, "worker": o.signer_id, "body": o.body, "status": "queued"}
            return SubmissionResponse(submission_id=sid, status="queued").model_dump(mode="json")

        def status_of(submission_id: str) -> dict | None:
            s = self.submissions.get(submission_id)
            if s is None:
                return None
            s["status"] = self.verdict
            tokens = sum(len(c.token_ids) for c in s["body"].completions)
            return SubmissionStatus(submission_id=submission_id, worker_id=s["worker"], status=s["status"],
                                    tokens=tokens if s["status"] == "accepted" else 0).model_dump(mode="json")

        @app.get(routes.SUBMISSION_STATUSES)
        def submission_statuses(ids: str) -> dict:
            self._guard()
            if not self.statuses_route:
                raise HTTPException(404, "Not Found")
            self.status_calls["batch"] += 1
            found = {i: status_of(i) for i in ids.split(",")}
            return {"statuses": [s for s in found.values() if s], "unknown": [i for i, s in found.items() if not s]}

        @app.get(routes.SUBMISSION)
        def submission(submission_id: str) -> dict:
            self._guard()
            self.status_calls["single"] += 1
            st = status_of(submission_id)
            if st is None:
                raise HTTPException(404, "unknown submission")
            return st

        @app.get(routes.WORKER)
        def worker(worker_id: str) -> dict:
            self._guard()
            if worker_id not in self.workers and worker_id not in self.banned:
                raise HTTPException(404, "unknown worker")
            subs = [s for s in self.submissions.values() if s["worker"] == worker_id]
            acc = [s for s in subs if s["status"] == "accepted"]
            return WorkerInfo(worker_id=worker_id, status="banned" if worker_id in self.banned else "active",
                              accepted=len(acc), rejected=sum(s["status"] == "rejected" for s in subs),
                              accepted_tokens=sum(len(c.token_ids) for s in acc for c in s["body"].completions),
                              check_rate=1.0, ban_reason=self.banned.get(worker_id, "")).model_dump(mode="json")

        return app


class LocalWeights:
    """A ShardcastClient stand-in: versions are folders on disk, published by the test."""

    def __init__(self):
        self.versions: dict[int, Path] = {}
        self.fetches: list[int] = []
        self.cv = threading.Condition()

    def publish(self, version: int, path: Path) -> None:
        with self.cv:
            self.versions[version] = Path(path)
            self.cv.notify_all()

    def wait_for_version(self, after: int | None, timeout_s: float) -> int | None:
        with self.cv:
            self.cv.wait_for(lambda: any(after is None or v > after for v in self.versions), timeout_s)
            newer = [v for v in self.versions if after is None or v > after]
            return max(newer) if newer else None

    def fetch(self, version: int, progress=None) -> Path:
        from protocol.errors import ProtocolError

        self.fetches.append(version)
        if version not in self.versions:
            raise ProtocolError(f"version {version} is not published")
        if progress:
            progress(10, 10)
        return self.versions[version]

    def close(self) -> None:
        pass


def worker_config(url: str, tmp_path: Path, **kw) -> WorkerConfig:
    """A worker config for the daemon under test: the fake coordinator at `url`, files under `tmp_path`."""
    base = dict(coordinator_url=url, key_file=tmp_path / "worker.key", data_dir=tmp_path / "worker",
                engine="transformers", device="cpu", dtype="float32", threads=1, max_tasks=2, json_logs=True)
    base.update(kw)
    return WorkerConfig(**base)


class Running:
    """A Daemon in a background thread; `stop()` asks it to stop and waits."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:  # handed to the test, which re-raises it
            self.error = exc

    def start(self) -> "Running":
        self.thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not stop"
