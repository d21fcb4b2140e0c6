"""Configuration of the coordinator service (`swarmrl coordinator --config coordinator.toml`).

Every field is documented; `deploy/` and `examples/` hold committed configs that a test parses.
Environment variables override the file as `SWARMRL_COORDINATOR_<FIELD>` (nested with `__`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.dtypes import check_allowed
from protocol.tracking import TrackingConfig
from protocol.messages import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_POW_DIFFICULTY,
    MAX_REF_CHARS,
    MAX_RELAYS,
    MAX_TASK_DATA_BYTES,
    MAX_VERIFIER_KEYS,
    MAX_VERSION,
    RelayUrl,
    RunId,
    json_bytes,
)
from shardcast.p2p.config import P2PConfig


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field("arithmetic", max_length=200, description="task source name: arithmetic, jsonl, dataset, reasoning_gym:<name>, "
                      "<module>:<object> or a swarmrl.tasks entry point (see protocol.tasks)")
    seed: int = Field(0, description="seed of the task stream (and of a seeded train/held-out split)")
    options: dict = Field(default_factory=dict, description="options passed to the task source: its own, the scoring "
                          "options (compare, extract, answer_tag, format_reward, scorer) and the prompt options "
                          "(system_prompt, prompt_template)")

    @field_validator("options")
    @classmethod
    def _options_bounded(cls, v: dict) -> dict:
        """Served to every role in RunInfo.tasks: held to TaskSpec's bound (MAX_TASK_DATA_BYTES)."""
        try:
            n = json_bytes(v)
        except ValueError as exc:
            raise ValueError(f"task options must hold JSON values only ({exc})") from None
        if n > MAX_TASK_DATA_BYTES:
            raise ValueError(f"task options take {n} bytes as JSON, over MAX_TASK_DATA_BYTES ({MAX_TASK_DATA_BYTES}); "
                             "keep large data in the task files")
        return v


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, gt=0, description="sampling temperature every worker must use")
    max_tokens: int = Field(8, ge=1, description="completion length cap")


class CheckRateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    initial: float = Field(1.0, ge=0, le=1, description="share of a new worker's submissions fully checked")
    floor: float = Field(0.1, ge=0, le=1, description="the share never falls below this")
    halve_every: int = Field(20, ge=1, description="the share halves after this many clean checks")


class NearTieConfig(BaseModel):
    """The per-worker test of how often its tokens miss the seeded choice within the sampling
    tolerances (`coordinator.rules.near_ties` explains it and the measured honest rates)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="ban workers whose near-tie count is implausible for honest noise")
    honest_rate: float = Field(0.005, gt=0, le=1, description="the highest share of checked tokens that honest "
                                                               "numeric noise moves off the seeded choice")
    alpha: float = Field(1e-6, gt=0, lt=1, description="ban when the worker's count is less likely than this "
                                                       "at honest_rate")


LOOPBACK = ["127.0.0.1", "::1"]  # what local swarms (the demo, tests) put in limits.exempt_addresses


class DriftLimits(BaseModel):
    """One dtype's proof-drift test: a CUSUM over the error of each full check's proof."""

    model_config = ConfigDict(extra="forbid")
    allowance: float = Field(gt=0, description="error per full check that honest workers stay below (mean mantissa "
                                               "steps, an exponent mismatch counting 8): only the excess accumulates")
    limit: float = Field(gt=0, description="ban when the accumulated excess reaches this")
    worst_allowance: float = Field(gt=0, description="the same for the submission's worst completion (its mean "
                                                     "mantissa error): honest workers' worst stays below this")
    worst_limit: float = Field(gt=0, description="ban when the worst completions' accumulated excess reaches this")


class ProofDriftConfig(BaseModel):
    """The per-worker sequential test over the proof statistics of its full checks
    (`coordinator.rules.proof_drift` explains it and the measured honest levels)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="ban workers whose proofs drift from the policy's over their full checks")
    float32: DriftLimits = Field(default_factory=lambda: DriftLimits(allowance=0.01, limit=0.2, worst_allowance=0.05,
                                                                     worst_limit=0.5),
                                 description="the test for submissions judged in float32")
    # bf16: above the honest levels measured (another attention kernel: 0.41 on average, 64-token
    # completions: ~0.5, vLLM's own CPU kernels: 0.61, which 0.6 banned after 14 honest checks)
    bfloat16: DriftLimits = Field(default_factory=lambda: DriftLimits(allowance=0.9, limit=2.0, worst_allowance=2.5,
                                                                      worst_limit=3.0),
                                  description="the test for submissions judged in bfloat16")


