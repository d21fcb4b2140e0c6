"""The wire types of swarmrl, declared once.

Each class says who produces it and who consumes it. State-changing messages travel inside
a signed `Envelope` (see `envelope.py`) whose `kind` is the constant next to the class
(`KIND_*`); responses are plain JSON of the `*Response` / `*Info` types.

Limits here are hard protocol caps that protect every receiver; operators set tighter
limits in their service config. Binary data is base64 (proofs) or hex (keys, hashes).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from protocol.envelope import IDENT_CHARS, RUN_ID_PATTERN, Envelope
from protocol.proof import max_proof_b64_chars

# -- hard caps ----------------------------------------------------------------------------
MAX_GROUP_SIZE = 256
MAX_TOKENS_PER_SEQUENCE = 32_768
MAX_LEASES_PER_REQUEST = 256
MAX_LEASE_WAIT_S = 10.0      # the longest a lease request may ask to be held (LeaseRequest.wait_s)
MAX_PROOF_B64_CHARS = max_proof_b64_chars(MAX_TOKENS_PER_SEQUENCE)
MAX_ID_CHARS = 128
MAX_STATUS_IDS = 256         # submission ids per GET /v1/submission-statuses (SubmissionStatuses)
MAX_VERSION = 2**31 - 1  # policy versions and steps: SQL INTEGER columns are 32-bit on PostgreSQL
# The coordinator's default limits.max_body_bytes: the largest submission (and manifest) it
# stores, so what bounds its largest answers (claims, batches); the trainer's and verifier's
# `coordinator_max_body_bytes` default to it.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
# What GET /v1/run (and /v1/policy) may carry; the coordinator's config holds to the same
# bounds (coordinator.config), so it never serves a RunInfo its own schema refuses.
MAX_RELAYS = 64              # shardcast URLs advertised
MAX_URL_CHARS = 2048         # of one relay URL
MAX_VERIFIER_KEYS = 256
MAX_REF_CHARS = 4096         # tokenizer_ref: the coordinator's `model`, a folder (PATH_MAX) or hub id
MAX_POW_DIFFICULTY = 32      # leading zero bits (about 2**32 hashes)
MAX_POW_CHALLENGE_CHARS = 256  # the coordinator derives 32 hex characters
MAX_REASON_TEXT = 2000       # a stored reason (verdict, drop, ban); every writer cuts to it
# A task's data as a claim answer carries it to a verifier: its answer, kind and metadata as
# JSON (`task_data_bytes`); also the run's task options (TaskSpec.options). Every task source
# holds its tasks to it (`protocol.tasks`: a file row over it is a load error), the coordinator
# sends no job over it, and the verifier's claim cap allots each job this much for its task
# (`verifier.service.JOB_EXTRA_BYTES`), so the two cannot disagree. 512 KiB: room for the hidden
# test cases of a code task (tens to hundreds of KB a problem in common suites), and half the
# 1 MiB the claim cap gave a task before. (The scorer sandbox carried the metadata once per
# completion then: a group of MAX_GROUP_SIZE at 1 MiB scored 0 after the batch timeout. It now
# sends a batch's task once, `protocol.sandbox.pool.batch_payload`: such a group takes ~0.02 s,
# tests/unit/protocol/test_sandbox_task_once.py; the bound stays for the claim answer.)
MAX_TASK_DATA_BYTES = 1 << 19


def json_bytes(value: Any) -> int:
    """Bytes of `value` as the coordinator writes it into an answer: compact, ASCII JSON
    (`protocol.rawjson`). ValueError for what strict JSON cannot hold (NaN, infinities, objects)."""
    try:
        return len(json.dumps(value, separators=(",", ":"), allow_nan=False))
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def task_data_bytes(answer: str, kind: str, metadata: dict) -> int:
    """The measure `MAX_TASK_DATA_BYTES` bounds (ValueError for metadata that is not strict JSON)."""
    return json_bytes(answer) + json_bytes(kind) + json_bytes(metadata)


Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
TokenId = Annotated[int, Field(ge=0, lt=2**31)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
IDENT_PATTERN = rf"^[{IDENT_CHARS}]+$"
Ident = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=IDENT_PATTERN)]
RunId = Annotated[str, Field(pattern=RUN_ID_PATTERN)]  # what a signed envelope may carry
RelayUrl = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]  # a relay URL or a multiaddr
ReasonText = Annotated[str, Field(max_length=MAX_REASON_TEXT)]


def _without(out: Any, key: str, default: Any) -> Any:
    """A serialised body without `key` when it holds `default`: a field added to a message is
    left out at its default, so the body is byte for byte what senders wrote before the field,
    and a receiver from before it (whose bodies allow no unknown field) accepts it."""
    if isinstance(out, dict) and key in out and out[key] is default:
        out.pop(key)
    return out


class Strict(BaseModel):
    """Base for wire types: unknown fields are an error, values are validated strictly, and a
    float field holds a finite number (JSON `NaN`/`Infinity`/`1e400` are refused: they would pass
    `ge` bounds or skew windows and poison sums, rates and the JSON other readers parse)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _fits_the_databases(self):
        """JSON integers have no size limit; the databases' have (a 10**30 reached SQLite as an
        OverflowError, a 500). Every int field fits in int64 (int lists are token ids and seeds,
        bounded by their element types); no text field holds a NUL."""
        for name, value in self.__dict__.items():
            if type(value) is str and "\x00" in value:  # PostgreSQL text cannot hold NUL (a 500 there)
                raise ValueError(f"{name}: NUL character in text")
            if type(value) is int and not -2**63 <= value < 2**63:
                raise ValueError(f"{name}: integer out of the 64-bit range")
        return self


