"""The worker's view of the coordinator: typed calls over `protocol.http.SignedClient`.

Every method is one HTTP request with the paths of `protocol.routes` and the types of
`protocol.messages`; state-changing ones are signed with the worker's key. The methods do
not retry: the daemon wraps them in `protocol.retry.retry_call` where waiting is right (run
info, registration, leases, releases) and handles failures itself where it is not
(heartbeats are fire-and-forget, submissions are retried from the spool).

Waits the network asks for are untrusted input: `protocol.http.check_response` reads a
`Retry-After` header through `protocol.http.sane_wait` (text, NaN or infinity dropped, a number
clamped to [0.5, 300] s), and the daemon bounds the wait an empty lease answer names the same
way: a hostile or broken coordinator can neither crash a thread, put the daemon to sleep for
years, nor make it retry in a busy loop.
"""

from __future__ import annotations

from protocol import routes
from protocol.http import SignedClient
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_HEARTBEAT, KIND_LEASE_RELEASE, KIND_LEASE_REQUEST, KIND_REGISTRATION, KIND_SUBMISSION,
    Heartbeat, LeaseRelease, LeaseRequest, LeaseResponse, PolicyInfo, Registration,
    RegistrationResponse, RunInfo, Submission, SubmissionResponse, SubmissionStatus, SubmissionStatuses,
    WorkerInfo,
)


class CoordinatorClient:
    def __init__(self, url: str, key: KeyPair, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = SignedClient(self.url, key, timeout_s=timeout_s)

    def close(self) -> None:
        self.http.close()

    def run_info(self) -> RunInfo:
        """GET /v1/run; every message signed after it is bound to the run it names."""
        info = self.http.get(routes.RUN, RunInfo)
        self.http.run_id = info.run_id
        return info

    def register(self, reg: Registration) -> RegistrationResponse:
        return self.http.post_signed(routes.REGISTER, KIND_REGISTRATION, reg, RegistrationResponse)

    def heartbeat(self, hb: Heartbeat) -> None:
        self.http.post_signed(routes.HEARTBEAT, KIND_HEARTBEAT, hb, timeout_s=10.0)

    def lease(self, max_tasks: int, wait_s: float = 0.0) -> LeaseResponse:
        """`wait_s`: with no room for work now, the coordinator may hold the request this long."""
        req = LeaseRequest(max_tasks=max_tasks, wait_s=wait_s)
        return self.http.post_signed(routes.LEASES, KIND_LEASE_REQUEST, req, LeaseResponse,
                                     timeout_s=self.timeout_s + wait_s)

    def release(self, lease_ids: list[str]) -> int:
        out = self.http.post_signed(routes.LEASE_RELEASE, KIND_LEASE_RELEASE, LeaseRelease(lease_ids=lease_ids))
        return int(out.get("released", 0)) if isinstance(out, dict) else 0

    def submit(self, sub: Submission) -> SubmissionResponse:
        return self.http.post_signed(routes.SUBMISSIONS, KIND_SUBMISSION, sub, SubmissionResponse)

    def submission_status(self, submission_id: str) -> SubmissionStatus:
        return self.http.get(routes.SUBMISSION.format(submission_id=submission_id), SubmissionStatus,
                             timeout_s=10.0)

    def submission_statuses(self, submission_ids: list[str]) -> SubmissionStatuses:
        """Several statuses in one request (a coordinator without that route: Rejected 404/405)."""
        return self.http.get(routes.SUBMISSION_STATUSES, SubmissionStatuses, params={"ids": ",".join(submission_ids)},
                             timeout_s=10.0)

    def worker_info(self, worker_id: str) -> WorkerInfo:
        return self.http.get(routes.WORKER.format(worker_id=worker_id), WorkerInfo, timeout_s=10.0)

    def policy(self) -> PolicyInfo:
        return self.http.get(routes.POLICY, PolicyInfo, timeout_s=10.0)