class StandingConfig(BaseModel):
    """What else counts against a worker's standing (`coordinator.rules.reputation`)."""

    model_config = ConfigDict(extra="forbid")
    hold_until_checked: bool = Field(True, description="accepted groups that were not fully checked wait in the buffer "
                                                       "until a later full check of the same worker passes (a ban "
                                                       "drops them): a worker that turns dishonest gets none of its "
                                                       "unchecked groups trained")
    drop_share: float = Field(0.1, ge=0, le=1, description="share of its leases a worker may release or let expire "
                                                            "without cost")
    drop_slack: int = Field(64, ge=0, description="... plus this many (one restart giving back a full quota)")


class LimitsConfig(BaseModel):
    """What one client may cost the coordinator. The per-address limits, body caps, timeouts and
    connection caps are checked before a request's body is read (`coordinator.admission`,
    `protocol.guard`); the per-identity limit after its signature is verified."""

    model_config = ConfigDict(extra="forbid")
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="largest request body accepted on any route; each route's own cap (sized from its message type, group_size and sampling.max_tokens) is at most this")
    max_leases_per_worker: int = Field(64, ge=1, description="leases one worker may hold at once")
    requests_per_s_per_worker: float = Field(50.0, description="rate limit per identity (token bucket)")
    requests_per_s_per_address: float = Field(200.0, description="rate limit per client address, charged when a request's headers arrive (token bucket; an IPv6 address counts by its /64)")
    burst: int = Field(100, description="token bucket size")
    bytes_per_s_per_address: float = Field(2 * 1024 * 1024, ge=0, description="request body bytes per second one client address may send (token bucket charged with the declared Content-Length before the body is read; 0 = no byte budget)")
    byte_burst_per_address: int = Field(16 * 1024 * 1024, ge=1024, description="size of the per-address byte bucket")
    max_connections_per_address: int = Field(32, ge=0, description="open connections one client address may hold (0 = no cap); more are answered 429 and closed")
    max_connections: int = Field(4096, ge=1, description="open connections in all (uvicorn's limit_concurrency: 503 beyond it)")
    header_timeout_s: float = Field(10.0, gt=0, description="a request's line and headers must arrive within this many seconds of its first byte (or of the connection's opening); slower ones are closed (slowloris)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request's body must arrive within this many seconds of its headers; slower ones are closed")
    keepalive_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this many seconds")
    verify_processes: int = Field(1, ge=1, le=64, description="processes that verify large request bodies (over 32 KiB) before the server parses them, so a flood of unsigned or forged bodies cannot stall /health and small requests")
    verify_queue: int = Field(32, ge=0, description="large bodies that may wait for a verify process; more are answered 429 (busy)")
    intake_threads: int = Field(2, ge=0, le=64, description="threads that score submissions off the event loop (0: on the loop): a scorer that takes its whole time limit on hostile text holds one of them, not /health and every other request (bench/hostile.py, clean: /health p99 ~36 ms with one against ~70 ms with 0, submit p99 ~95 ms against ~40 ms). They serve signers in turn, established workers first, and new identities hold at most all but one of them (coordinator.fairpool): with two or more, one is always free for workers with verified work; beyond the sandbox's 2 pre-forked children more threads wait for forks")
    intake_established_after: int = Field(3, ge=1, description="verified accepted submissions after which a worker's submissions are scored in the established lane of the intake threads (before that: the lane of new identities)")
    intake_queue: int = Field(64, ge=0, description="submissions that may wait for an intake thread; more are answered 429 (busy)")
    swarm_in_flight: int = Field(32, ge=1, description="requests of the swarm's routes (registration, heartbeats, leases, submissions, public views) handled at once in one server process; the trainer's, verifier's and operator's routes never wait for them (coordinator.gate)")
    swarm_waiting: int = Field(2048, ge=0, description="swarm requests that may wait for a place in one server process; more are answered 429 (busy)")
    swarm_wait_s: float = Field(15.0, gt=0, description="longest a swarm request waits for a place before it is answered 429 (busy); at most half of body_timeout_s is used, since a waiting body is not read")
    trusted_proxies: list[str] = Field(default_factory=list, description="addresses or CIDRs of reverse proxies whose X-Forwarded-For header names the client (empty: the header is ignored and the TCP peer is the client)")
    exempt_addresses: list[str] = Field(
        default_factory=list,
        description="client addresses exempt from the per-address limits (rate, bytes, connections) and the "
                    "identities-per-address rule (empty by default; a local swarm on one machine lists loopback)")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        return v

    @field_validator("exempt_addresses")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address (CIDRs are not allowed here)") from None
        return v