# -- message kinds (the `kind` of the envelope that carries each body) ---------------------
KIND_REGISTRATION = "registration"
KIND_HEARTBEAT = "heartbeat"
KIND_LEASE_REQUEST = "lease_request"
KIND_LEASE = "lease"
KIND_LEASE_RELEASE = "lease_release"
KIND_SUBMISSION = "submission"
KIND_CLAIM = "verification_claim"
KIND_RESUME = "verification_resume"
KIND_VERDICT = "verdict"
KIND_BATCH_REQUEST = "batch_request"
KIND_BATCH_ACK = "batch_ack"
KIND_POLICY_MANIFEST = "policy_manifest"
KIND_EVAL_REPORT = "eval_report"


# -- common pieces --------------------------------------------------------------------------
class SamplingParams(Strict):
    """Fixed by the coordinator per task; the worker must sample with exactly these."""

    temperature: float = Field(gt=0.0, le=10.0, description="softmax temperature (>0; greedy is not allowed)")
    max_tokens: int = Field(ge=1, le=MAX_TOKENS_PER_SEQUENCE, description="completion length cap")


class GpuInfo(Strict):
    name: str = Field(max_length=200)
    memory_bytes: int = Field(ge=0)


class HardwareReport(Strict):
    """What a worker reports about its machine (informational; untrusted)."""

    cpu_count: int = Field(ge=0, le=100_000)
    ram_bytes: int = Field(ge=0)
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=64)
    torch_version: str = Field(default="", max_length=100)
    platform: str = Field(default="", max_length=200)


class EngineInfo(Strict):
    """Which inference engine made a submission (informational; archived for audits)."""

    name: str = Field(max_length=64, description="'transformers' or 'vllm'")
    version: str = Field(default="", max_length=64)
    dtype: str = Field(default="", max_length=32, description="compute dtype, e.g. 'float32'")
    device: str = Field(default="", max_length=64)


# -- worker -> coordinator ------------------------------------------------------------------
class Registration(Strict):
    """Worker -> coordinator (`POST /v1/workers/register`). The worker id is the signer's peer id.

    `pow_nonce`: when the operator requires proof of work, a value such that
    sha256(pow_challenge || signer hex || pow_nonce as decimal) has `pow_difficulty`
    leading zero bits (challenge and difficulty come from `GET /v1/run`)."""

    hardware: HardwareReport
    client_version: str = Field(default="", max_length=64)
    engine: str = Field(default="", max_length=64)
    pow_nonce: int | None = Field(default=None, ge=0, lt=2**63)


