"""SIGKILL the coordinator at random moments under load, restart it, and check that nothing it
acknowledged was lost: submissions, verdicts, the contribution ledger, lease states, nonces.

A real `python -m swarmrl coordinator` process on 127.0.0.1 with a SQLite file (restarted with
one and with two server processes in turn); three client
threads play a worker, a verifier and the trainer over real HTTP and record every request
the coordinator answered with 2xx. Requests cut off by the kill are unknown either way and
are not counted; everything acknowledged must be in the database after each restart.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from protocol.config import dump_toml
from protocol.envelope import AUDIENCE_COORDINATOR, envelope_digest
from protocol.envelope import seal as seal_for
from protocol.identity import KeyPair
from protocol.manifest import build_manifest, sign_manifest
from protocol.messages import (
    KIND_CLAIM,
    KIND_LEASE_REQUEST,
    KIND_REGISTRATION,
    KIND_SUBMISSION,
    KIND_VERDICT,
    ClaimRequest,
    ClaimResponse,
    Completion,
    EngineInfo,
    HardwareReport,
    Lease,
    LeaseRequest,
    Registration,
    Submission,
    Verdict,
)
from protocol.proof import build_proof, to_b64
from tests.verdict_fixtures import passing_checks

RUN_ID = "swarmrl-run"  # the CoordinatorConfig default this test runs with


def seal(kind, body, key):
    return seal_for(kind, body, key, run_id=RUN_ID, audience=AUDIENCE_COORDINATOR)

CYCLES = 4


class Coordinator:
    def __init__(self, tmp: Path, cfg_path: Path):
        self.tmp, self.cfg_path = tmp, cfg_path
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, workers: int = 1) -> None:
        port_file = self.tmp / "coordinator" / "coordinator.port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen([sys.executable, "-m", "swarmrl", "coordinator", "--config", str(self.cfg_path),
                                      "--set", f"workers={workers}"],
                                     stdout=open(self.tmp / "coordinator.log", "ab"), stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert self.proc.poll() is None, (self.tmp / "coordinator.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "coordinator did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


class Ledger:
    """What the coordinator acknowledged (2xx), as seen by the clients."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases: dict[str, Lease] = {}
        self.submitted: dict[str, str] = {}     # submission id -> lease id
        self.verdicts: dict[str, bool] = {}     # submission id -> accepted
        self.verdict_worker: dict[str, str] = {}  # submission id -> worker id (its submit answer may be lost)
        self.envelopes: list[tuple[str, str]] = []  # (path, envelope json) acknowledged, for replays


def _completions(lease: Lease, proofs: dict[int, str]) -> list[Completion]:
    out = []
    for i in range(len(lease.seeds)):
        toks = [5 + i, 6, lease.eos_token_id]
        out.append(Completion(token_ids=toks, finish_reason="eos", proof=proofs[len(toks)]))
    return out


def _post(http: httpx.Client, url: str, path: str, env) -> httpx.Response | None:
    try:
        return http.post(url + path, content=env.model_dump_json(), headers={"content-type": "application/json"})
    except httpx.HTTPError:
        return None


def _register(http: httpx.Client, url: str, key: KeyPair) -> bool:
    env = seal(KIND_REGISTRATION, Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1)), key)
    r = _post(http, url, "/v1/workers/register", env)
    return r is not None and r.status_code == 200


