"""A verifier killed mid-claim (SIGKILL) and started again takes its own claims back at once.

Real processes on 127.0.0.1: the coordinator, an honest worker and the verifier are child
processes (`python -m swarmrl ...`), the shardcast origin runs in the test. The worker fills the
queue and stops; the verifier starts, and is killed with SIGKILL as soon as the coordinator's
database shows it holding claimed, unjudged jobs; the same verifier (same key) starts again.
Before `POST /v1/verification/resume` those jobs waited out `verification_claim_ttl_s` (120 s
here, the default) after the claim; now they are judged as soon as the verifier is back.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time

import httpx

from coordinator.config import LOOPBACK, CheckRateConfig, CoordinatorConfig, SamplingConfig
from protocol import routes
from protocol.identity import KeyPair
from shardcast.config import OriginConfig
from shardcast.origin import Origin
from swarmrl.modelkit import init_tiny_model
from swarmrl.procs import ProcessGroup, child_env, free_port, write_config
from tests.waiting import wait_until
from verifier import instance
from verifier.config import VerifierConfig
from worker.config import WorkerConfig

HOST = "127.0.0.1"
TTL_S = 120.0


def _rows(db, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return list(conn.execute(sql))
    except sqlite3.Error:
        return []


def test_a_verifier_killed_mid_claim_takes_its_claims_back_when_it_restarts(tmp_path):
    model = tmp_path / "model"
    init_tiny_model(model, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1)
    keys = tmp_path / "keys"
    operator = KeyPair.generate()
    verifier = KeyPair.load_or_create(keys / "verifier.key")
    origin = Origin(OriginConfig(host=HOST, port=0, data_dir=tmp_path / "origin", shard_size=64 * 1024),
                    operator, run_id="rtest")
    origin_url = origin.start()
    coord_url = f"http://{HOST}:{free_port()}"
    cfg = tmp_path / "config"
    coord_cfg = write_config(cfg / "coordinator.toml", CoordinatorConfig(
        run_id="rtest", host=HOST, port=int(coord_url.rsplit(":", 1)[1]), data_dir=tmp_path / "coordinator",
        key_file=keys / "coordinator.key", operator_key=operator.public.hex, verifier_keys=[verifier.public.hex],
        model=str(model), relays=[origin_url], group_size=4, archive=False, log_level="warning",
        sampling=SamplingConfig(temperature=1.0, max_tokens=16), check_rate=CheckRateConfig(initial=1.0),
        verification_claim_ttl_s=TTL_S, limits={"exempt_addresses": LOOPBACK}))
    ver_cfg = write_config(cfg / "verifier.toml", VerifierConfig(
        coordinator_url=coord_url, key_file=keys / "verifier.key", data_dir=tmp_path / "verifier", threads=1,
        poll_interval_s=0.2, batch_jobs=16))
    write_config(cfg / "worker.toml", WorkerConfig(
        coordinator_url=coord_url, key_file=tmp_path / "worker" / "worker.key", data_dir=tmp_path / "worker",
        engine="transformers", device="cpu", dtype="float32", threads=1, max_tasks=4, json_logs=True))
    db = tmp_path / "coordinator" / "coordinator.db"
    http = httpx.Client(timeout=10.0)
    env = child_env(threads=1)
    try:
        with ProcessGroup(tmp_path / "logs") as group:
            group.start("coordinator", ["coordinator", "--config", str(coord_cfg)], env=env)

            def coordinator_up():
                try:
                    return http.get(coord_url + routes.HEALTH).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(coordinator_up, 90, "the coordinator")
            v0 = tmp_path / "v0"
            shutil.copytree(model, v0)
            r = http.post(coord_url + routes.POLICY, content=origin.publish(v0, 0, step=0).model_dump_json(),
                          headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            group.start("worker", ["worker", "--config", str(cfg / "worker.toml")], env=env)
            queued = "SELECT submission_id FROM submissions WHERE status = 'queued'"
            wait_until(lambda: len(_rows(db, queued)) >= 8, 300, "eight queued submissions")
            group.stop("worker")

            first = group.start("verifier", ["verifier", "--config", str(ver_cfg)], env=env)
            held = "SELECT submission_id FROM submissions WHERE status = 'queued' AND claimed_by IS NOT NULL"
            deadline = time.monotonic() + 300
            claimed: list[tuple] = []
            while not claimed and time.monotonic() < deadline and first.alive:
                claimed = _rows(db, held)
                time.sleep(0.005)
            os.killpg(first.popen.pid, signal.SIGKILL)  # mid-claim: it holds jobs it has not judged
            first.popen.wait(timeout=10)
            killed_at = time.monotonic()
            ids = [r[0] for r in _rows(db, held)]
            assert ids, f"the verifier judged its claim before the kill ({claimed}); nothing to show"
            # claimed under its process's instance id (verifier.instance: hostname and the token in
            # its data_dir), which the restarted process derives again and resumes under
            own = instance.resolve("", tmp_path / "verifier")
            held_by = ("SELECT DISTINCT claimed_instance FROM submissions "
                       "WHERE status = 'queued' AND claimed_by IS NOT NULL")
            assert _rows(db, held_by) == [(own,)]

            group.start("verifier-again", ["verifier", "--config", str(ver_cfg)], env=env)
            decided = lambda: not {r[0] for r in _rows(db, queued)} & set(ids)  # noqa: E731
            wait_until(decided, TTL_S + 60, "the killed verifier's claims to be judged")
            took = time.monotonic() - killed_at
            print(f"{len(ids)} jobs claimed by the killed verifier judged {took:.1f} s after the kill "
                  f"(claim TTL {TTL_S:.0f} s)")
            assert took < TTL_S / 2, f"its claims waited {took:.0f} s: the claim TTL, not the restart"
    finally:
        http.close()
        origin.stop()
