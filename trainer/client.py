"""The trainer's conversation with the coordinator: take batches, acknowledge the groups it
has spooled (the coordinator hands unacknowledged groups out again), announce versions, report
held-out evaluations (the dashboard's accuracy curve).

These calls retry by the one rule of every role (`protocol.retry.retry_call`): with jittered
exponential backoff while the coordinator is unreachable (`Unavailable`), and for as long as
it says (Retry-After) when it answers 429, so a coordinator restart or a busy coordinator only
pauses training. Another refusal (`Rejected`, 4xx) is not retried: it means the trainer's
key, clock or version numbering disagrees with the coordinator, which is a set-up error the
operator must fix, and it is raised as one line. A stop requested while waiting raises
`protocol.errors.Stopped`.

Answers are read bounded (`protocol.http.SignedClient` with `max_response_bytes`): a batch
answer at most `batch_answer_cap` (its groups at the size of the coordinator's largest
submission, `coordinator_max_body_bytes`, with room), every other answer at most that size plus
1 MiB (GET /v1/policy carries a manifest as large as the coordinator takes). A coordinator
answering past them (a body without end read whole grew the trainer's memory without end) is
`Unavailable`, retried like an outage (tests/unit/protocol/test_operator_clients_bounded.py).
"""

from __future__ import annotations

import logging
import threading

from protocol import routes
from protocol.envelope import Envelope
from protocol.errors import Rejected, Unavailable
from protocol.http import SignedClient
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_BATCH_ACK,
    KIND_BATCH_REQUEST,
    KIND_EVAL_REPORT,
    BatchAck,
    BatchAckResponse,
    BatchRequest,
    DEFAULT_MAX_BODY_BYTES,
    MAX_GROUP_SIZE,
    MAX_TOKENS_PER_SEQUENCE,
    BatchResponse,
    EvalReport,
    PolicyInfo,
    RunInfo,
)
from protocol.retry import retry_call
from trainer.errors import TrainerError

log = logging.getLogger("swarmrl.trainer")

MAX_ACK = 4096  # submission ids per acknowledgement (BatchAck's limit)
# Room beside a group's completions (at most a stored submission's bytes: the same token ids,
# without proofs): the prompt's ids, rewards and advantages, ids and keys.
GROUP_EXTRA_BYTES = MAX_TOKENS_PER_SEQUENCE * 12 + MAX_GROUP_SIZE * 64 + 4096
ANSWER_EXTRA_BYTES = 1 << 20


def batch_answer_cap(max_groups: int, max_submission_bytes: int = DEFAULT_MAX_BODY_BYTES) -> int:
    """The most bytes a batch answer of `max_groups` groups may take, when the coordinator
    stores submissions of at most `max_submission_bytes`."""
    return max(1, max_groups) * (max_submission_bytes + GROUP_EXTRA_BYTES) + ANSWER_EXTRA_BYTES


class CoordinatorLink:
    def __init__(self, url: str, key: KeyPair, stop: threading.Event | None = None, timeout_s: float = 30.0,
                 *, run_id: str = "", max_submission_bytes: int = DEFAULT_MAX_BODY_BYTES):
        """`max_submission_bytes`: the coordinator's limits.max_body_bytes (what bounds its answers)."""
        self.max_submission_bytes = max_submission_bytes
        self.client = SignedClient(url, key, timeout_s=timeout_s, run_id=run_id,
                                   max_response_bytes=max_submission_bytes + ANSWER_EXTRA_BYTES)
        self.stop = stop if stop is not None else threading.Event()

    def close(self) -> None:
        self.client.close()

    def _retrying(self, what: str, fn):
        def waiting(exc: BaseException, wait: float) -> None:
            hint = (f" (is coordinator_max_body_bytes, {self.max_submission_bytes}, the coordinator's "
                    "limits.max_body_bytes?)" if "bytes accepted" in str(exc) else "")
            log.warning("%s: the coordinator is unavailable (%s)%s; retrying in %.1f s", what, exc, hint, wait)

        return retry_call(fn, what, self.stop, cap_s=10.0, on_retry=waiting)

    def take_batch(self, max_groups: int, min_version: int, wait_s: float) -> BatchResponse:
        req = BatchRequest(max_groups=max(1, min(4096, max_groups)), min_policy_version=max(0, min_version),
                           wait_s=wait_s)
        try:
            return self._retrying("taking a batch", lambda: self.client.post_signed(
                routes.TRAINER_BATCH, KIND_BATCH_REQUEST, req, BatchResponse, timeout_s=wait_s + 30.0,
                max_bytes=batch_answer_cap(req.max_groups, self.max_submission_bytes)))
        except Rejected as exc:
            raise TrainerError(f"the coordinator refused the batch request: {exc.detail} "
                               "(is trainer.key_file the operator key the coordinator expects?)") from exc

    def ack(self, submission_ids: list[str], unused: dict[str, str] | None = None) -> int:
        """Tell the coordinator these groups are durably ours (spooled or trained), and which of
        them will not be trained and why (`unused`, `BatchAck.unused`); returns how many it marked
        consumed. Retried while the coordinator is unreachable: an ack that never arrives only
        costs a second hand-out, which the trainer recognises and acknowledges."""
        n = 0
        unused = unused or {}
        for i in range(0, len(submission_ids), MAX_ACK):
            part = submission_ids[i:i + MAX_ACK]
            body = BatchAck(submission_ids=part, unused={s: unused[s] for s in part if s in unused})
            try:
                resp = self._retrying("acknowledging groups", lambda: self.client.post_signed(
                    routes.TRAINER_ACK, KIND_BATCH_ACK, body, BatchAckResponse))
            except Rejected as exc:
                raise TrainerError(f"the coordinator refused the acknowledgement of {len(body.submission_ids)} "
                                   f"groups: {exc.detail}") from exc
            n += resp.acknowledged
        return n

    def announce(self, manifest: Envelope) -> PolicyInfo:
        """POST the signed manifest of a published version (idempotent for the same manifest)."""
        try:
            return self._retrying("announcing a version",
                                  lambda: self.client.post_envelope(routes.POLICY, manifest, PolicyInfo))
        except Rejected as exc:
            raise TrainerError(f"the coordinator refused policy version {manifest.body.get('version')}: "
                               f"{exc.detail}") from exc

    def report_eval(self, report: EvalReport) -> bool:
        """POST the held-out evaluation of an announced version; best effort, one try.

        The trainer's own eval.csv is the record; the report only feeds the dashboard, so a
        coordinator that is down or refuses it costs a warning, never a training step."""
        try:
            self.client.post_signed(routes.TRAINER_EVAL, KIND_EVAL_REPORT, report, timeout_s=10.0)
            return True
        except (Unavailable, Rejected) as exc:
            log.warning("evaluation of version %d not reported to the coordinator: %s", report.policy_version, exc)
            return False

    def run_info(self) -> RunInfo:
        """GET /v1/run, retried while the coordinator is unreachable (what the trainer takes from
        the run at start, and the pins check)."""
        return self._retrying("reading the run", lambda: self.client.get(routes.RUN, RunInfo))
