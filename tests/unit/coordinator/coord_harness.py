"""A real coordinator on 127.0.0.1 for tests: real SQLite file, real HTTP, a clock the test
moves, seeded randomness. Helpers sign messages with the test's clock and snapshot the
whole database, so a test can show that a refused request changed nothing."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import select

from coordinator.app import create_app
from coordinator.config import LOOPBACK, CoordinatorConfig
from coordinator.context import Context, build_context
from coordinator.store import policy as policy_store
from coordinator.store.schema import metadata
from protocol.envelope import AUDIENCE_COORDINATOR, Envelope, envelope_signing_bytes, seal
from protocol.http import ServerThread
from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from protocol.messages import (
    KIND_BATCH_ACK,
    KIND_BATCH_REQUEST,
    KIND_CLAIM,
    KIND_HEARTBEAT,
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
    KIND_SUBMISSION,
    KIND_VERDICT,
    BatchAck,
    BatchRequest,
    ClaimRequest,
    ClaimResponse,
    Completion,
    EngineInfo,
    HardwareReport,
    Heartbeat,
    Lease,
    LeaseRequest,
    Registration,
    Submission,
    Verdict,
)
from protocol.window import window_floor
from tests.verdict_fixtures import passing_checks


class Clock:
    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


_PROOFS: dict[tuple[int, int], str] = {}


def proof_for(n_tokens: int, hidden_size: int = 32) -> str:
    """A real proof (protocol.proof) of random hidden states for n_tokens tokens: intake
    checks its structure; only the verifier compares values."""
    key = (n_tokens, hidden_size)
    if key not in _PROOFS:
        import torch

        from protocol.proof import build_proof, to_b64

        g = torch.Generator().manual_seed(n_tokens)
        _PROOFS[key] = to_b64(build_proof(torch.randn(n_tokens, hidden_size, generator=g)))
    return _PROOFS[key]


@dataclass
class Swarm:
    """One coordinator under test, plus the keys of an operator, a verifier and workers."""

    ctx: Context
    server: ServerThread
    http: httpx.Client
    clock: Clock
    operator: KeyPair
    verifier: KeyPair
    model_dir: Path
    workers: list[KeyPair] = field(default_factory=list)

    @property
    def cfg(self) -> CoordinatorConfig:
        return self.ctx.cfg

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        self.ctx.db.dispose()

    # -- raw requests --------------------------------------------------------------------
    def send(self, path: str, env: Envelope | bytes | str) -> httpx.Response:
        content = env.model_dump_json() if isinstance(env, Envelope) else env
        return self.http.post(path, content=content, headers={"content-type": "application/json"})

    def seal(self, kind, body, key: KeyPair, dt: float = 0.0, *, run_id: str | None = None,
             audience: str = AUDIENCE_COORDINATOR) -> Envelope:
        """Sign for this coordinator's run and role (or the `run_id`/`audience` given)."""
        return seal(kind, body, key, now=self.clock() + dt, run_id=run_id or self.cfg.run_id, audience=audience)

    def seal_raw(self, kind: str, body: dict, key: KeyPair, dt: float = 0.0) -> Envelope:
        """Sign any JSON body, valid or not (for hostile-input tests)."""
        env = self.seal(kind, Heartbeat(), key, dt)
        sig = key.sign(envelope_signing_bytes(kind, body, env.signer, env.timestamp, env.nonce, run_id=env.run_id,
                                              audience=env.audience))
        return env.model_copy(update={"body": body, "signature": sig})

    def post(self, path: str, kind: str, body, key: KeyPair) -> httpx.Response:
        return self.send(path, self.seal(kind, body, key))

    # -- the usual steps -----------------------------------------------------------------
    def new_worker(self) -> KeyPair:
        key = KeyPair.from_seed(random.Random(len(self.workers) + 1000).randbytes(32))
        r = self.post("/v1/workers/register", KIND_REGISTRATION,
                      Registration(hardware=HardwareReport(cpu_count=2, ram_bytes=1 << 30)), key)
        assert r.status_code == 200, r.text
        self.workers.append(key)
        return key

    def establish(self, *keys: KeyPair) -> None:
        """Give these workers the verified accepted submissions of an established worker
        (`limits.intake_established_after`): the intake's and the leases' established lane."""
        from coordinator.store import workers

        with self.ctx.db.write() as conn:
            for key in keys:
                workers.update_fields(conn, key.peer_id, accepted=self.cfg.limits.intake_established_after)

    def publish(self, version: int) -> httpx.Response:
        m = build_manifest(self.model_dir, run_id=self.cfg.run_id, version=version, step=version,
                           created_at=self.clock())
        return self.send("/v1/policy", sign_manifest(m, self.operator))

    def lease(self, key: KeyPair, n: int = 1) -> list[Lease]:
        r = self.post("/v1/leases", KIND_LEASE_REQUEST, LeaseRequest(max_tasks=n), key)
        assert r.status_code == 200, r.text
        return [Lease.model_validate(e["body"]) for e in r.json()["leases"]]

    def heartbeat(self, key: KeyPair) -> httpx.Response:
        return self.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(), key)

    def completions(self, lease: Lease, answer_tokens: list[int] | None = None) -> list[Completion]:
        out = []
        for i, _ in enumerate(lease.seeds):
            toks = (answer_tokens if answer_tokens is not None else [5 + i % 3, 6]) + [lease.eos_token_id]
            out.append(Completion(token_ids=toks, finish_reason="eos", proof=proof_for(len(toks))))
        return out

    def submission(self, lease: Lease, completions: list[Completion] | None = None, version: int | None = None
                   ) -> Submission:
        return Submission(lease_id=lease.lease_id,
                          policy_version=lease.max_policy_version if version is None else version,
                          completions=completions if completions is not None else self.completions(lease),
                          engine=EngineInfo(name="test", dtype="float32"))

    def submit(self, key: KeyPair, lease: Lease, **kw) -> httpx.Response:
        self.clock.advance(0.001)  # submissions arrive one after another
        return self.post("/v1/submissions", KIND_SUBMISSION, self.submission(lease, **kw), key)

    def submit_queued(self, key: KeyPair, n: int = 1) -> list[str]:
        """Lease `n` tasks for `key`, submit each (200 expected) and have the verifier claim them:
        the ids of `n` submissions waiting for a verdict."""
        out = []
        for lease in self.lease(key, n):
            r = self.submit(key, lease)
            assert r.status_code == 200, r.text
            out.append(r.json()["submission_id"])
        self.claim(64)
        return out

    def claim(self, n: int = 16, key: KeyPair | None = None):
        r = self.post("/v1/verification/claim", KIND_CLAIM, ClaimRequest(max_jobs=n), key or self.verifier)
        assert r.status_code == 200, r.text
        return ClaimResponse.model_validate_json(r.content).jobs

    def verdict(self, submission_id: str, accepted: bool, full_check: bool = True, reason: str = "",
                key: KeyPair | None = None, checks: list | None = None) -> httpx.Response:
        return self.post("/v1/verdicts", KIND_VERDICT, self.verdict_body(submission_id, accepted, full_check, reason,
                                                                          checks), key or self.verifier)

    def verdict_body(self, submission_id: str, accepted: bool, full_check: bool = True, reason: str = "",
                     checks: list | None = None) -> Verdict:
        """A Verdict naming the digests of the submission and lease this coordinator stored
        (what a verifier that judged the claimed job names); zeros for an unknown submission."""
        from coordinator.store import submissions
        from protocol.envelope import envelope_digest

        with self.ctx.db.read() as conn:
            row = submissions.judged(conn, submission_id)
        sub_d, lease_d = ("0" * 64, "0" * 64) if row is None else (
            row.envelope_sha256, envelope_digest(Envelope.model_validate_json(row.lease_envelope)))
        if checks is None:
            checks = passing_checks(full_check) if accepted else []
        return Verdict(submission_id=submission_id, accepted=accepted, full_check=full_check, checks=checks,
                       reason=reason, submission_sha256=sub_d, lease_sha256=lease_d)

    def batch(self, max_groups: int = 64, min_version: int | None = None, wait_s: float = 0.0) -> httpx.Response:
        """POST /v1/trainer/batch; `min_version` None: the async window's floor (a trainer whose
        staleness limit is the window; the coordinator keeps groups down to the floor asked for)."""
        if min_version is None:
            with self.ctx.db.read() as conn:
                min_version = window_floor(policy_store.current(conn), self.cfg.async_window)
        return self.post("/v1/trainer/batch", KIND_BATCH_REQUEST,
                         BatchRequest(max_groups=max_groups, min_policy_version=min_version, wait_s=wait_s),
                         self.operator)

    def ack(self, submission_ids: list[str], unused: dict[str, str] | None = None) -> httpx.Response:
        return self.post("/v1/trainer/ack", KIND_BATCH_ACK, BatchAck(submission_ids=submission_ids,
                                                                      unused=unused or {}), self.operator)

    def stats(self) -> dict:
        return self.http.get("/v1/stats").json()

    def metric(self, name: str, **labels: str) -> float:
        text = self.http.get("/metrics").text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def worker_info(self, key: KeyPair, *, operator: bool = True) -> dict:
        """GET /v1/workers/{id}: the operator's view (with the harness's token) or the public one."""
        headers = {"authorization": f"Bearer {OPERATOR_TOKEN}"} if operator else {}
        r = self.http.get(f"/v1/workers/{key.peer_id}", headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    def snapshot_worker(self, key: KeyPair) -> dict:
        from coordinator.store import workers

        with self.ctx.db.read() as conn:
            return dict(workers.get(conn, key.peer_id)._mapping)

    def snapshot_submission(self, submission_id: str) -> dict:
        from coordinator.store import submissions

        with self.ctx.db.read() as conn:
            return dict(submissions.get(conn, submission_id)._mapping)

    def snapshot(self) -> dict:
        """Every row of every table: equal snapshots mean nothing changed."""
        with self.ctx.db.read() as conn:
            return {t.name: sorted(tuple(r) for r in conn.execute(select(t)))
                    for t in metadata.sorted_tables}


OPERATOR_TOKEN = "harness-operator-token-0123456789"


def start_swarm(tmp: Path, model_dir: Path, *, rng_seed: int = 0, **overrides) -> Swarm:
    operator = KeyPair.from_seed(b"o" * 32)
    verifier = KeyPair.from_seed(b"v" * 32)
    # Every test client is on loopback: exempt it from the per-address limits unless a test
    # says otherwise (limits={"exempt_addresses": [], ...}); other `limits` keys merge in.
    limits = {"burst": 100_000, "exempt_addresses": LOOPBACK, **overrides.pop("limits", {})}
    fields = dict(operator_key=operator.public.hex, verifier_keys=[verifier.public.hex], model=str(model_dir),
                  data_dir=tmp / "coordinator", key_file=tmp / "coordinator" / "coordinator.key", port=0,
                  group_size=4, archive=False, limits=limits, dashboard_cache_s=0.0)
    overrides.setdefault("dashboard", {"operator_token": OPERATOR_TOKEN})
    # registrations here are hand-made requests: no proof of work unless a test asks for one
    overrides["join"] = {"pow_difficulty": 0, **overrides.get("join", {})}
    fields.update(overrides)
    cfg = CoordinatorConfig.model_validate(fields)
    clock = Clock()
    ctx = build_context(cfg, clock=clock, rng=random.Random(rng_seed))
    server = ServerThread(create_app(ctx, background=False)).start()
    return Swarm(ctx=ctx, server=server, http=httpx.Client(base_url=server.url, timeout=30), clock=clock,
                 operator=operator, verifier=verifier, model_dir=model_dir)