class Heartbeat(Strict):
    """Worker -> coordinator (`POST /v1/workers/heartbeat`), every few seconds."""

    policy_version: int | None = Field(default=None, ge=0, le=MAX_VERSION)
    active_lease_ids: list[Ident] = Field(default_factory=list, max_length=MAX_LEASES_PER_REQUEST)
    tokens_per_s: float = Field(default=0.0, ge=0.0)
    status: str = Field(default="", max_length=64, description="free text: 'generating', 'syncing', ...")


class LeaseRequest(Strict):
    """Worker -> coordinator (`POST /v1/leases`): ask for up to `max_tasks` tasks."""

    max_tasks: int = Field(ge=1, le=MAX_LEASES_PER_REQUEST)
    wait_s: float = Field(default=0.0, ge=0.0, le=MAX_LEASE_WAIT_S,
                          description="when the swarm has no room for more work now, the coordinator may hold the "
                                      "request up to this long and answer as soon as it can lease (0: answer at once)")


class LeaseRelease(Strict):
    """Worker -> coordinator (`POST /v1/leases/release`): give back unfinished leases."""

    lease_ids: list[Ident] = Field(min_length=1, max_length=MAX_LEASES_PER_REQUEST)


class Completion(Strict):
    """One sampled completion of a task, in the order of the lease's seeds."""

    token_ids: list[TokenId] = Field(max_length=MAX_TOKENS_PER_SEQUENCE, description="generated tokens, EOS included if sampled")
    finish_reason: Literal["eos", "length"]
    proof: str = Field(max_length=MAX_PROOF_B64_CHARS, description="base64 activation proof (protocol.proof)")


class Submission(Strict):
    """Worker -> coordinator (`POST /v1/submissions`): the finished group of one lease.

    `claimed_rewards` exists only so that a worker that sends one can be shown to be
    ignored: the coordinator always computes rewards itself."""

    lease_id: Ident
    policy_version: int = Field(ge=0, le=MAX_VERSION)
    completions: list[Completion] = Field(min_length=1, max_length=MAX_GROUP_SIZE)
    engine: EngineInfo
    claimed_rewards: list[float] | None = Field(default=None, max_length=MAX_GROUP_SIZE)


# -- coordinator -> worker ------------------------------------------------------------------
class Lease(Strict):
    """Coordinator -> worker, signed by the coordinator (kind `lease`).

    A lease is the unit of work: one task, `len(seeds)` samples, one seed each, all with
    `sampling`. The worker may use any policy version in [min_policy_version,
    max_policy_version]; the verifier re-checks everything here."""

    lease_id: Ident
    run_id: Ident
    worker_id: Ident
    task_id: Ident
    prompt_token_ids: list[TokenId] = Field(min_length=1, max_length=MAX_TOKENS_PER_SEQUENCE)
    seeds: list[Seed] = Field(min_length=1, max_length=MAX_GROUP_SIZE)
    sampling: SamplingParams
    eos_token_id: TokenId
    eos_token_ids: list[TokenId] = Field(default_factory=list, max_length=16,
                                         description="every token id that ends a completion (the model's "
                                                     "generation_config list, eos_token_id among them); empty: "
                                                     "eos_token_id alone (protocol.conformance.lease_eos)")
    min_policy_version: int = Field(ge=0, le=MAX_VERSION)
    max_policy_version: int = Field(ge=0, le=MAX_VERSION)
    issued_at: float
    expires_at: float
    allowed_dtypes: list[str] = Field(default_factory=lambda: ["float32"], min_length=1, max_length=4,
                                      description="compute dtypes the run allows (protocol.dtypes); the verifier "
                                                  "rejects a submission computed in any other")


class LeaseResponse(Strict):
    leases: list[Envelope] = Field(max_length=MAX_LEASES_PER_REQUEST, description="each a signed `lease`")
    retry_after_s: float = Field(default=0.0, ge=0.0, description="no work now: ask again after this long")


