"""Issue 9 with the real roles: the libp2p swarm layer wired into coordinator, relays and workers.

Processes on 127.0.0.1: the coordinator (`swarmrl coordinator`, the bootstrap peer), two
shardcast relays (`swarmrl relay`) and three workers (`swarmrl worker`, transformers engine on
a tiny model); the shardcast origin runs in this process, as it runs inside the trainer, and
policy versions reach the coordinator as the trainer sends them (POST /v1/policy with the
operator-signed manifest). The coordinator advertises no relay over HTTP; worker-1's config
lists relay A, the others list none. Observed only through public interfaces: each worker's
/status (its `p2p` section), the coordinator's API, files on disk, logs.

Shown, in order:
  1. relay A, started before the workers, and relay B, started after everyone, are found by
     every worker through the topic (B's delay printed);
  2. a new policy version announced by the coordinator reaches all three workers (latency
     from just before POST /v1/policy, printed; asserted only within a generous timeout), and
     every worker fetches it;
  3. forged announcements (a key without the role; the coordinator's name with a forged
     signature; a notice) sent straight to a worker and to the coordinator are dropped by
     their gates: no worker knows the forged version, the coordinator's version is unchanged;
  4. with both relays stopped (their adverts withdrawn), worker-3 restarts with an empty
     cache, fetches the version's shards from its peers (byte-identical to the origin's,
     served by worker-1 and worker-2 over libp2p streams), and goes on working with it.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("libp2p", reason="needs the p2p extra: pip install -e '.[p2p]'")

from worker_swarm import Proc, worker_status  # noqa: E402

from coordinator.config import LOOPBACK, CoordinatorConfig, SamplingConfig  # noqa: E402
from protocol import routes  # noqa: E402
from protocol.config import dump_toml  # noqa: E402
from protocol.identity import KeyPair  # noqa: E402
from protocol.manifest import build_manifest, sign_manifest  # noqa: E402
from protocol.messages import RunInfo  # noqa: E402
from shardcast.config import OriginConfig, RelayConfig  # noqa: E402
from shardcast.origin import Origin  # noqa: E402
from shardcast.p2p import Announcement, P2PConfig, P2PNode  # noqa: E402
from shardcast.p2p.announcements import version_announcement  # noqa: E402
from swarmrl.procs import free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402
from worker.config import WorkerConfig  # noqa: E402

HOST = "127.0.0.1"
RUN = "p2p-roles"
FAST = {"advert_interval_s": 1.0, "bootstrap_interval_s": 0.5, "advert_ttl_s": 10.0, "allow_private_addresses": True}
TIMEOUT = 60.0


class _AdmitAll:
    """A hostile node's gate: it publishes anything (an attacker does not check itself)."""

    def admit(self, data: bytes, now: float) -> Announcement:
        return Announcement(kind="forged", body=None, signer=None, timestamp=now, envelope=None)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from swarmrl.modelkit import init_tiny_model

    d = tmp_path_factory.mktemp("model") / "tiny"
    init_tiny_model(d, hidden_size=64, num_layers=2, seed=0)
    return d


