"""A real coordinator and a real trainer process on 127.0.0.1, with the test playing worker and verifier.

The coordinator (`python -m swarmrl coordinator`) and the trainer (`python -m swarmrl
trainer`, with its shardcast origin inside) are child processes with their own config files.
The test registers a worker key, leases tasks, submits groups whose completions are chosen
by the test (some the right answer, some wrong, each with a structurally valid activation
proof) and accepts them with the verifier key, so groups reach the training buffer exactly
as they do in a swarm, and the trainer's whole contract (batch long-poll, checkpoints,
origin, /v1/policy, eval.csv, /health, /metrics) is exercised over HTTP.
"""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import httpx
import torch

from coordinator.config import LOOPBACK, CoordinatorConfig, SamplingConfig
from trainer.config import EvalConfig, TrainerConfig
from protocol import routes
from protocol.config import dump_toml
from protocol.envelope import AUDIENCE_COORDINATOR, envelope_digest, seal
from protocol.identity import KeyPair
from protocol.lm import load_tokenizer
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
    PolicyInfo,
    Registration,
    Submission,
    Verdict,
)
from protocol.proof import build_proof, to_b64
from protocol.tasks import get_source
from shardcast.config import OriginConfig
from swarmrl.procs import free_port
from tests.integration.worker_swarm import HOST, Proc
from tests.waiting import wait_until
from tests.verdict_fixtures import passing_checks