class RegistrationResponse(Strict):
    worker_id: Ident
    check_rate: float | None = Field(None, description="not told to workers (None): read after each verdict, a "
                                                        "worker's own rate would say which submission was fully checked")
    run: "RunInfo"


# The `reason` of the coordinator's 409 to a submission whose lease this worker already
# submitted: the resend of a submission whose first answer was lost ("already have it").
# Every other refusal reason means the work was not stored.
REASON_DUPLICATE_SUBMISSION = "duplicate_submission"


class SubmissionResponse(Strict):
    submission_id: Ident
    status: Literal["queued", "accepted", "rejected"]
    message: ReasonText = ""


class SubmissionStatus(Strict):
    """`GET /v1/submissions/{id}`: where a submission stands (workers poll it for credit)."""

    submission_id: Ident
    worker_id: Ident
    status: Literal["queued", "accepted", "rejected", "dropped"]
    reason: ReasonText = ""
    tokens: int = 0


class SubmissionStatuses(Strict):
    """`GET /v1/submission-statuses?ids=a,b,...`: several submissions at once (a worker polls
    all it awaits in one request); ids the coordinator does not know are listed in `unknown`.
    Bounded as the query is: at most MAX_STATUS_IDS ids in all, each a submission id (`Ident`;
    the coordinator refuses a query with any other with 422, so never echoes one back)."""

    statuses: list[SubmissionStatus] = Field(max_length=MAX_STATUS_IDS)
    unknown: list[Ident] = Field(default_factory=list, max_length=MAX_STATUS_IDS)


class WorkerInfo(Strict):
    """`GET /v1/workers/{id}`: a worker's standing (public)."""

    worker_id: Ident
    status: Literal["active", "gone", "banned"]
    accepted: int
    rejected: int
    accepted_tokens: int
    check_rate: float | None = Field(None, description="the share of its submissions fully checked: the operator's "
                                                        "view only (None for anyone else)")
    ban_reason: ReasonText = ""
    checked_positions: int = Field(0, description="tokens of this worker's clean full checks")
    near_ties: int = Field(0, description="... of which were not the verifier's seeded argmax (within tolerance)")


class TaskSpec(Strict):
    """The run's task source, `protocol.tasks.get_source(kind, seed, options)`: the coordinator
    leases its train split; the trainer evaluates each version on its held-out split."""

    kind: str = Field(max_length=200, description="task source name, e.g. 'arithmetic' or 'reasoning_gym:<name>'")
    seed: int = Field(description="seed of the task stream")
    options: dict[str, Any] = Field(default_factory=dict, description="options passed to the task source")
    chat_template: bool = Field(default=False, description="prompts are encoded with the tokenizer's chat template "
                                                           "(protocol.lm.encode_task), in leases and evaluation alike")

    @model_validator(mode="after")
    def _options_bounded(self):
        n = json_bytes(self.options)
        if n > MAX_TASK_DATA_BYTES:
            raise ValueError(f"options take {n} bytes as JSON, over MAX_TASK_DATA_BYTES ({MAX_TASK_DATA_BYTES})")
        return self


