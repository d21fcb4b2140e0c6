"""Framing of the shard-exchange protocol over streams that return partial chunks."""

from __future__ import annotations

import asyncio
import struct

import pytest

from shardcast.p2p import wire
from shardcast.p2p.errors import PeerRequestFailed


class ChunkyStream:
    """Returns at most `chunk` bytes per read, like a libp2p stream; b'' at the end."""

    def __init__(self, data: bytes = b"", chunk: int = 3, eof_exc: type[Exception] | None = None):
        self.data, self.chunk, self.eof_exc = data, chunk, eof_exc
        self.written = b""

    async def read(self, n: int | None = None) -> bytes:
        if not self.data and self.eof_exc is not None:
            raise self.eof_exc()
        take = min(self.chunk, n or self.chunk)
        out, self.data = self.data[:take], self.data[take:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


def run(coro):
    return asyncio.run(coro)


def test_frames_round_trip_through_partial_reads():
    out = ChunkyStream()
    req = wire.ShardRequest(run_id="r", op="shard", version=3, index=7)
    run(wire.write_frame(out, wire.encode_model(req)))
    run(wire.write_body(out, b"z" * 10))
    back = ChunkyStream(out.written, chunk=2)
    assert wire.decode_request(run(wire.read_frame(back))) == req
    assert run(wire.read_exactly(back, 10)) == b"z" * 10


def test_a_stream_that_ends_early_is_an_error_not_a_short_read():
    with pytest.raises(PeerRequestFailed, match="ended after 4 of 10"):
        run(wire.read_exactly(ChunkyStream(b"abcd"), 10))
    with pytest.raises(PeerRequestFailed):
        run(wire.read_exactly(ChunkyStream(b"ab", eof_exc=EOFError), 10, EOFError))


def test_oversized_frames_are_refused_both_ways():
    with pytest.raises(PeerRequestFailed, match="frame"):
        run(wire.read_frame(ChunkyStream(struct.pack(">I", wire.MAX_FRAME + 1) + b"x" * 10)))
    with pytest.raises(PeerRequestFailed):
        run(wire.write_frame(ChunkyStream(), b"x" * (wire.MAX_FRAME + 1)))


@pytest.mark.parametrize("payload", [b"nope", b'{"run_id": "r", "op": "delete", "version": 1}',
                                     b'{"run_id": "r", "op": "shard", "version": -1}'])
def test_malformed_requests_are_refused(payload):
    with pytest.raises(PeerRequestFailed):
        wire.decode_request(payload)
