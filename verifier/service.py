"""The verifier's work loop: claim jobs, judge them, post signed verdicts.

    loop:  POST /v1/verification/claim (signed `verification_claim`)
           for each job: verifier.pipeline.verify_job
           the claim's verdicts (each a signed `verdict`) -> POST /v1/verdicts/batch in one request
           (one POST /v1/verdicts each against a coordinator without that route)
           no jobs: wait `poll_interval_s`

One request per claim instead of one per verdict: in the local swarm (bench/learning) the
verdict round trips took half the verifier's time, submissions queued seconds for it, and
asynchronous rollouts aged out of the training window while they waited.

Collaborators: `verifier.main` builds it (key, coordinator client, run info, models,
ledger, metrics); `verifier.app` reads its `status()` for /health.

Failure handling (`protocol.retry.retry_call`): the coordinator down or failing (Unavailable)
or asking to wait (429) -> retry with exponential backoff and jitter (or its Retry-After), for
ever, keeping a verdict not yet delivered; a verdict the coordinator
refuses (4xx: already decided by another verifier, unknown submission) is logged and
dropped; a job that cannot be judged now (JobError: its policy version cannot be had) gets
no verdict and returns to the queue when the claim expires. `stop` ends the loop between
jobs, after the verdict in hand is delivered or given up.

A claim answer is read bounded (`claim_answer_cap`: each job at the coordinator's largest
submission, `max_submission_bytes`, with its lease and task beside it, the task's data at most
`protocol.messages.MAX_TASK_DATA_BYTES`): a coordinator answering
past it (a body without end was read whole, memory without end) is `Unavailable`, retried
like an outage (tests/unit/protocol/test_operator_clients_bounded.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from protocol.errors import Rejected, Stopped, Unavailable, Unreachable
from protocol.http import SignedClient
from protocol.identity import PublicKey
from protocol.messages import (
    DEFAULT_MAX_BODY_BYTES,
    KIND_CLAIM,
    KIND_RESUME,
    MAX_GROUP_SIZE,
    MAX_TASK_DATA_BYTES,
    MAX_TOKENS_PER_SEQUENCE,
    KIND_VERDICT,
    ClaimRequest,
    ClaimResponse,
    Verdict,
    VerdictBatchResponse,
    VerificationJob,
)
from protocol.retry import retry_call
from protocol.routes import VERDICTS, VERDICTS_BATCH, VERIFICATION_CLAIM, VERIFICATION_RESUME
from verifier.errors import JobError
from verifier.judge import JudgeSettings
from verifier.metrics import VerifierMetrics
from verifier.pipeline import ModelSource, Timings, verify_job
from verifier.seen import SeenLedger

log = logging.getLogger("swarmrl.verifier")

# Room beside a job's submission envelope: its signed lease at the protocol's limits (a prompt of
# MAX_TOKENS_PER_SEQUENCE ids, MAX_GROUP_SIZE seeds, as JSON with room for spaces), rewards, and
# the task's answer, kind and metadata: at most MAX_TASK_DATA_BYTES, the bound every task source
# and the coordinator's claim answer hold them to, plus the names of their three fields.
JOB_EXTRA_BYTES = 2 * (MAX_TOKENS_PER_SEQUENCE * 11 + MAX_GROUP_SIZE * 20 + 4096) + MAX_TASK_DATA_BYTES + 256


def claim_answer_cap(max_jobs: int, max_submission_bytes: int = DEFAULT_MAX_BODY_BYTES) -> int:
    """The most bytes a claim answer of `max_jobs` jobs may take, when the coordinator stores
    submissions of at most `max_submission_bytes`."""
    return max(1, max_jobs) * (max_submission_bytes + JOB_EXTRA_BYTES) + (1 << 20)


@dataclass
class Counts:
    claims: int = 0
    jobs: int = 0
    accepted: int = 0
    rejected: int = 0
    deferred: int = 0
    last_claim_at: float | None = None
    last_error: str = ""
    by_check: dict[str, int] = field(default_factory=dict)


class VerifierService:
    def __init__(self, client: SignedClient, *, coordinator_key: PublicKey, tokenizer: Any, models: ModelSource,
                 settings: JudgeSettings, ledger: SeenLedger, metrics: VerifierMetrics, batch_jobs: int = 8,
                 poll_interval_s: float = 0.5, clock: Callable[[], float] = time.time,
                 max_submission_bytes: int = DEFAULT_MAX_BODY_BYTES, instance: str | None = None):
        """`max_submission_bytes`: the coordinator's limits.max_body_bytes (bounds a claim answer).
        `instance`: this process among the verifier processes sharing its key (`verifier.instance`),
        sent with every claim and resume, so that a resume takes back only this process's claims;
        None: claims and resumes without one (the coordinator keys them by the key alone)."""
        self.client = client
        self.instance = instance
        self.max_submission_bytes = max_submission_bytes
        self.coordinator_key = coordinator_key
        self.tokenizer = tokenizer
        self.models = models
        self.settings = settings
        self.ledger = ledger
        self.metrics = metrics
        self.batch_jobs = batch_jobs
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.counts = Counts()
        self._lock = threading.Lock()
        self._batch_route = True  # False once the coordinator answered 404/405 to VERDICTS_BATCH
        # True until this verifier's own unexpired claims are all taken back (`step`), and those
        # taken back so far (a job it cannot judge now stays its claim: not taken twice)
        self._resuming = True
        self._resumed: set[str] = set()

    # -- the loop -----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                n = retry_call(lambda: self.step(stop), "claiming jobs", stop, retry_on=(Unavailable, Rejected),
                               cap_s=30.0, on_retry=self._claim_failed)
            except Stopped:
                return
            if n == 0:
                stop.wait(self.poll_interval_s)

    def _claim_failed(self, exc: BaseException, wait: float) -> None:
        if isinstance(exc, Rejected):
            hint = (" (is this verifier's key among the coordinator's verifier_keys?)"
                    if exc.status in (401, 403) else "")
            self._error("claim_rejected", f"claim refused: {exc.detail}{hint}")
        else:
            hint = (f" (is coordinator_max_body_bytes, {self.max_submission_bytes}, the coordinator's "
                    "limits.max_body_bytes?)" if "bytes accepted" in str(exc) else "")
            self._error("coordinator_unavailable", f"coordinator unavailable: {exc}{hint}")

    def step(self, stop: threading.Event | None = None) -> int:
        """One claim and its jobs; returns how many jobs were claimed. After a start, the claims
        are resumes first (POST /v1/verification/resume): this verifier's own claims that have
        not expired, left unjudged when it was killed, come back at once instead of after the
        coordinator's claim TTL; then ordinary claims."""
        try:
            resp = self._resume() if self._resuming else None
        except Unreachable:
            raise   # never sent: nothing was handed out again; resumed when the coordinator is back
        except Unavailable:
            # the answer may have been lost after the coordinator handed the claims out again:
            # each retried resume counted them against verification_max_claims once more (four
            # lost answers and a job was dropped unjudged); they wait out their TTL instead
            self._resuming = False
            raise
        if resp is None:
            resp = self._claim(VERIFICATION_CLAIM, KIND_CLAIM)
        with self._lock:
            self.counts.claims += 1
            self.counts.last_claim_at = self.clock()
        verdicts = [v for v in (self.judge(job) for job in resp.jobs) if v is not None]
        self.deliver_all(verdicts, stop)
        return len(resp.jobs)

    def _claim(self, route: str, kind: str) -> ClaimResponse:
        """One claim or resume. A coordinator from before `ClaimRequest.instance` refuses the
        field (422, its bodies allow no unknown field): this verifier then claims without it,
        as verifiers did before (its resumes take back every unexpired claim of its key)."""
        try:
            return self._post_claim(route, kind)
        except Rejected as exc:
            if self.instance is None or exc.status != 422 or "instance: Extra inputs" not in exc.detail:
                raise
            log.warning("the coordinator does not know verifier instances (upgrade it): claiming without one; a "
                        "restarting replica of this key takes back its siblings' claims too")
            self.instance = None
            return self._post_claim(route, kind)

    def _post_claim(self, route: str, kind: str) -> ClaimResponse:
        return self.client.post_signed(route, kind, ClaimRequest(max_jobs=self.batch_jobs, instance=self.instance),
                                       ClaimResponse,
                                       max_bytes=claim_answer_cap(self.batch_jobs, self.max_submission_bytes))

    def _resume(self) -> ClaimResponse | None:
        """Own unexpired claims back, or None when there are none left that this run has not
        taken back already (or the coordinator has no resume route: it predates it, and those
        claims wait out its TTL as before)."""
        try:
            resp = self._claim(VERIFICATION_RESUME, KIND_RESUME)
        except Rejected as exc:
            if exc.status not in (404, 405):
                raise
            log.info("the coordinator has no %s; claims left by an earlier run wait for its claim TTL",
                     VERIFICATION_RESUME)
            resp = None
        new = [j for j in resp.jobs if j.submission_id not in self._resumed] if resp is not None else []
        # fewer than asked for: every own claim is back, and another resume would only hand the
        # ones this run could not judge yet out again (each time counted against the coordinator's
        # verification_max_claims)
        if resp is None or len(resp.jobs) < self.batch_jobs:
            self._resuming = False
        if not new:
            self._resuming = False
            return None
        self._resumed.update(j.submission_id for j in new)
        log.info("took back %d claims left unjudged by an earlier run of this verifier", len(new))
        return ClaimResponse(jobs=new)

    def deliver_all(self, verdicts: list[Verdict], stop: threading.Event | None = None) -> int:
        """POST several verdicts in one request, with `deliver`'s retries; returns how many the
        coordinator took. Falls back to `deliver` one by one where the batch route is missing."""
        if not verdicts:
            return 0
        if len(verdicts) == 1 or not self._batch_route:
            return sum(self.deliver(v, stop) for v in verdicts)
        try:
            resp = self._retrying(lambda: self.client.post_signed_each(VERDICTS_BATCH, KIND_VERDICT, verdicts,
                                                                       VerdictBatchResponse),
                                  f"{len(verdicts)} verdicts", stop)
        except Rejected as exc:
            if exc.status not in (404, 405):
                self._error("verdict_refused", f"{len(verdicts)} verdicts refused: {exc.detail}")
                return 0
            log.info("the coordinator has no %s; delivering verdicts one by one", VERDICTS_BATCH)
            self._batch_route = False
            return sum(self.deliver(v, stop) for v in verdicts)
        if resp is None:
            return 0
        taken = 0
        for verdict, outcome in zip(verdicts, resp.results):
            if outcome.status == 200:
                self._delivered(verdict)
                taken += 1
            else:
                self._error("verdict_refused", f"verdict on {verdict.submission_id} refused: {outcome.detail}")
        return taken

    def judge(self, job: VerificationJob) -> Verdict | None:
        self.metrics.jobs.labels(str(job.full_check).lower()).inc()
        t = Timings()
        started = time.perf_counter()
        try:
            verdict = verify_job(job, coordinator_key=self.coordinator_key, tokenizer=self.tokenizer,
                                 models=self.models, settings=self.settings, ledger=self.ledger,
                                 now=self.clock(), timings=t)
        except JobError as exc:
            with self._lock:
                self.counts.deferred += 1
            self._error("job_deferred", f"submission {job.submission_id} left for later: {exc}")
            return None
        if job.full_check:
            self.metrics.prefill_seconds.observe(t.prefill_s)
        self.metrics.job_seconds.observe(time.perf_counter() - started)
        failed = [c.name for c in verdict.checks if not c.passed]
        with self._lock:
            self.counts.jobs += 1
            for name in failed:
                self.counts.by_check[name] = self.counts.by_check.get(name, 0) + 1
        for name in failed:
            self.metrics.check_failures.labels(name).inc()
        if verdict.accepted:
            log.info("submission %s of %s accepted (%s check)", job.submission_id, job.worker_id,
                     "full" if job.full_check else "cheap")
        else:
            log.warning("submission %s of %s rejected: %s", job.submission_id, job.worker_id, verdict.reason)
        return verdict

    def deliver(self, verdict: Verdict, stop: threading.Event | None = None) -> bool:
        """POST the verdict, retrying while the coordinator is unavailable (not after `stop`
        unless this is the first attempt)."""
        try:
            sent = self._retrying(lambda: self.client.post_signed(VERDICTS, KIND_VERDICT, verdict),
                                  f"verdict on {verdict.submission_id}", stop)
        except Rejected as exc:
            self._error("verdict_refused", f"verdict on {verdict.submission_id} refused: {exc.detail}")
            return False
        if sent is None:
            return False
        self._delivered(verdict)
        return True

    def _retrying(self, send: Callable[[], Any], what: str, stop: threading.Event | None) -> Any:
        """`send()`, retried while the coordinator is unavailable or asks to wait (429); None when
        `stop` is set after a failed attempt. Rejected (4xx) is the caller's to handle."""
        try:
            return retry_call(send, f"delivering {what}", stop, cap_s=30.0, first_try_when_stopped=True,
                              on_retry=lambda exc, wait: self._error("verdict_unavailable",
                                                                     f"cannot deliver {what}: {exc}"))
        except Stopped:
            return None

    def _delivered(self, verdict: Verdict) -> None:
        self.metrics.verdicts.labels("accepted" if verdict.accepted else "rejected").inc()
        with self._lock:
            if verdict.accepted:
                self.counts.accepted += 1
            else:
                self.counts.rejected += 1

    # -- status -------------------------------------------------------------------------------
    def _error(self, kind: str, message: str) -> None:
        self.metrics.errors.labels(kind).inc()
        with self._lock:
            self.counts.last_error = message
        log.warning("%s", message)

    def status(self) -> dict:
        with self._lock:
            c = self.counts
            return {"claims": c.claims, "jobs": c.jobs, "accepted": c.accepted, "rejected": c.rejected,
                    "deferred": c.deferred, "last_claim_at": c.last_claim_at, "last_error": c.last_error,
                    "check_failures": dict(c.by_check)}