class RunInfo(Strict):
    """`GET /v1/run`: what every party needs to join the run (served by the coordinator).

    The run's own terms — `run_id`, `async_window`, `tasks` — are the coordinator's config and
    nobody else's: the trainer takes them from here (and refuses to start when its own config
    says otherwise)."""

    run_id: RunId
    coordinator_key: Hex64 = Field(description="signs leases")
    operator_key: Hex64 = Field(description="signs policy manifests")
    verifier_keys: list[Hex64] = Field(max_length=MAX_VERIFIER_KEYS)
    relays: list[RelayUrl] = Field(max_length=MAX_RELAYS, description="shardcast URLs to fetch weights from")
    current_policy_version: int | None = Field(ge=0, le=MAX_VERSION)
    async_window: int = Field(ge=0, le=MAX_VERSION)
    pow_challenge: str = Field(default="", max_length=MAX_POW_CHALLENGE_CHARS)
    pow_difficulty: int = Field(default=0, ge=0, le=MAX_POW_DIFFICULTY)
    tokenizer_ref: str = Field(default="", max_length=MAX_REF_CHARS,
                               description="the coordinator's model (folder or hub id); informational: a verifier "
                                           "never loads it on the coordinator's word")
    allowed_dtypes: list[str] = Field(default_factory=lambda: ["float32"], max_length=4,
                                      description="compute dtypes the run allows; a worker computes in one of them")
    p2p_bootstrap: list[RelayUrl] = Field(default_factory=list, max_length=16,
                                     description="libp2p multiaddrs of the run's bootstrap peers (the coordinator's "
                                                 "node first; empty: no swarm layer, HTTP only)")
    tasks: TaskSpec | None = Field(default=None, description="the run's task source (None: not served; a trainer "
                                                             "then needs its own tasks_kind)")
    task_scorer: str = Field(default="", max_length=400, description="the scorer reference the run's tasks carry")
    task_digests: dict[str, str] = Field(default_factory=dict, max_length=16,
                                         description="digest of each part of the task definition "
                                                     "(protocol.tasks.digest); the trainer and verifier refuse to "
                                                     "start when theirs differ")


# -- verifier <-> coordinator ---------------------------------------------------------------
class ClaimRequest(Strict):
    """Verifier -> coordinator (`POST /v1/verification/claim`): up to `max_jobs` jobs. The same
    body as kind `verification_resume` (`POST /v1/verification/resume`, a verifier at start): up
    to `max_jobs` of its own claims that have not expired, back at once.

    `instance` names the verifier process (replica) among those that share one verifier key: the
    coordinator records it with each claim, and a resume takes back only the claims of the same
    key and instance (a restarting replica never takes a sibling's claims, which the sibling is
    judging). None (verifiers before it): claims resumable only by a resume without one."""

    max_jobs: int = Field(ge=1, le=64)
    instance: Ident | None = Field(None, description="the verifier process among those sharing its key "
                                                     "(verifier.instance): resumes take back only its claims")

    @model_serializer(mode="wrap")
    def _without_a_null_instance(self, handler):
        """No instance: the body is the one verifiers sent before the field (`{"max_jobs": n}`),
        which a coordinator from before it accepts (its bodies allow no unknown field)."""
        return _without(handler(self), "instance", None)


class VerificationJob(Strict):
    """Coordinator -> verifier: one submission to decide, with what is needed to check it."""

    submission_id: Ident
    worker_id: Ident
    lease: Envelope = Field(description="the signed lease the submission answers")
    submission: Envelope = Field(description="the worker's signed submission, as received")
    rewards: list[float] = Field(description="rewards the coordinator computed, one per completion")
    task_answer: str = Field(default="", description="reference answer, for the verifier's own reward check")
    task_kind: str = ""
    task_metadata: dict[str, Any] = Field(default_factory=dict, description="the task's metadata (its scorer gets it)")
    full_check: bool = Field(description="run the model checks (else only the cheap checks)")

    @model_validator(mode="after")
    def _task_data_bounded(self):
        """The task's answer, kind and metadata within MAX_TASK_DATA_BYTES. One encoding of the
        metadata: for 1 MiB, 2 ms as one string, 12 ms as 19,000 small test cases, where parsing
        those from the claim answer took 30 ms (measured on the dev box)."""
        n = task_data_bytes(self.task_answer, self.task_kind, self.task_metadata)
        if n > MAX_TASK_DATA_BYTES:
            raise ValueError(f"the task's answer, kind and metadata take {n} bytes as JSON, over "
                             f"MAX_TASK_DATA_BYTES ({MAX_TASK_DATA_BYTES})")
        return self


class ClaimResponse(Strict):
    jobs: list[VerificationJob] = Field(max_length=64)  # ClaimRequest.max_jobs


class CheckResult(Strict):
    """One check's outcome, with the numbers an auditor needs to see why."""

    name: str = Field(max_length=64)
    passed: bool
    stats: dict[str, Any] = Field(default_factory=dict)
    detail: str = Field(default="", max_length=2000)


