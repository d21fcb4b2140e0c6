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

Answers are read bounded (`protocol.http.SignedClient` with `max_response_bytes`): identity
encoding only, at most MAX_ANSWER_BYTES (a lease answer: room for the leases asked for at the
protocol's largest, `lease_answer_cap`), and complete within the request's timeout (plus the
body's length at a minimum rate). A body that is no JSON, or JSON nested past the parser's
limit, is `Unavailable` like a 5xx; an error's detail is cut to a line
(tests/unit/worker/test_hostile_coordinator_answers.py).
"""

from __future__ import annotations

import re

from protocol import dtypes, routes
from protocol.envelope import RUN_ID_PATTERN
from protocol.errors import Unavailable
from protocol.http import SignedClient
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_HEARTBEAT, KIND_LEASE_RELEASE, KIND_LEASE_REQUEST, KIND_REGISTRATION, KIND_SUBMISSION, MAX_GROUP_SIZE,
    MAX_TOKENS_PER_SEQUENCE, Heartbeat, LeaseRelease, LeaseRequest, LeaseResponse, PolicyInfo, Registration,
    RegistrationResponse, RunInfo, Submission, SubmissionResponse, SubmissionStatus, SubmissionStatuses,
    WorkerInfo,
)

# Every answer but a lease answer: the run's info, a registration, statuses, the policy (whose
# signed manifest alone may take shardcast's 16 MiB) fit with room to spare.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
# One signed lease at the protocol's limits, as JSON with room for whitespace: a prompt of
# MAX_TOKENS_PER_SEQUENCE ids of up to 10 digits, MAX_GROUP_SIZE seeds of up to 19, the rest.
MAX_LEASE_BYTES = 2 * (MAX_TOKENS_PER_SEQUENCE * 11 + MAX_GROUP_SIZE * 20 + 4096)


# The hardest registration proof of work a coordinator may ask for (its config's own limit:
# about 2**32 hashes), and the longest challenge (it derives 32 hex characters).
MAX_POW_DIFFICULTY = 32
MAX_POW_CHALLENGE_CHARS = 256


def lease_answer_cap(max_tasks: int) -> int:
    """The most bytes a lease answer for `max_tasks` tasks may take."""
    return MAX_ANSWER_BYTES + max(1, max_tasks) * MAX_LEASE_BYTES


def unusable_run_info(info: RunInfo) -> str:
    """Why a worker cannot join the run `info` describes ("" when it can): a run id that no
    signed message may carry (signing raised at the registration), compute dtypes that are
    none or unknown ('auto' took `allowed[0]` of an empty list, or computed in anything named),
    or a proof of work no coordinator asks for (difficulty 200: ~2**200 hashes, a core spun for
    ever; a challenge of megabytes hashed at every try)."""
    if not re.fullmatch(RUN_ID_PATTERN, info.run_id):
        return f"run id {info.run_id[:80]!r} is not a valid run id"
    if not 0 <= info.pow_difficulty <= MAX_POW_DIFFICULTY:
        return f"a registration proof of work of {info.pow_difficulty} bits (at most {MAX_POW_DIFFICULTY} are asked)"
    if len(info.pow_challenge) > MAX_POW_CHALLENGE_CHARS:
        return f"a proof of work challenge of {len(info.pow_challenge)} characters"
    try:
        dtypes.check_allowed(info.allowed_dtypes)
    except ValueError as exc:
        return f"allowed_dtypes: {str(exc)[:200]}"
    return ""


class CoordinatorClient:
    def __init__(self, url: str, key: KeyPair, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = SignedClient(self.url, key, timeout_s=timeout_s, max_response_bytes=MAX_ANSWER_BYTES)

    def close(self) -> None:
        self.http.close()

    @property
    def run_id(self) -> str:
        """The run of the last GET /v1/run ("" before it)."""
        return self.http.run_id

    def run_info(self) -> RunInfo:
        """GET /v1/run; every message signed after it is bound to the run it names. An answer
        the worker cannot work with (`unusable_run_info`) is `Unavailable`: waited out with
        backoff like an outage, rather than an error that ends the daemon at every start."""
        info = self.http.get(routes.RUN, RunInfo)
        problem = unusable_run_info(info)
        if problem:
            raise Unavailable(f"{self.url}{routes.RUN}: the run info is unusable: {problem}")
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
                                     timeout_s=self.timeout_s + wait_s, max_bytes=lease_answer_cap(max_tasks))

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