def _traffic(stop: threading.Event, coord: Coordinator, ledger: Ledger, worker: KeyPair, verifier: KeyPair,
             proofs: dict[int, str], role: str, workers: list[KeyPair] | None = None) -> None:
    rng = random.Random(hash(role))
    with httpx.Client(timeout=5) as http:
        while not stop.is_set():
            url = coord.url
            if role == "worker":
                env = seal(KIND_LEASE_REQUEST, LeaseRequest(max_tasks=2), worker)
                r = _post(http, url, "/v1/leases", env)
                if r is not None and r.status_code == 403 and workers is not None:
                    # banned by one of the verifier's random rejections: carry on as a new identity
                    # (its acknowledged registration is checked after each restart like the rest)
                    fresh = KeyPair.generate()
                    if _register(http, url, fresh):
                        with ledger.lock:
                            workers.append(fresh)
                        worker = fresh
                    continue
                if r is None or r.status_code != 200:
                    time.sleep(0.05)
                    continue
                leases = [Lease.model_validate(e["body"]) for e in r.json()["leases"]]
                with ledger.lock:
                    ledger.envelopes.append(("/v1/leases", env.model_dump_json()))
                    ledger.leases.update({l.lease_id: l for l in leases})
                for lease in leases:
                    sub = Submission(lease_id=lease.lease_id, policy_version=lease.max_policy_version,
                                     completions=_completions(lease, proofs), engine=EngineInfo(name="test", dtype="float32"))
                    env = seal(KIND_SUBMISSION, sub, worker)
                    r = _post(http, url, "/v1/submissions", env)
                    if r is not None and r.status_code == 200:
                        with ledger.lock:
                            ledger.submitted[r.json()["submission_id"]] = lease.lease_id
                            ledger.envelopes.append(("/v1/submissions", env.model_dump_json()))
            else:
                r = _post(http, url, "/v1/verification/claim", seal(KIND_CLAIM, ClaimRequest(max_jobs=4), verifier))
                if r is None or r.status_code != 200:
                    time.sleep(0.05)
                    continue
                for job in ClaimResponse.model_validate_json(r.content).jobs:
                    accepted = rng.random() < 0.9
                    env = seal(KIND_VERDICT, Verdict(submission_id=job.submission_id, accepted=accepted,
                                                     full_check=True, checks=passing_checks() if accepted else [],
                                                     submission_sha256=envelope_digest(job.submission),
                                                     lease_sha256=envelope_digest(job.lease)), verifier)
                    r = _post(http, url, "/v1/verdicts", env)
                    if r is not None and r.status_code == 200:
                        with ledger.lock:
                            ledger.verdicts[job.submission_id] = accepted
                            ledger.verdict_worker[job.submission_id] = job.worker_id
                            ledger.envelopes.append(("/v1/verdicts", env.model_dump_json()))
                time.sleep(0.01)


def _check(coord: Coordinator, ledger: Ledger, workers: list[KeyPair]) -> dict:
    with httpx.Client(base_url=coord.url, timeout=10) as http, ledger.lock:
        for sid, lease_id in ledger.submitted.items():
            r = http.get(f"/v1/submissions/{sid}")
            assert r.status_code == 200, f"acknowledged submission {sid} lost"
            status = r.json()["status"]
            if sid in ledger.verdicts:
                want = "accepted" if ledger.verdicts[sid] else "rejected"
                assert status in (want, "dropped"), f"{sid}: acknowledged verdict {want}, found {status}"
        stats = http.get("/v1/stats", headers={"authorization": f"Bearer {OPERATOR_TOKEN}"}).json()
        by_worker = {w["worker_id"]: w for w in stats["workers"]}
        for key in workers:
            w = by_worker[key.peer_id]
            acked_accepts = sum(1 for sid, ok in ledger.verdicts.items()
                                if ok and ledger.verdict_worker[sid] == key.peer_id)
            assert w["accepted"] >= acked_accepts, "ledger lost an acknowledged acceptance"
        # the ledger agrees with the submissions it counts
        accepted_rows = stats["submissions"].get("accepted", 0) + stats["buffer"]["by_state"].get("dropped", 0)
        assert sum(w["accepted"] for w in stats["workers"]) == accepted_rows
        # every acknowledged lease is still known, and submitted leases stay submitted
        for lease_id, lease in list(ledger.leases.items())[-20:]:
            worker = next(k for k in workers if k.peer_id == lease.worker_id)
            sub = Submission(lease_id=lease_id, policy_version=lease.max_policy_version,
                             completions=_completions(lease, _check.proofs), engine=EngineInfo(name="t", dtype="float32"))
            r = http.post("/v1/submissions", content=seal(KIND_SUBMISSION, sub, worker).model_dump_json())
            assert r.status_code != 404, f"acknowledged lease {lease_id} lost"
            if lease_id in ledger.submitted.values():
                assert r.status_code in (403, 409), r.text  # 403 once the worker is banned
        # nonces survive: every acknowledged message is refused as a replay (or, once older than
        # the clock-skew window, as stale)
        for path, env_json in ledger.envelopes[-30:]:
            r = http.post(path, content=env_json)
            assert r.status_code in (403, 409) or (r.status_code == 400 and "clock" in r.text), (path, r.text)
        return stats