# Checks whose failure can be no doing of the worker: only the reward check, when the
# coordinator's reward and the verifier's recomputation of it disagree (a scorer that ran out
# of wall clock on one side's busier machine, a scorer that is not deterministic). The worker
# sends token ids, never rewards (its own `claimed_rewards` are a lie when false, and that is its
# fault), so such a dispute says nothing about its honesty.
NO_FAULT_CHECKS = frozenset({"reward"})


class Verdict(Strict):
    """Verifier -> coordinator (`POST /v1/verdicts`), signed by a configured verifier key.

    `submission_sha256` and `lease_sha256` bind the verdict to exactly what was judged
    (`protocol.envelope.envelope_digest` of the job's two envelopes): the coordinator refuses a
    verdict whose digests are not those of the submission and lease it stored.

    `worker_fault` False: a rejection that is not the worker's doing (every failed check is in
    `NO_FAULT_CHECKS`, and the verifier says the failure is a dispute between the coordinator's
    and its own scoring): the group is not trained, and the worker is neither banned nor
    debited. Left out of the body when True, so the bytes of every other verdict are those
    verifiers sent before the field (a coordinator from before it accepts them)."""

    submission_id: Ident
    submission_sha256: Hex64 = Field(description="envelope_digest of the submission envelope judged")
    lease_sha256: Hex64 = Field(description="envelope_digest of the lease envelope judged")
    accepted: bool
    full_check: bool
    checks: list[CheckResult] = Field(max_length=1024)
    reason: str = Field(default="", max_length=2000)
    worker_fault: bool = Field(True, description="False: a rejection that is no doing of the worker (see the "
                                                 "class docstring); never on an acceptance")

    @model_serializer(mode="wrap")
    def _without_a_default_fault(self, handler):
        return _without(handler(self), "worker_fault", True)


class VerdictBatch(Strict):
    """Verifier -> coordinator (`POST /v1/verdicts/batch`): the verdicts of one claim in one
    request. Not signed itself: each element is a `verdict` envelope signed by a configured
    verifier key, checked and applied on its own exactly as at `POST /v1/verdicts` (one bad
    element changes nothing for the others)."""

    envelopes: list[Envelope] = Field(min_length=1, max_length=256)


class VerdictOutcome(Strict):
    """What `POST /v1/verdicts` would have answered for one element of a `VerdictBatch`."""

    status: int = Field(description="200, or the HTTP status the single route would have refused it with")
    detail: str = Field(default="", max_length=2000)


class VerdictBatchResponse(Strict):
    results: list[VerdictOutcome]


# -- trainer <-> coordinator ----------------------------------------------------------------
class BatchRequest(Strict):
    """Trainer -> coordinator (`POST /v1/trainer/batch`), signed by the operator key:
    take up to `max_groups` accepted groups whose policy version is >= min_policy_version.
    A group handed out is consumed only when the trainer acknowledges it (`BatchAck`); one not
    acknowledged within the coordinator's `batch_ack_timeout_s` is handed out again."""

    max_groups: int = Field(ge=1, le=4096)
    min_policy_version: int = Field(ge=0, le=MAX_VERSION)
    wait_s: float = Field(default=0.0, ge=0.0, le=60.0, description="long-poll: wait this long for groups")


class TrainingGroup(Strict):
    """One accepted, verified group, ready for a GRPO step."""

    submission_id: Ident
    task_id: Ident
    worker_id: Ident
    policy_version: int = Field(ge=0, le=MAX_VERSION)
    prompt_token_ids: list[int] = Field(max_length=MAX_TOKENS_PER_SEQUENCE)
    completions: list[list[int]] = Field(max_length=MAX_GROUP_SIZE)
    finish_reasons: list[str] = Field(max_length=MAX_GROUP_SIZE)
    rewards: list[float] = Field(max_length=MAX_GROUP_SIZE)
    advantages: list[float] = Field(max_length=MAX_GROUP_SIZE)
    temperature: float


