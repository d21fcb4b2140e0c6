"""The shard-exchange stream protocol (`/swarmrl/shards/1`): framing and message types.

One request per stream:

    client -> server   u32 BE length, then a `ShardRequest` as canonical JSON (<= 4 KiB)
    server -> client   u32 BE length, then a `ShardReply` as JSON (<= 4 KiB),
                       then exactly `reply.size` raw bytes when `reply.ok`
                       (a shard's bytes, or the signed manifest envelope's JSON)

libp2p stream reads return whatever chunk arrived, so `read_exactly` loops; a stream that
ends early or a frame over its limit is an error, never a short result. The client bounds
what it will accept before reading a byte of the body (a shard: its size in the signed
manifest; a manifest: MAX_MANIFEST_BYTES). Functions take any object with libp2p's async
`read(n)` / `write(data)`, so they are tested without a network.
"""

from __future__ import annotations

import json
import struct
from typing import Literal, Protocol

from pydantic import Field, ValidationError

from protocol.canonical import canonical_bytes
from protocol.messages import Ident, Strict
from shardcast import bounded
from shardcast.p2p.errors import PeerRequestFailed

PROTOCOL_ID = "/swarmrl/shards/1"
MAX_FRAME = 4096
MAX_MANIFEST_BYTES = bounded.MAX_MANIFEST_BYTES  # the same cap as a manifest from a relay
CHUNK = 1024 * 1024


class ShardRequest(Strict):
    run_id: Ident
    op: Literal["manifest", "shard"]
    version: int = Field(ge=0)
    index: int = Field(default=0, ge=0)


class ShardReply(Strict):
    ok: bool
    size: int = Field(default=0, ge=0)
    error: str = Field(default="", max_length=500)


class Stream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


class Pacer(Protocol):
    """A minimum rate (shardcast.p2p._host.Pace): `run` awaits one read or write by the end
    of the credit (else PeerRequestFailed); `moved(n)` credits the bytes it moved."""

    async def run(self, afn, *args): ...
    def moved(self, n: int) -> None: ...


async def read_exactly(stream: Stream, n: int, eof_error: type[Exception] | tuple = (),
                       pace: Pacer | None = None) -> bytes:
    """Read exactly `n` bytes; PeerRequestFailed if the stream ends first (or, with `pace`,
    falls below its minimum rate)."""
    parts, got = [], 0
    while got < n:
        try:
            size = min(CHUNK, n - got)
            chunk = await (stream.read(size) if pace is None else pace.run(stream.read, size))
        except eof_error as exc:  # libp2p raises StreamEOF instead of returning b""
            raise PeerRequestFailed(f"stream ended after {got} of {n} bytes") from exc
        if not chunk:
            raise PeerRequestFailed(f"stream ended after {got} of {n} bytes")
        if pace is not None:
            pace.moved(len(chunk))
        parts.append(chunk)
        got += len(chunk)
    data = b"".join(parts)
    if len(data) != n:
        raise PeerRequestFailed(f"peer sent {len(data) - n} bytes more than asked for")
    return data


async def write_frame(stream: Stream, payload: bytes) -> None:
    if len(payload) > MAX_FRAME:
        raise PeerRequestFailed(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    await stream.write(struct.pack(">I", len(payload)) + payload)


async def read_frame(stream: Stream, eof_error: type[Exception] | tuple = ()) -> bytes:
    (n,) = struct.unpack(">I", await read_exactly(stream, 4, eof_error))
    if n > MAX_FRAME:
        raise PeerRequestFailed(f"peer announced a {n}-byte frame (limit {MAX_FRAME})")
    return await read_exactly(stream, n, eof_error)


async def write_body(stream: Stream, data: bytes, pace: Pacer | None = None) -> None:
    """Write `data` in chunks (with `pace`: each by the end of its credit, else PeerRequestFailed)."""
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        chunk = bytes(view[start:start + CHUNK])
        if pace is None:
            await stream.write(chunk)
        else:
            await pace.run(stream.write, chunk)
            pace.moved(len(chunk))


def encode_model(model: Strict) -> bytes:
    return canonical_bytes(model.model_dump(mode="json"))


def decode_request(payload: bytes) -> ShardRequest:
    try:
        return ShardRequest.model_validate(json.loads(payload))
    except (ValueError, RecursionError, ValidationError) as exc:  # RecursionError: `[[[[...` of 4 KiB
        raise PeerRequestFailed("malformed shard request") from exc


def decode_reply(payload: bytes) -> ShardReply:
    try:
        return ShardReply.model_validate(json.loads(payload))
    except (ValueError, RecursionError, ValidationError) as exc:
        raise PeerRequestFailed("malformed reply from peer") from exc
