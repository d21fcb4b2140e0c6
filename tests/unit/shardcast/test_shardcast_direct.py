"""Direct (O_DIRECT) shard writes of the client: the page-aligned part of every shard goes
around the page cache, the rest buffered; the assembled files are byte-exact whatever the
shard size, and a file system that refuses direct writes gets buffered ones."""

import errno
import fcntl
import os
import random

import pytest

from protocol.identity import KeyPair
from shardcast.client import ShardcastClient
from shardcast.config import OriginConfig
from shardcast.origin import Origin

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")


def checkpoint(folder, size):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(random.Random(size).randbytes(size))
    return folder


@pytest.fixture
def pwrites(monkeypatch):
    """Every os.pwrite as (direct?, offset, length)."""
    seen = []
    real = os.pwrite

    def spy(fd, data, offset):
        seen.append((bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT), offset, len(data)))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", spy)
    return seen


def fetch(tmp_path, shard_size, size, **kw):
    op = KeyPair.generate()
    src = checkpoint(tmp_path / "ck", size)
    o = Origin(OriginConfig(data_dir=tmp_path / "o", port=0, shard_size=shard_size), op, "r")
    url = o.start()
    try:
        o.publish(src, version=0, step=0)
        with ShardcastClient([url], op.public, tmp_path / "cache", **kw) as c:
            got = c.fetch(0)
    finally:
        o.stop()
    assert (got / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert (got / "config.json").read_text() == "{}"


@pytest.mark.parametrize("shard_size, size", [
    (64 * 1024, 5 * 64 * 1024 + 17),          # aligned shards, a short last one
    (64 * 1024 + 100, 4 * 64 * 1024 + 5000),  # shard offsets off the page grid
])
def test_direct_writes_cover_aligned_runs_and_files_are_exact(tmp_path, pwrites, shard_size, size):
    fetch(tmp_path, shard_size, size)
    direct = [(off, n) for d, off, n in pwrites if d]
    assert direct, "no write went around the page cache"
    assert all(off % 4096 == 0 and n % 4096 == 0 for off, n in direct)
    if shard_size % 4096 == 0:  # every whole page of the checkpoint went direct
        assert sum(n for _, n in direct) == size - size % 4096


def test_direct_io_off_writes_through_the_page_cache(tmp_path, pwrites):
    fetch(tmp_path, 64 * 1024, 3 * 64 * 1024, direct_io=False)
    assert pwrites and not any(d for d, _, _ in pwrites)


def test_a_file_system_refusing_direct_writes_gets_buffered_ones(tmp_path, monkeypatch):
    real = os.pwrite

    def refuse(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse)
    fetch(tmp_path, 64 * 1024, 5 * 64 * 1024 + 17)