OPERATOR_TOKEN = "restart-test-operator-token"


@pytest.mark.timeout(300)
def test_sigkill_at_any_moment_loses_nothing_acknowledged(tmp_path):
    from swarmrl.modelkit import init_tiny_model

    model = tmp_path / "model"
    init_tiny_model(model, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    operator, verifier = KeyPair.generate(), KeyPair.generate()
    worker_keys = [KeyPair.generate(), KeyPair.generate()]
    from coordinator.config import LOOPBACK, CoordinatorConfig

    cfg = CoordinatorConfig(operator_key=operator.public.hex, verifier_keys=[verifier.public.hex], model=str(model),
                            data_dir=tmp_path / "coordinator", key_file=tmp_path / "coordinator" / "key", port=0,
                            group_size=4, archive=True, archive_interval_s=0.2, housekeeping_interval_s=0.2,
                            limits={"burst": 100000, "exempt_addresses": LOOPBACK},
                            join={"pow_difficulty": 0},  # its workers register by hand, without proof of work
                            dashboard={"operator_token": OPERATOR_TOKEN})  # /v1/stats in full (buffer.by_state)
    cfg_path = tmp_path / "coordinator.toml"
    cfg_path.write_text(dump_toml(cfg))
    proofs = {n: to_b64(build_proof(__import__("torch").randn(n, 32))) for n in (3,)}
    _check.proofs = proofs
    coord = Coordinator(tmp_path, cfg_path)
    ledger = Ledger()
    rng = random.Random(0)
    try:
        coord.start()
        with httpx.Client(base_url=coord.url) as http:
            assert cfg.run_id == RUN_ID
            m = build_manifest(model, run_id=cfg.run_id, version=0, step=0)
            assert http.post("/v1/policy", content=sign_manifest(m, operator).model_dump_json()).status_code == 200
            for key in worker_keys:
                assert _register(http, coord.url, key)
        last = None
        for cycle in range(CYCLES):
            stop = threading.Event()
            with ledger.lock:
                current = list(worker_keys[-2:])
            threads = [threading.Thread(target=_traffic, args=(stop, coord, ledger, k, verifier, proofs, "worker",
                                                                worker_keys)) for k in current]
            threads.append(threading.Thread(target=_traffic, args=(stop, coord, ledger, None, verifier, proofs,
                                                                    "verifier")))
            for t in threads:
                t.start()
            # let some work be acknowledged in this cycle, then kill at a random moment
            start = len(ledger.submitted) + len(ledger.verdicts)
            deadline = time.monotonic() + 60
            while len(ledger.submitted) + len(ledger.verdicts) < start + 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
            coord.kill()
            stop.set()
            for t in threads:
                t.join(timeout=30)
            coord.start(workers=1 + (cycle % 2))  # one server process, then two sharing the database
            last = _check(coord, ledger, worker_keys)
        print(f"acknowledged: {len(ledger.leases)} leases, {len(ledger.submitted)} submissions, {len(ledger.verdicts)} verdicts")
        assert len(ledger.submitted) > 0 and len(ledger.verdicts) > 0
        assert last["submissions"], last
        # the archive catches up after the kills: every acknowledged submission is in it (at least once)
        archived: set[str] = set()
        deadline = time.monotonic() + 60
        while not set(ledger.submitted) <= archived and time.monotonic() < deadline:
            time.sleep(0.3)
            archived = _archived_ids(tmp_path / "coordinator" / "archive")
        assert set(ledger.submitted) <= archived
    finally:
        coord.kill()


def _archived_ids(root: Path) -> set[str]:
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for f in root.glob("submissions/*/*.parquet"):  # finished files only: temporaries start with '.'
        ids.update(pq.read_table(f, columns=["submission_id"]).column(0).to_pylist())
    return ids
