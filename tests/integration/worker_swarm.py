"""A small real swarm for the worker's integration tests.

The coordinator and the workers are child processes (`python -m swarmrl coordinator|worker
--config FILE`), the shardcast origin runs in the test process (as it runs inside the
trainer) and is the relay the coordinator advertises. Policy versions are the tiny model
with perturbed weights, published through the origin and announced to the coordinator with
the operator-signed manifest, exactly as the trainer does. No verifier: submissions stay
queued, which is all these tests look at.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from coordinator.config import LOOPBACK, CoordinatorConfig, JoinConfig, SamplingConfig
from protocol import routes
from protocol.config import dump_toml
from protocol.identity import KeyPair
from shardcast.config import OriginConfig
from shardcast.origin import Origin
from swarmrl.procs import free_port
from tests.waiting import wait_until
from worker.config import WorkerConfig

HOST = "127.0.0.1"


class Proc:
    """A child process with its output in a log file; killed (group) when the test ends."""

    def __init__(self, name: str, args: list[str], log: Path):
        self.name, self.log = name, log
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        import os

        with open(log, "ab") as fh:
            self.popen = subprocess.Popen([sys.executable, "-m", "swarmrl", *args], stdout=fh,
                                          stderr=subprocess.STDOUT, env={**os.environ, **env},
                                          start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        import os

        if self.alive:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=10)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


class MiniSwarm:
    def __init__(self, root: Path, base_model: Path, *, group_size: int = 2, max_tokens: int = 8,
                 lease_ttl_s: float = 300.0, async_window: int = 1, join: JoinConfig | None = None):
        self.root = root
        self.base_model = base_model
        self.procs: list[Proc] = []
        self.operator = KeyPair.generate()
        self.origin = Origin(OriginConfig(host=HOST, port=0, data_dir=root / "origin", shard_size=64 * 1024),
                             self.operator, run_id="itest")
        self.origin_url = self.origin.start()
        self.coord_port = free_port()
        self.coord_url = f"http://{HOST}:{self.coord_port}"
        self.coord_cfg = root / "coordinator.toml"
        self.coord_cfg.write_text(dump_toml(CoordinatorConfig(
            run_id="itest", host=HOST, port=self.coord_port, data_dir=root / "coordinator",
            key_file=root / "keys" / "coordinator.key", operator_key=self.operator.public.hex,
            model=str(base_model), relays=[self.origin_url], group_size=group_size,
            sampling=SamplingConfig(temperature=1.0, max_tokens=max_tokens), async_window=async_window,
            lease_ttl_s=lease_ttl_s, archive=False, join=join or JoinConfig(), log_level="warning",
            limits={"exempt_addresses": LOOPBACK})))
        self.coordinator: Proc | None = None
        self.http = httpx.Client(timeout=10.0)

    # -- processes -----------------------------------------------------------------------------
    def start_coordinator(self) -> Proc:
        p = Proc("coordinator", ["coordinator", "--config", str(self.coord_cfg)], self.root / "coordinator.log")
        self.procs.append(p)
        self.coordinator = p
        wait_until(lambda: self._healthy() or not p.alive, 60, "the coordinator to start")
        assert p.alive, p.tail()
        return p

    def _healthy(self) -> bool:
        try:
            return self.http.get(self.coord_url + routes.HEALTH).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_config(self, name: str, **kw) -> WorkerConfig:
        base = dict(coordinator_url=self.coord_url, key_file=self.root / name / "worker.key",
                    data_dir=self.root / name, engine="transformers", device="cpu", dtype="float32",
                    threads=1, max_tasks=2, json_logs=True)
        base.update(kw)
        return WorkerConfig(**base)

    def start_worker(self, name: str = "worker", **kw) -> tuple[Proc, WorkerConfig]:
        cfg = self.worker_config(name, **kw)
        path = self.root / f"{name}.toml"
        path.write_text(dump_toml(cfg))
        (self.root / name).mkdir(parents=True, exist_ok=True)
        (self.root / name / "status.port").unlink(missing_ok=True)
        p = Proc(name, ["worker", "--config", str(path)], self.root / f"{name}.log")
        self.procs.append(p)
        return p, cfg

    def close(self) -> None:
        for p in reversed(self.procs):
            p.signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.origin.stop()
        self.http.close()

    # -- the run -------------------------------------------------------------------------------
    def publish(self, version: int) -> None:
        """Publish policy `version` through the origin and announce it to the coordinator."""
        d = self.root / "checkpoints" / str(version)
        shutil.copytree(self.base_model, d)
        if version:
            import torch
            from safetensors.torch import load_file, save_file

            state = load_file(str(d / "model.safetensors"))
            g = torch.Generator().manual_seed(version)
            state = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in state.items()}
            save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        env = self.origin.publish(d, version, step=version)
        r = self.http.post(self.coord_url + routes.POLICY, content=env.model_dump_json(),
                           headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text

    def stats(self) -> dict:
        return self.http.get(self.coord_url + routes.STATS).json()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the coordinator's Prometheus metrics (0 when absent)."""
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in self.http.get(self.coord_url + routes.METRICS).text.splitlines():
            if line.startswith(want + " ") or (labels and line.startswith(name + "{") and
                                               all(f'{k}="{v}"' in line for k, v in labels.items())):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def worker_status(cfg: WorkerConfig) -> dict | None:
    """The worker's /status, or None while it is not up."""
    from protocol.errors import ProtocolError
    from worker.main import fetch_status

    try:
        return fetch_status(cfg, timeout_s=2.0)
    except ProtocolError:
        return None
