"""Sources that come and go (relays learned from the libp2p swarm layer), the stall bound of a
download, and the extra racer of `wait_for_newer`: the shardcast pieces the swarm layer uses."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from protocol.identity import KeyPair
from protocol.manifest import build_manifest, open_manifest, sign_manifest
from shardcast.errors import FetchFailed
from shardcast.fetch import Downloader, FetchOptions
from shardcast.selection import Sources
from shardcast.watch import Announced, wait_for_newer

OP = KeyPair.from_seed(b"L" * 32)


def test_sources_can_be_added_and_removed_while_reports_arrive():
    s = Sources(["http://a"])
    assert s.add("http://b/") and not s.add("http://b")
    assert s.urls == ["http://a", "http://b"]
    url = s.acquire(exclude={"http://a"})
    assert url == "http://b"
    assert s.remove("http://b") and not s.remove("http://b")
    assert s.urls == ["http://a"]
    # a transfer that was running on the removed source reports afterwards: ignored
    s.done(url)
    s.failure(url, "late")
    s.success(url, 10, 0.1)
    s.alive(url)
    s.hostile(url, "late")
    assert not s.is_hostile(url)


def test_a_hostile_source_is_not_forgotten_by_removing_it():
    s = Sources(["http://a", "http://evil"])
    s.hostile("http://evil", "corrupt shard")
    assert not s.remove("http://evil")
    assert not s.add("http://evil")
    assert s.is_hostile("http://evil")
    assert s.acquire() == "http://a"


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connections are refused


class _Sink:
    def __init__(self, path):
        self.path = path

    def begin(self, shard):
        return os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644), 0

    def end(self, shard, fd):
        os.close(fd)

    def commit(self, shard):
        raise AssertionError("nothing can be fetched from a dead source")


def test_a_shard_whose_sources_all_fail_gives_up_after_the_stall_bound(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "w.bin").write_bytes(os.urandom(10_000))
    manifest = open_manifest(sign_manifest(build_manifest(folder, run_id="r", version=0, step=0), OP), OP.public)
    dl = Downloader(Sources([_dead_url()]), FetchOptions(parallel=1, stall_s=1.0))
    with pytest.raises(FetchFailed, match="no byte from any source in 1 s"):
        dl.fetch_all(0, manifest.shards, _Sink(tmp_path / "out"))


def _announced(version: int, tmp_path) -> Announced:
    folder = tmp_path / f"v{version}"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"x" * 100)
    env = sign_manifest(build_manifest(folder, run_id="r", version=version, step=0), OP)
    return Announced(env, open_manifest(env, OP.public), "p2p")


def test_wait_for_newer_races_the_extra_source_even_without_relays(tmp_path):
    ann = _announced(4, tmp_path)
    calls = []

    async def also(after: int, deadline: float):
        calls.append((after, deadline > time.monotonic()))
        await asyncio.sleep(0.05)
        return ann

    assert wait_for_newer(Sources([]), OP.public, 2, 5.0, "r", also=also) is ann
    assert calls == [(2, True)]

    async def nothing(after: int, deadline: float):
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return None

    assert wait_for_newer(Sources([]), OP.public, None, 0.2, "r", also=nothing) is None