class TrainerRig:
    def __init__(self, root: Path, model_dir: Path, *, group_size: int = 4, groups_per_step: int = 2,
                 async_window: int = 1, eval_every: int = 1, **trainer_overrides):
        self.root, self.model_dir = root, model_dir
        self.operator, self.verifier, self.worker = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
        (root / "keys").mkdir(parents=True, exist_ok=True)
        self.operator.save(root / "keys" / "operator.key")
        self.coord_url = f"http://{HOST}:{free_port()}"
        self.coord_cfg = root / "coordinator.toml"
        self.coord_cfg.write_text(dump_toml(CoordinatorConfig(
            run_id="trainer-itest", host=HOST, port=int(self.coord_url.rsplit(":", 1)[1]),
            data_dir=root / "coordinator", key_file=root / "keys" / "coordinator.key",
            operator_key=self.operator.public.hex, verifier_keys=[self.verifier.public.hex], model=str(model_dir),
            group_size=group_size, sampling=SamplingConfig(temperature=1.0, max_tokens=6), async_window=async_window,
            archive=False, log_level="warning", limits={"exempt_addresses": LOOPBACK},
            join={"pow_difficulty": 0})))  # the rig registers its worker without solving one
        self.trainer_data = root / "trainer"
        fields = dict(run_id="trainer-itest", coordinator_url=self.coord_url, key_file=root / "keys" / "operator.key",
                      model=str(model_dir), data_dir=self.trainer_data,
                      origin=OriginConfig(host=HOST, port=0, data_dir=root / "origin", shard_size=64 * 1024),
                      threads=1, lr=1e-3, groups_per_step=groups_per_step, async_window=async_window,
                      eval=EvalConfig(every_versions=eval_every, num_tasks=10), port=0, batch_wait_s=1.0,
                      max_eval_tokens=6)
        fields.update(trainer_overrides)
        self.trainer_cfg = root / "trainer.toml"
        self.trainer_cfg.write_text(dump_toml(TrainerConfig(**fields)))
        self.procs: list[Proc] = []
        self.trainer: Proc | None = None
        self.http = httpx.Client(timeout=30.0)
        self.tokenizer = load_tokenizer(str(model_dir))
        self.source = get_source("arithmetic")
        self.rng = random.Random(0)
        self.registered = False

    # -- processes ---------------------------------------------------------------------------
    def start_coordinator(self) -> Proc:
        p = Proc("coordinator", ["coordinator", "--config", str(self.coord_cfg)], self.root / "coordinator.log")
        self.procs.append(p)
        wait_until(lambda: self._ok(self.coord_url + routes.HEALTH) or not p.alive, 60, "the coordinator")
        assert p.alive, p.tail()
        return p

    def start_trainer(self) -> Proc:
        (self.trainer_data / "trainer.port").unlink(missing_ok=True)
        p = Proc("trainer", ["trainer", "--config", str(self.trainer_cfg)], self.root / "trainer.log")
        self.procs.append(p)
        self.trainer = p
        return p

    def trainer_url(self) -> str:
        port = wait_until(lambda: _read_port(self.trainer_data / "trainer.port"), 60, "the trainer's port file")
        return f"http://{HOST}:{port}"

    def kill_trainer(self) -> None:
        assert self.trainer is not None
        self.trainer.kill()  # SIGKILL to the process group: no chance to clean up

    def close(self) -> None:
        for p in reversed(self.procs):
            p.signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.http.close()

    def _ok(self, url: str) -> bool:
        try:
            return self.http.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    # -- the coordinator's view ---------------------------------------------------------------
    def policy(self) -> PolicyInfo:
        return PolicyInfo.model_validate_json(self.http.get(self.coord_url + routes.POLICY).content)

    def post(self, path: str, kind: str, body, key: KeyPair) -> httpx.Response:
        env = seal(kind, body, key, run_id="trainer-itest", audience=AUDIENCE_COORDINATOR)
        return self.http.post(self.coord_url + path, content=env.model_dump_json(),
                              headers={"content-type": "application/json"})

    # -- playing worker and verifier ----------------------------------------------------------
    def register(self) -> None:
        if not self.registered:
            r = self.post(routes.REGISTER, KIND_REGISTRATION,
                          Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1 << 30)), self.worker)
            assert r.status_code == 200, r.text
            self.registered = True

    def _completion(self, tokens: list[int], eos: int) -> Completion:
        toks = tokens + [eos]
        hidden = torch.randn(len(toks), 32, generator=torch.Generator().manual_seed(self.rng.randrange(1 << 30)))
        return Completion(token_ids=toks, finish_reason="eos", proof=to_b64(build_proof(hidden)))

    def feed(self, n_groups: int, right: int = 1) -> list[str]:
        """Lease `n_groups` tasks and submit groups with `right` correct completions each (the
        rest wrong); accept them all as the verifier. Returns the submission ids."""
        self.register()
        r = self.post(routes.LEASES, KIND_LEASE_REQUEST, LeaseRequest(max_tasks=n_groups), self.worker)
        assert r.status_code == 200, r.text
        leases = [Lease.model_validate(e["body"]) for e in r.json()["leases"]]
        ids = []
        for lease in leases:
            prompt = self.tokenizer.decode(lease.prompt_token_ids)
            a, op, b = prompt[:-1].partition("+") if "+" in prompt else prompt[:-1].partition("-")
            answer = str(int(a) + int(b) if op == "+" else int(a) - int(b))
            good = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            bad = self.tokenizer(answer + "7", add_special_tokens=False)["input_ids"]
            comps = [self._completion(good if i < right else bad, lease.eos_token_id) for i in range(len(lease.seeds))]
            sub = Submission(lease_id=lease.lease_id, policy_version=lease.max_policy_version, completions=comps,
                             engine=EngineInfo(name="test", dtype="float32"))
            r = self.post(routes.SUBMISSIONS, KIND_SUBMISSION, sub, self.worker)
            assert r.status_code == 200, r.text
            ids.append(r.json()["submission_id"])
        self.verify_all()
        return ids

    def verify_all(self) -> int:
        n = 0
        while True:
            r = self.post(routes.VERIFICATION_CLAIM, KIND_CLAIM, ClaimRequest(max_jobs=64), self.verifier)
            assert r.status_code == 200, r.text
            jobs = ClaimResponse.model_validate_json(r.content).jobs
            if not jobs:
                return n
            for job in jobs:
                v = Verdict(submission_id=job.submission_id, accepted=True, full_check=job.full_check,
                            checks=passing_checks(job.full_check),
                            submission_sha256=envelope_digest(job.submission), lease_sha256=envelope_digest(job.lease))
                r = self.post(routes.VERDICTS, KIND_VERDICT, v, self.verifier)
                assert r.status_code == 200, r.text
                n += 1


def _read_port(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0
