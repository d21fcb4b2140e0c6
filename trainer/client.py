"""The trainer's conversation with the coordinator: take batches, acknowledge the groups it
has spooled (the coordinator hands unacknowledged groups out again), announce versions, report
held-out evaluations (the dashboard's accuracy curve).

These calls retry with jittered exponential backoff while the coordinator is unreachable
(`Unavailable`), so a coordinator restart only pauses training. A refusal (`Rejected`, 4xx)
is not retried: it means the trainer's key, clock or version numbering disagrees with the
coordinator, which is a set-up error the operator must fix, and it is raised as one line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

from trainer.errors import TrainerError
from protocol import routes
from protocol.envelope import Envelope
from protocol.http import (
    Rejected,
    SignedClient,
    Unavailable,
    backoff_delays,
    check_response,
    parse_response,
)
from protocol.identity import KeyPair
from protocol.messages import (
    KIND_BATCH_ACK,
    KIND_BATCH_REQUEST,
    KIND_EVAL_REPORT,
    BatchAck,
    BatchAckResponse,
    BatchRequest,
    BatchResponse,
    EvalReport,
    PolicyInfo,
    RunInfo,
)

log = logging.getLogger("swarmrl.trainer")

MAX_ACK = 4096  # submission ids per acknowledgement (BatchAck's limit)


class CoordinatorLink:
    def __init__(self, url: str, key: KeyPair, stop: Callable[[], bool] = lambda: False, timeout_s: float = 30.0,
                 *, run_id: str):
        self.client = SignedClient(url, key, timeout_s=timeout_s, run_id=run_id)
        self.stop = stop

    def close(self) -> None:
        self.client.close()

    def _retrying(self, what: str, fn):
        delays = backoff_delays(0.5, 10.0)
        while True:
            try:
                return fn()
            except Unavailable as exc:
                if self.stop():
                    raise
                delay = next(delays)
                log.warning("coordinator unavailable for %s (%s); retrying in %.1f s", what, exc, delay)
                time.sleep(delay)

    def take_batch(self, max_groups: int, min_version: int, wait_s: float) -> BatchResponse:
        req = BatchRequest(max_groups=max(1, min(4096, max_groups)), min_policy_version=max(0, min_version),
                           wait_s=wait_s)
        try:
            return self._retrying("a batch", lambda: self.client.post_signed(
                routes.TRAINER_BATCH, KIND_BATCH_REQUEST, req, BatchResponse, timeout_s=wait_s + 30.0))
        except Rejected as exc:
            raise TrainerError(f"the coordinator refused the batch request: {exc.detail} "
                               "(is trainer.key_file the operator key the coordinator expects?)") from exc

    def ack(self, submission_ids: list[str]) -> int:
        """Tell the coordinator these groups are durably ours (spooled or trained); returns how
        many it marked consumed. Retried while the coordinator is unreachable: an ack that never
        arrives only costs a second hand-out, which the trainer recognises and acknowledges."""
        n = 0
        for i in range(0, len(submission_ids), MAX_ACK):
            body = BatchAck(submission_ids=submission_ids[i:i + MAX_ACK])
            try:
                resp = self._retrying("an acknowledgement", lambda: self.client.post_signed(
                    routes.TRAINER_ACK, KIND_BATCH_ACK, body, BatchAckResponse))
            except Rejected as exc:
                raise TrainerError(f"the coordinator refused the acknowledgement of {len(body.submission_ids)} "
                                   f"groups: {exc.detail}") from exc
            n += resp.acknowledged
        return n

    def announce(self, manifest: Envelope) -> PolicyInfo:
        """POST the signed manifest of a published version (idempotent for the same manifest)."""
        def post() -> PolicyInfo:
            try:
                resp = self.client.http.post(self.client.base_url + routes.POLICY, content=manifest.model_dump_json(),
                                             headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:  # transport errors -> Unavailable, as SignedClient does
                raise Unavailable(f"{self.client.base_url}{routes.POLICY}: {type(exc).__name__}: {exc}") from exc
            check_response(resp)
            return parse_response(resp, PolicyInfo)

        try:
            return self._retrying("announcing a version", post)
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
        """GET /v1/run, retried while the coordinator is unreachable (the pins check at start)."""
        return self._retrying("the run", lambda: self.client.get(routes.RUN, RunInfo))

    def policy(self) -> PolicyInfo:
        return self._retrying("the policy", lambda: self.client.get(routes.POLICY, PolicyInfo))
