"""Shardcast end to end on loopback: an in-process origin (as inside the trainer), relay
processes started with `python -m swarmrl relay`, and clients fetching real bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from protocol.identity import KeyPair
from shardcast.client import ShardcastClient
from shardcast.config import OriginConfig
from shardcast.errors import PublishError
from shardcast.origin import Origin
from swarmrl.procs import free_port

SHARD = 256 * 1024


def make_checkpoint(folder: Path, weights_bytes: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(f'{{"seed": {seed}}}')
    rnd = __import__("random").Random(seed)
    (folder / "model.safetensors").write_bytes(rnd.randbytes(weights_bytes))
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "tokenizer.json").write_text("{}" * (seed + 1))
    return folder


def same_tree(a: Path, b: Path) -> bool:
    def files(d: Path) -> list[str]:
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    return files(a) == files(b) and all((a / f).read_bytes() == (b / f).read_bytes()
                                        for f in files(a))


class RelayProc:
    """A `swarmrl relay` child process; killed when the test ends."""

    def __init__(self, data_dir: Path, upstreams: list[str], operator: KeyPair, keep: int = 3):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        port_file = data_dir / "relay.port"
        port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "swarmrl", "relay", "--operator-key", operator.public.hex,
                "--port", "0", "--set", f"data_dir={data_dir}", "--set", f"keep_versions={keep}"]
        for u in upstreams:
            args += ["--upstream", u]
        self.log = open(data_dir / "relay.log", "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (data_dir / "relay.log").read_text()[-2000:]
                raise RuntimeError(f"relay did not start: {log}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def get(self, path: str):
        return httpx.get(self.url + path, timeout=10)

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_complete(self, version: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while version not in self.get("/v1/versions").json()["complete"]:
            assert time.monotonic() < deadline, f"relay never completed version {version}"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


@pytest.fixture
def operator():
    return KeyPair.generate()


@contextmanager
def relay_starter():
    """A function that starts relay processes, all killed when the block ends."""
    started: list[RelayProc] = []

    def start(*args, **kw) -> RelayProc:
        r = RelayProc(*args, **kw)
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            r.kill()
            r.log.close()


@pytest.fixture
def relays():
    with relay_starter() as start:
        yield start


@pytest.fixture
def origin(tmp_path, operator):
    cfg = OriginConfig(data_dir=tmp_path / "origin", port=0, shard_size=SHARD, keep_versions=2)
    o = Origin(cfg, operator, "run-test")
    o.start()
    yield o
    o.stop()


def test_version_flows_origin_relay_client_and_is_byte_identical(tmp_path, operator, origin,
                                                                 relays):
    ckpt = make_checkpoint(tmp_path / "ck0", 3 * SHARD + 1000, seed=0)
    origin.publish(ckpt, version=0, step=0)
    relay = relays(tmp_path / "relay", [origin.url], operator)
    with ShardcastClient([relay.url], operator.public, tmp_path / "cache", run_id="run-test") as c:
        assert c.wait_for_version(None, timeout_s=20) == 0
        seen = []
        path = c.fetch(0, progress=lambda done, total: seen.append((done, total)))
        assert path == tmp_path / "cache" / "0"
        assert same_tree(ckpt, path)
        total = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
        assert seen[-1][0] == seen[-1][1] == total
        assert c.fetch(0) == path                       # cached: no second download
    health = relay.get("/health").json()
    assert health["role"] == "relay" and health["complete"] == [0]
    assert relay.metric("shardcast_shards_verified_total") == 6   # 4 weight shards + 2 small files
    # every byte once, plus the first byte of shard 0 when the client's prewarm probe (sent by
    # wait_for_version, shardcast.fetch.prewarm) reached the relay after that shard was verified
    assert relay.metric("shardcast_bytes_served_total") - seen[-1][1] in (0, 1)
    assert relay.terminate() in (0, -signal.SIGTERM)      # SIGTERM: a clean, prompt stop
    assert "Traceback" not in (relay.data_dir / "relay.log").read_text()


def test_long_poll_learns_a_new_version_and_relay_tree_of_depth_two_delivers_it(
        tmp_path, operator, origin, relays):
    origin.publish(make_checkpoint(tmp_path / "ck0", SHARD, seed=0), 0, 0)
    top = relays(tmp_path / "r1", [origin.url], operator)
    leaf = relays(tmp_path / "r2", [top.url], operator)       # origin -> relay -> relay -> client
    with ShardcastClient([leaf.url], operator.public, tmp_path / "cache") as c:
        assert c.wait_for_version(None, 20) == 0
        got: list[int | None] = []
        waiter = threading.Thread(target=lambda: got.append(c.wait_for_version(0, timeout_s=30)))
        waiter.start()
        time.sleep(0.5)                                 # the client is now long-polling the leaf
        ck1 = make_checkpoint(tmp_path / "ck1", 5 * SHARD, seed=1)
        origin.publish(ck1, 1, 10)
        waiter.join(40)
        assert got == [1]
        assert same_tree(ck1, c.fetch(1))
    assert leaf.metric("shardcast_shards_verified_total") >= 5
    assert c.wait_for_version is not None


def test_old_versions_are_pruned_everywhere_and_numbering_only_grows(tmp_path, operator, origin,
                                                                     relays):
    relay = relays(tmp_path / "relay", [origin.url], operator, keep=2)
    for v in range(3):
        origin.publish(make_checkpoint(tmp_path / f"ck{v}", SHARD // 2, seed=v), v, v)
        relay.wait_complete(v)
    assert origin.versions() == [1, 2]
    deadline = time.monotonic() + 10
    while relay.get("/v1/versions").json()["versions"] != [1, 2]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert sorted(os.listdir(tmp_path / "relay" / "versions")) == ["1", "2"]
    assert relay.get("/v1/versions/0/manifest").status_code == 404
    with pytest.raises(PublishError, match="older"):
        origin.publish(tmp_path / "ck0", 1 - 1, 0)


def test_origin_restart_keeps_versions_and_numbering_continues(tmp_path, operator, relays):
    cfg = OriginConfig(data_dir=tmp_path / "origin", port=free_port(), shard_size=SHARD)
    o = Origin(cfg, operator, "run-test")
    o.start()
    ck0 = make_checkpoint(tmp_path / "ck0", 2 * SHARD, seed=0)
    env0 = o.publish(ck0, 0, 0)
    relay = relays(tmp_path / "relay", [o.url], operator)
    relay.wait_complete(0)
    o.stop()

    o2 = Origin(cfg, operator, "run-test")                 # the trainer restarted
    try:
        assert o2.latest_version() == 0
        assert o2.publish(ck0, 0, 0) == env0                 # same bytes again: same manifest
        with pytest.raises(PublishError, match="already published"):
            o2.publish(make_checkpoint(tmp_path / "other", SHARD, seed=9), 0, 0)
        o2.start()
        ck1 = make_checkpoint(tmp_path / "ck1", SHARD, seed=1)
        o2.publish(ck1, 1, 1)
        relay.wait_complete(1)                               # the relay re-attached by itself
        with ShardcastClient([o2.url], operator.public, tmp_path / "c") as c:
            assert same_tree(ck0, c.fetch(0))                # published before the restart
            assert same_tree(ck1, c.fetch(1))
        with pytest.raises(PublishError, match="run"):
            Origin(cfg, operator, "another-run")
    finally:
        o2.stop()



def test_relay_command_reports_a_bad_key_or_missing_upstream_in_one_line(tmp_path):
    base = [sys.executable, "-m", "swarmrl", "relay", "--port", "0",
            "--set", f"data_dir={tmp_path}"]
    bad_key = subprocess.run(base + ["--upstream", "http://127.0.0.1:9", "--operator-key", "zz"],
                             capture_output=True, text=True, timeout=60)
    assert bad_key.returncode == 2
    assert bad_key.stderr.strip() == "swarmrl: public key is not hex"
    no_upstream = subprocess.run(base + ["--operator-key", "ab" * 32], capture_output=True,
                                 text=True, timeout=60)
    assert no_upstream.returncode == 2 and "upstreams" in no_upstream.stderr
    no_scheme = subprocess.run(base + ["--upstream", "127.0.0.1:8750", "--operator-key", "ab" * 32],
                               capture_output=True, text=True, timeout=60)
    assert no_scheme.returncode == 2 and "http:// or https://" in no_scheme.stderr
    assert "Traceback" not in bad_key.stderr + no_upstream.stderr + no_scheme.stderr