class BatchResponse(Strict):
    groups: list[TrainingGroup] = Field(max_length=4096)  # BatchRequest.max_groups
    dropped_stale: int = Field(default=0, description="groups dropped because they fell out of the async window")


# Why the trainer did not train an acknowledged group: every advantage zero (no GRPO signal),
# outside its pass-rate window, or below its staleness limit by the time a step could take it.
UnusedReason = Literal["zero_advantage", "pass_rate", "stale"]


class BatchAck(Strict):
    """Trainer -> coordinator (`POST /v1/trainer/ack`), signed by the operator key: these
    handed-out groups are durably in the trainer's hands (spooled, or already trained), so the
    coordinator marks them consumed and never hands them out again. Acknowledging a group twice,
    or one that is not handed out, changes nothing."""

    submission_ids: list[Ident] = Field(min_length=1, max_length=4096)
    unused: dict[Ident, UnusedReason] = Field(
        default_factory=dict, max_length=4096,
        description="acknowledged groups the trainer will not train, and why (each one of submission_ids): "
                    "the coordinator counts them as waste (GET /v1/stats `waste`)")

    @model_validator(mode="after")
    def _unused_are_acknowledged(self) -> "BatchAck":
        extra = set(self.unused) - set(self.submission_ids)
        if extra:
            raise ValueError(f"unused names {len(extra)} group(s) that are not in submission_ids; list them there too")
        return self


class BatchAckResponse(Strict):
    acknowledged: int = Field(description="groups that went from handed out to consumed with this ack")


class EvalReport(Strict):
    """Trainer -> coordinator (`POST /v1/trainer/eval`), signed by the operator key: the
    held-out evaluation of one policy version. The coordinator keeps the newest report per
    version and shows them as the dashboard's training curve; a report changes nothing else."""

    policy_version: int = Field(ge=0, le=MAX_VERSION)
    step: int = Field(default=0, ge=0, le=MAX_VERSION)
    greedy_accuracy: float = Field(ge=0.0, le=1.0, description="share of held-out tasks answered exactly, greedy")
    sampled_accuracy: float | None = Field(default=None, ge=0.0, le=1.0, description="the same, sampled")
    num_tasks: int = Field(ge=1, le=10_000_000)
    seconds: float = Field(default=0.0, ge=0.0, description="time the evaluation took")


# -- policy versions (trainer/origin -> everyone) -------------------------------------------
class FileEntry(Strict):
    path: str = Field(max_length=512, pattern=r"^[A-Za-z0-9_.\-][A-Za-z0-9_.\-/]*$")
    size: int = Field(ge=0)
    sha256: Hex64


class ShardEntry(Strict):
    """Bytes [offset, offset+size) of file `path`."""

    index: int = Field(ge=0)
    path: str = Field(max_length=512)
    offset: int = Field(ge=0)
    size: int = Field(ge=0)
    sha256: Hex64


class PolicyManifest(Strict):
    """Trainer (origin) -> relays, workers, verifiers, coordinator; signed by the operator key
    (kind `policy_manifest`). A checkpoint is the set of `files`; each file is cut into
    `shards`. Nothing may be loaded unless every shard matches and every file's hash too."""

    run_id: Ident
    version: int = Field(ge=0, le=MAX_VERSION)
    step: int = Field(ge=0, le=MAX_VERSION)
    created_at: float
    shard_size: int = Field(ge=1)
    files: list[FileEntry] = Field(min_length=1, max_length=10_000)
    shards: list[ShardEntry] = Field(min_length=1, max_length=1_000_000)
    config_sha256: Hex64 = Field(description="sha256 of config.json, so a config change is visible")
    total_bytes: int = Field(ge=0)


class PolicyInfo(Strict):
    """`GET /v1/policy`: the current version and its signed manifest (None before the first)."""

    version: int | None = Field(ge=0, le=MAX_VERSION)
    manifest: Envelope | None
    async_window: int = Field(ge=0, le=MAX_VERSION)
    relays: list[RelayUrl] = Field(max_length=MAX_RELAYS)


RegistrationResponse.model_rebuild()