class LeaseSizingConfig(BaseModel):
    """How many leases a worker may hold, from its measured throughput and the current version
    rate, so that what it is given can be submitted, verified and trained before it goes stale
    (`coordinator.rules.lease_size`; never more than limits.max_leases_per_worker)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="size leases from measurements (off: only limits.max_leases_per_worker)")
    history: int = Field(16, ge=1, le=1000, description="a worker's newest submitted leases that measure its rate")
    min_history: int = Field(4, ge=1, description="submitted leases before a worker's rate counts (until then it "
                             "may hold new_worker_leases)")
    new_worker_leases: int = Field(8, ge=1, description="leases a worker may hold before its rate is known")
    min_versions: int = Field(3, ge=2, description="policy versions before their interval counts (until then only "
                              "limits.max_leases_per_worker applies)")
    margin_s: float = Field(0.5, ge=0, description="seconds kept back from each lease's budget for the trainer's take "
                            "and the network")
    demand_versions: int = Field(1, ge=1, le=1000, description="policy versions before what the trainer takes per "
                                 "version (all groups it acknowledged / versions) bounds the swarm's leases")
    demand_steps: float = Field(2.0, gt=0, description="the swarm as a whole holds at most this many versions' worth "
                                "of what the trainer takes on their way to it (never more than staleness + 1): "
                                "enough that the trainer rarely waits, little enough that the buffer turns over "
                                "before its groups go stale")
    new_identity_share: float = Field(0.25, gt=0, le=1, description="share of the swarm's bound (demand_steps) that "
                                      "workers without limits.intake_established_after verified accepted "
                                      "submissions may hold between them (leases and queued submissions), on top "
                                      "of the bound, which is the established workers' own once any of them is "
                                      "active: throw-away identities that take leases and sit on them cannot hold "
                                      "the room honest workers need")
    new_group_share: float = Field(0.25, gt=0, le=1, description="share of the new identities' share (above) that "
                                   "new identities of one address group (an IPv6 /48; an IPv4 address is its own) may hold between "
                                   "them (at least one lease; limits.exempt_addresses are not capped; 1 = no cap): "
                                   "throw-away identities on one line's many addresses cannot fill it alone")
    retry_share: float = Field(0.25, gt=0, le=1, description="a worker refused because the swarm holds enough "
                               "already asks again after this share of the version interval (0.2-1 s): room "
                               "appears when the trainer takes its next batch")


class DashboardConfig(BaseModel):
    """Who sees what on the dashboard and GET /v1/stats. Without the operator token a reader gets
    the anonymous views: no contributor addresses, no undecided submission, and for decided ones
    the outcome and the failed checks' names but not full_check nor any check's numbers."""

    model_config = ConfigDict(extra="forbid")
    operator_token_file: str = Field("", description="file holding the operator token that unlocks the full views (sent as 'Authorization: Bearer <token>'; at least 16 characters; empty = no file)")
    operator_token: str = Field("", description="the operator token itself, when not in a file (prefer the file or the environment variable SWARMRL_COORDINATOR_DASHBOARD__OPERATOR_TOKEN); with neither, the full views are off")


class JoinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allowlist: list[str] = Field(default_factory=list, description="if set, only these hex public keys may register")
    pow_difficulty: int = Field(16, ge=0, le=MAX_POW_DIFFICULTY, description="leading zero bits of the registration proof of work (0 = off; 16 costs ~0.1 s of one core, 22 ~5 s)")
    pow_epoch_s: float = Field(3600.0, gt=0, description="the proof-of-work challenge changes this often (a solution "
                                                         "is good for the epoch it was made in and the next)")
    ban_cooldown_s: float = Field(86400.0, ge=0, description="a banned identity still counts against its address's "
                                                             "identities_per_address for this long")
    identities_per_address: int = Field(1, ge=0, description="active identities allowed per client address (0 = unlimited); addresses in limits.exempt_addresses are not counted")
    heartbeat_interval_s: float = Field(5.0, description="how often workers should heartbeat")
    missed_heartbeats_gone: int = Field(6, description="a worker missing this many heartbeats is gone; its leases return")


class CheckpointArchiveConfig(BaseModel):
    """Which policy versions the archive keeps at data_dir/archive/checkpoints/ so that any
    archived rollout can be re-verified (`swarmrl audit reverify`). A version is kept if any
    rule keeps it; the others are deleted once a newer version is archived."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="fetch the versions retention keeps through the relays (needs `archive` and `relays`)")
    keep_last: int = Field(16, ge=0, description="keep the newest N versions (0 = keep every version: any archived rollout can be re-verified, at one checkpoint of disk per version)")
    keep_every: int = Field(10, ge=0, description="also keep every k-th version for spot audits of long runs (0 = off)")
    keep_rejected: bool = Field(True, description="also keep the versions rejected submissions claim (the evidence behind each ban), within the two budgets below")
    rejected_max_versions: int = Field(16, ge=0, description="at most this many versions are kept only because rejected submissions claim them; the oldest are evicted first (one garbage submission per version would otherwise pin every checkpoint)")
    rejected_max_bytes: int = Field(20 * 1024**3, ge=0, description="at most this many bytes (the manifests' sizes) of versions kept only because rejected submissions claim them; the oldest are evicted first")
    poll_interval_s: float = Field(2.0, gt=0, description="how often newly announced versions are looked for")


class CoordinatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("allowed_dtypes")
    @classmethod
    def _dtypes(cls, v: list[str]) -> list[str]:
        return check_allowed(v)

    run_id: RunId = Field("swarmrl-run", description="name of the run; part of every lease")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="experiment tracking of the "
                                     "coordinator's metrics (`protocol.tracking`; TensorBoard event files in "
                                     "data_dir/tracking by default)")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8700, description="port to listen on (0 picks a free port, written to data_dir/coordinator.port)")
    data_dir: Path = Field(Path("./swarmrl-data/coordinator"), description="state: database, archive")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite file in data_dir")
    key_file: Path = Field(Path("./swarmrl-data/keys/coordinator.key"), description="coordinator key (signs leases); created if missing")
    operator_key: str = Field(..., description="hex public key of the operator (trainer; signs policy manifests)")
    verifier_keys: list[str] = Field(default_factory=list, max_length=MAX_VERIFIER_KEYS, description="hex public keys whose verdicts are accepted")
    model: str = Field(..., min_length=1, max_length=MAX_REF_CHARS, description="model folder or hub id whose tokenizer encodes prompts")
    relays: list[RelayUrl] = Field(default_factory=list, max_length=MAX_RELAYS, description="shardcast URLs advertised to workers and verifiers")
    tasks: TaskConfig = Field(default_factory=TaskConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    allowed_dtypes: list[str] = Field(
        default_factory=lambda: ["float32", "bfloat16"],
        description="compute dtypes workers may use (float32, bfloat16; carried in every lease, and the verifier "
                    "rejects any other). bfloat16 admits GPUs' fast path but hides small weight changes in its "
                    "rounding (verifier/thresholds.py says what each dtype's limits catch); [\"float32\"] is "
                    "the strictest")
    group_size: int = Field(8, ge=2, le=256, description="samples per task (GRPO group)")
    async_window: int = Field(2, ge=0, le=MAX_VERSION, description="leases allow policy versions current-k..current (the run's one "
                              "window setting: the trainer takes it from GET /v1/run)")
    advantage_scale: bool = Field(True, description="advantages divide a group's centred rewards by their std (GRPO); "
                                  "false = only centre them (Dr. GRPO); computed once, at intake")
    lease_ttl_s: float = Field(60.0, gt=0, description="a lease not submitted in this time is re-leased")
    check_rate: CheckRateConfig = Field(default_factory=CheckRateConfig)
    near_ties: NearTieConfig = Field(default_factory=NearTieConfig)
    proof_drift: ProofDriftConfig = Field(default_factory=ProofDriftConfig)
    standing: StandingConfig = Field(default_factory=StandingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    lease_sizing: LeaseSizingConfig = Field(default_factory=LeaseSizingConfig)
    join: JoinConfig = Field(default_factory=JoinConfig)
    archive: bool = Field(True, description="archive submissions and verdicts as Parquet in data_dir/archive")
    max_clock_skew_s: float = Field(120.0, description="signed messages older or newer than this are refused")
    chat_template: bool = Field(False, description="encode prompts with the tokenizer's chat template (one user turn)")
    sqlite_synchronous: str = Field("NORMAL", description="SQLite synchronous mode: NORMAL survives a killed process, FULL also power loss")
    verification_claim_ttl_s: float = Field(120.0, gt=0, description="a claimed submission without a verdict after this long is handed to another verifier")
    verification_max_claims: int = Field(5, ge=1, description="a queued submission handed to verifiers this many times without a verdict (each claim expired: every verifier that took it failed to judge it) is dropped, without a ban (a submission no verifier can judge, or a version no verifier can fetch any more, was otherwise handed out again every verification_claim_ttl_s, first in every claim, forever)")
    verification_newcomer_wait_s: float = Field(2.0, ge=0, description="a submission from a worker without a clean full check yet is claimed after every other queued one, in claims of its own, until it has waited this long (throw-away identities are checked in full and must not delay workers with a record); 0 = oldest first")
    batch_ack_timeout_s: float = Field(60.0, gt=0, description="a group handed to the trainer and not acknowledged (spooled) within this long is handed out again; the trainer never trains a group twice")
    housekeeping_interval_s: float = Field(1.0, gt=0, description="how often expired leases and silent workers are swept")
    archive_interval_s: float = Field(5.0, gt=0, description="how often new submissions and verdicts are written to Parquet")
    log_level: str = Field("info", description="python logging level of the service")
    payload_retention_s: float = Field(86400.0, ge=0, description="a decided, archived and no longer needed submission's envelope is deleted from the database after this long (it stays in the Parquet archive); 0 keeps every envelope")
    workers: int = Field(1, ge=1, le=64, description="server processes sharing the listening socket and the database (2 uses both cores of a small machine; rate limits are split between them)")
    checkpoints: CheckpointArchiveConfig = Field(default_factory=CheckpointArchiveConfig,
                                                 description="policy versions kept for re-verification")
    dashboard_relay_poll_s: float = Field(3.0, gt=0, description="the dashboard asks each relay for its versions at most this often")
    dashboard_cache_s: float = Field(1.0, ge=0, description="dashboard answers and anonymous GET /v1/stats are reused this long, however many readers poll (0 = always fresh)")
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig, description="the operator token that unlocks the full dashboard views")
    p2p: P2PConfig = Field(default_factory=P2PConfig, description="libp2p swarm layer: the coordinator is the bootstrap peer (its multiaddrs are in GET /v1/run) and announces each policy version")
