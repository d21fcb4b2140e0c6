"""The verifier as a real process in a real swarm on 127.0.0.1: the coordinator, the
verifier and two workers are child processes (`python -m swarmrl ...`), the shardcast origin
runs in the test (as inside the trainer). An honest worker's submissions are verified and
accepted; a worker generating with other weights (swarmrl.adversary, weights + noise) is
caught by the proof check and banned; the verifier serves /health and /metrics and stops
cleanly on SIGTERM."""

from __future__ import annotations

import shutil
import signal

import httpx

from coordinator.config import LOOPBACK, CheckRateConfig, CoordinatorConfig, SamplingConfig
from protocol import routes
from protocol.http import SignedClient, read_port_file
from protocol.identity import KeyPair
from protocol.messages import KIND_BATCH_REQUEST, BatchRequest, BatchResponse
from shardcast.config import OriginConfig
from shardcast.origin import Origin
from swarmrl.modelkit import init_tiny_model
from swarmrl.procs import ProcessGroup, child_env, free_port, write_config
from tests.waiting import wait_until
from verifier.config import VerifierConfig
from worker.config import WorkerConfig

HOST = "127.0.0.1"


def test_verifier_accepts_honest_rollouts_and_gets_a_cheater_banned(tmp_path):
    model = tmp_path / "model"
    init_tiny_model(model, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1)
    keys = tmp_path / "keys"
    operator = KeyPair.generate()
    verifier = KeyPair.load_or_create(keys / "verifier.key")
    honest = KeyPair.load_or_create(tmp_path / "honest" / "worker.key")
    cheater = KeyPair.load_or_create(tmp_path / "cheater" / "worker.key")
    origin = Origin(OriginConfig(host=HOST, port=0, data_dir=tmp_path / "origin", shard_size=64 * 1024),
                    operator, run_id="vtest")
    origin_url = origin.start()
    coord_url = f"http://{HOST}:{free_port()}"
    cfg = tmp_path / "config"
    coord_cfg = write_config(cfg / "coordinator.toml", CoordinatorConfig(
        run_id="vtest", host=HOST, port=int(coord_url.rsplit(":", 1)[1]), data_dir=tmp_path / "coordinator",
        key_file=keys / "coordinator.key", operator_key=operator.public.hex, verifier_keys=[verifier.public.hex],
        model=str(model), relays=[origin_url], group_size=2, archive=False, log_level="warning",
        sampling=SamplingConfig(temperature=1.0, max_tokens=6), check_rate=CheckRateConfig(initial=1.0),
        limits={"exempt_addresses": LOOPBACK}))
    ver_cfg = write_config(cfg / "verifier.toml", VerifierConfig(
        coordinator_url=coord_url, key_file=keys / "verifier.key", data_dir=tmp_path / "verifier", threads=1,
        poll_interval_s=0.2))
    for name in ("honest", "cheater"):
        write_config(cfg / f"{name}.toml", WorkerConfig(
            coordinator_url=coord_url, key_file=tmp_path / name / "worker.key", data_dir=tmp_path / name,
            engine="transformers", device="cpu", dtype="float32", threads=1, max_tasks=2, json_logs=True))
    http = httpx.Client(timeout=10.0)
    env = child_env(threads=1)
    try:
        with ProcessGroup(tmp_path / "logs") as group:
            group.start("coordinator", ["coordinator", "--config", str(coord_cfg)], env=env)
            watch = {"every": 0.25, "group": group, "may_exit": lambda name: False}  # any exit fails the wait

            def coordinator_up():
                try:
                    return http.get(coord_url + routes.HEALTH).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(coordinator_up, 90, "the coordinator", **watch)
            v0 = tmp_path / "v0"
            shutil.copytree(model, v0)
            manifest = origin.publish(v0, 0, step=0)
            r = http.post(coord_url + routes.POLICY, content=manifest.model_dump_json(),
                          headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            verifier_proc = group.start("verifier", ["verifier", "--config", str(ver_cfg)], env=env)
            group.start("honest", ["worker", "--config", str(cfg / "honest.toml")], env=env)
            group.start("cheater", ["--config", str(cfg / "cheater.toml"), "--cheat", "noise"], env=env,
                        module="swarmrl.adversary")

            def worker(key):
                r = http.get(coord_url + routes.WORKER.format(worker_id=key.peer_id))
                return r.json() if r.status_code == 200 else None

            wait_until(lambda: (worker(cheater) or {}).get("status") == "banned", 300,
                       "the cheater to be banned", **watch)
            wait_until(lambda: (worker(honest) or {}).get("accepted", 0) >= 2, 300,
                       "two accepted submissions of the honest worker", **watch)
            banned = worker(cheater)
            assert banned["accepted"] == 0 and "proof" in banned["ban_reason"], banned
            assert worker(honest)["status"] == "active" and worker(honest)["rejected"] == 0

            port = read_port_file(tmp_path / "verifier" / "verifier.port", timeout_s=5)
            health = http.get(f"http://{HOST}:{port}/health").json()
            assert health["status"] == "ok" and health["verifier_id"] == verifier.peer_id
            assert health["accepted"] >= 2 and health["rejected"] >= 1
            metrics = http.get(f"http://{HOST}:{port}/metrics").text
            assert 'swarmrl_verifier_check_failures_total{check="proof"}' in metrics
            assert 'swarmrl_verifier_verdicts_total{outcome="accepted"}' in metrics
            # the training buffer holds the honest worker's groups and none of the cheater's
            trainer = SignedClient(coord_url, operator, run_id="vtest")
            batch = trainer.post_signed(routes.TRAINER_BATCH, KIND_BATCH_REQUEST,
                                        BatchRequest(max_groups=256, min_policy_version=0), BatchResponse)
            trainer.close()
            owners = {g.worker_id for g in batch.groups}
            assert len(batch.groups) >= 2 and owners == {honest.peer_id}, owners

            verifier_proc.popen.send_signal(signal.SIGTERM)
            assert verifier_proc.popen.wait(timeout=30) == 0, verifier_proc.tail()
    finally:
        http.close()
        origin.stop()