class Rig:
    def __init__(self, root: Path, model: Path):
        self.root, self.model = root, model
        self.procs: dict[str, Proc] = {}
        self.http = httpx.Client(timeout=10.0)
        self.operator = KeyPair.generate()
        self.origin = Origin(OriginConfig(host=HOST, port=0, data_dir=root / "origin", shard_size=32 * 1024),
                             self.operator, run_id=RUN)
        self.origin_url = self.origin.start()
        self.coord_url = f"http://{HOST}:{free_port()}"
        self.relay_urls = {name: f"http://{HOST}:{free_port()}" for name in ("relay-a", "relay-b")}
        self.workers: dict[str, WorkerConfig] = {}
        self.forger: P2PNode | None = None

    def start(self, name: str, role: str, cfg) -> Proc:
        path = self.root / f"{name}.toml"
        path.write_text(dump_toml(cfg))
        p = Proc(name, [role, "--config", str(path)], self.root / f"{name}.log")
        self.procs[name] = p
        return p

    def start_coordinator(self) -> RunInfo:
        port = int(self.coord_url.rsplit(":", 1)[1])
        self.start("coordinator", "coordinator", CoordinatorConfig(
            run_id=RUN, host=HOST, port=port, data_dir=self.root / "coordinator",
            key_file=self.root / "keys" / "coordinator.key", operator_key=self.operator.public.hex,
            model=str(self.model), relays=[], group_size=2, sampling=SamplingConfig(max_tokens=4),
            archive=False, log_level="info", p2p=P2PConfig(**FAST), limits={"exempt_addresses": LOOPBACK}))

        def run_info() -> RunInfo | None:
            assert self.procs["coordinator"].alive, self.procs["coordinator"].tail()
            try:
                return RunInfo.model_validate_json(self.http.get(self.coord_url + routes.RUN).content)
            except (httpx.HTTPError, ValueError):
                return None

        return wait_until(run_info, TIMEOUT, "the coordinator to serve /v1/run")

    def start_relay(self, name: str, bootstrap: list[str]) -> Proc:
        port = int(self.relay_urls[name].rsplit(":", 1)[1])
        return self.start(name, "relay", RelayConfig(
            upstreams=[self.origin_url], operator_key=self.operator.public.hex, host=HOST, port=port,
            data_dir=self.root / name, run_id=RUN, region=name[-1], capacity_mbps=100,
            p2p=P2PConfig(**FAST, bootstrap=bootstrap)))

    def start_worker(self, name: str, relays: list[str]) -> Proc:
        cfg = WorkerConfig(coordinator_url=self.coord_url, key_file=self.root / name / "worker.key",
                           data_dir=self.root / name, engine="transformers", device="cpu", dtype="float32",
                           threads=1, max_tasks=1, json_logs=True, relays=relays, p2p=P2PConfig(**FAST))
        (self.root / name).mkdir(parents=True, exist_ok=True)
        (self.root / name / "status.port").unlink(missing_ok=True)
        self.workers[name] = cfg
        return self.start(name, "worker", cfg)

    def p2p(self, name: str) -> dict:
        """The `p2p` section of a worker's /status ({} while it is not up)."""
        assert self.procs[name].alive, f"{name} died:\n{self.procs[name].tail()}"
        return (worker_status(self.workers[name]) or {}).get("p2p") or {}

    def publish(self, version: int) -> tuple[Path, float]:
        """Publish `version` at the origin; POST its manifest to the coordinator (as the trainer
        does). Returns the checkpoint folder and the time taken just before the POST."""
        d = self.root / "checkpoints" / str(version)
        shutil.copytree(self.model, d)
        env = self.origin.publish(d, version, step=version)
        posted_at = time.time()
        r = self.http.post(self.coord_url + routes.POLICY, content=env.model_dump_json(),
                           headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        return d, posted_at

    def stop(self, name: str) -> None:
        p = self.procs[name]
        p.signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()

    def close(self) -> None:
        if self.forger is not None:
            self.forger.stop()
        for p in reversed(list(self.procs.values())):
            p.signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.origin.stop()
        self.http.close()


@pytest.fixture
def rig(tmp_path, tiny_model):
    r = Rig(tmp_path, tiny_model)
    try:
        yield r
    finally:
        r.close()


def test_real_roles_discover_relays_hear_versions_drop_forgeries_and_fetch_from_peers(rig: Rig) -> None:
    info = rig.start_coordinator()
    boot = info.p2p_bootstrap
    assert boot and boot[0].endswith("/p2p/" + KeyPair.load(rig.root / "keys" / "coordinator.key").peer_id)
    assert info.relays == []  # relays reach the workers through the topic only (worker-1 also lists A)

    # 1. Relay A, then the workers, then relay B: all found through the topic.
    rig.start_relay("relay-a", boot)
    rig.start_worker("worker-1", [rig.relay_urls["relay-a"]])
    rig.start_worker("worker-2", [])
    rig.start_worker("worker-3", [])
    names = list(rig.workers)
    for w in names:
        wait_until(lambda w=w: rig.relay_urls["relay-a"] in rig.p2p(w).get("relays", []), TIMEOUT,
                   f"{w} to learn relay A from the topic", every=0.2)
    t_b = time.time()
    rig.start_relay("relay-b", boot)
    for w in names:
        wait_until(lambda w=w: rig.relay_urls["relay-b"] in rig.p2p(w).get("relays", []), TIMEOUT,
                   f"{w} to learn relay B from the topic", every=0.1)
    print(f"\nrelay B (started last) known to all 3 workers {time.time() - t_b:.2f} s after its process "
          "started (includes the relay's start-up and status polling)")

    # 2. A new policy version reaches every worker over the topic; they fetch it.
    folder, posted_at = rig.publish(0)
    heard = {}
    for w in names:
        heard[w] = wait_until(lambda w=w: rig.p2p(w).get("versions_heard", {}).get("0"), TIMEOUT,
                              f"{w} to hear version 0", every=0.05) - posted_at
    print("version 0 announcement: POST /v1/policy -> heard by worker (s): "
          + ", ".join(f"{w} {heard[w]:.3f}" for w in names) + f"  (max {max(heard.values()):.3f}; "
          "issue 9 asks under 2 s; 2 cores shared with 6 processes)")
    for w in names:
        wait_until(lambda w=w: (rig.root / w / "checkpoints" / "0" / ".manifest.json").exists(), TIMEOUT,
                   f"{w} to fetch version 0")
    holders = wait_until(lambda: (lambda h: h if len(h) >= 2 else None)(
        {p for p, vs in rig.p2p("worker-3").get("peers_holding", {}).items() if 0 in vs}),
        TIMEOUT, "worker-3 to hear that its peers hold version 0")

    # 3. Forged announcements, sent straight to worker-2 and the coordinator, are dropped.
    forger = KeyPair.generate()
    w2_addrs = rig.p2p("worker-2")["addrs"]
    rig.forger = P2PNode(P2PConfig(**FAST, bootstrap=boot + w2_addrs), forger, RUN, rig.operator.public,
                         forger.public, role="forger")
    rig.forger.gate = _AdmitAll()
    rig.forger.start()
    wait_until(lambda: len(rig.forger.connected_peers()) >= 2, TIMEOUT, "the forger to connect")
    fake = sign_manifest(build_manifest(folder, run_id=RUN, version=99, step=99), forger)
    wrong_key = version_announcement(fake, RUN, 99, 99, forger)
    stolen_name = wrong_key.model_copy(update={"signer": info.coordinator_key})
    forged_notice = wrong_key.model_copy(update={"kind": "swarm_notice"})
    before = rig.p2p("worker-2").get("counters", {}).get("rejected_bad-signer", 0)
    for env in (wrong_key, stolen_name, forged_notice):
        rig.forger.publish_envelope(env)
    wait_until(lambda: rig.p2p("worker-2").get("counters", {}).get("rejected_bad-signer", 0) >= before + 3,
               TIMEOUT, "worker-2 to reject the three forgeries")
    for w in names:
        st = rig.p2p(w)
        assert st["latest_version"] == 0, (w, st)
        assert "99" not in st["versions_heard"], (w, st)
    assert rig.http.get(rig.coord_url + routes.POLICY).json()["version"] == 0
    rig.forger.stop()
    rig.forger = None

    # 4. Relays stop (withdrawing their adverts); worker-3 restarts with an empty cache and
    #    gets version 0 from its peers.
    served_before = {w: rig.p2p(w).get("counters", {}).get("served", 0) for w in ("worker-1", "worker-2")}
    for r in ("relay-a", "relay-b"):
        rig.stop(r)
    for w in names:
        wait_until(lambda w=w: rig.p2p(w) and rig.p2p(w)["relays"] == [], TIMEOUT, f"{w} to drop both relays")
    rig.stop("worker-3")
    shutil.rmtree(rig.root / "worker-3" / "checkpoints")
    t_fetch = time.time()
    rig.start_worker("worker-3", [])
    got = rig.root / "worker-3" / "checkpoints" / "0"
    wait_until(lambda: (got / ".manifest.json").exists(), TIMEOUT, "worker-3 to fetch version 0 from peers")
    print(f"worker-3 restarted with an empty cache and held version 0 from its peers "
          f"{time.time() - t_fetch:.1f} s after its process started (torch import included)")
    manifest = json.loads((got / ".manifest.json").read_text())["body"]
    for f in manifest["files"]:
        assert filecmp.cmp(got / f["path"], folder / f["path"], shallow=False), f["path"]

    def served_now() -> dict | None:
        s = {w: rig.p2p(w).get("counters", {}).get("served", 0) - served_before[w] for w in served_before}
        return s if sum(s.values()) >= len(manifest["shards"]) else None

    served = wait_until(served_now, TIMEOUT, "the peers' status to count the shards they served")
    print(f"shards served by peers: {served} ({len(manifest['shards'])} shards in version 0; holders seen: "
          f"{len(holders)})")
    log = (rig.root / "worker-3.log").read_text()
    assert "no relay known; asking the fallback source (peers)" in log
    wait_until(lambda: (worker_status(rig.workers["worker-3"]) or {}).get("policy_version") == 0, TIMEOUT,
               "worker-3 to load version 0 and work with it")
