"""Data connections that outlive a download (shardcast.transfer.Connections park/prewarm): a
pre-opened connection survives the node's header timeout and carries the next version's first
shard; a client's download threads leave their connections for the next download. Against an
in-process origin over real HTTP on loopback."""

from __future__ import annotations

import threading

import pytest
from test_shardcast_origin_client import SHARD, ckpt

from protocol import routes
from protocol.identity import KeyPair
from shardcast.client import ShardcastClient
from shardcast.config import FrontLimits, OriginConfig
from shardcast.origin import Origin
from shardcast.transfer import Connections

HEADER_TIMEOUT_S = 0.5


@pytest.fixture
def op():
    return KeyPair.generate()


@pytest.fixture
def origin(tmp_path, op):
    cfg = OriginConfig(data_dir=tmp_path / "o", port=0, shard_size=SHARD, keep_versions=2,
                       front=FrontLimits(header_timeout_s=HEADER_TIMEOUT_S))
    o = Origin(cfg, op, "r")
    o.start()
    yield o
    o.stop()


def _local_port(conns: Connections, url: str) -> int:
    (_, conn), = conns._idle[url]
    return conn.sock.getsockname()[1]


def test_a_prewarmed_connection_outlives_the_header_timeout_and_carries_the_first_shard(tmp_path, origin):
    conns = Connections()
    probe = routes.SC_SHARD.format(version=0, index=0) + "?wait_s=0"
    assert conns.prewarm(origin.url, probe)           # nothing published yet: a 404, kept alive
    assert conns.idle(origin.url) == 1
    port = _local_port(conns, origin.url)
    threading.Event().wait(HEADER_TIMEOUT_S * 3)     # a new connection without a request is closed by now
    origin.publish(ckpt(tmp_path / "c"), 0, 0)
    got: list = []

    def download() -> None:  # another thread, as a download thread takes it
        resp = conns.get(origin.url, routes.SC_SHARD.format(version=0, index=0), {}, head_timeout_s=5)
        got.append((resp.status, resp.conn.sock.getsockname()[1]))
        resp.finish(False)

    t = threading.Thread(target=download)
    t.start()
    t.join(10)
    assert got == [(200, port)]                       # the same TCP connection, no new handshake
    assert conns.idle(origin.url) == 0
    conns.close_idle()


def test_a_clients_download_threads_leave_their_connections_for_the_next_version(tmp_path, origin, op):
    with ShardcastClient([origin.url], op.public, tmp_path / "cache", run_id="r") as client:
        origin.publish(ckpt(tmp_path / "c0", seed=0), 0, 0)
        assert client.wait_for_version(None, 10) == 0
        client.fetch(0)
        assert client.conns.idle(origin.url) >= 1      # parked by the download threads
        ports = {conn.sock.getsockname()[1] for _, conn in client.conns._idle[origin.url]}
        origin.publish(ckpt(tmp_path / "c1", seed=1), 1, 1)
        assert client.wait_for_version(0, 10) == 1
        seen: list[int] = []
        from shardcast import fetch as fetch_mod

        real_get = Connections.get

        def spy(self, base, path, headers, head_timeout_s):
            resp = real_get(self, base, path, headers, head_timeout_s)
            seen.append(resp.conn.sock.getsockname()[1])
            return resp

        Connections.get = spy
        try:
            client.fetch(1)
        finally:
            Connections.get = real_get
        assert seen and seen[0] in ports                 # the first request of v1 went on a kept connection
        assert fetch_mod.PREWARM_SOURCES >= 1
    assert client.conns.idle(origin.url) == 0          # closed with the client
