"""Length-prefixed JSON frames: the only thing that crosses between the scorer sandbox and its host.

One frame = 4-byte big-endian length + UTF-8 JSON. The host reads what a sandboxed child
writes with `read_frame(..., limit=...)`: the length is checked against the limit before a
byte of the body is read, the body is parsed with `json.loads` (never pickle: a child that ran
hostile code may write anything, and unpickling it would run that code in the host), and a
deadline bounds the whole read. `multiprocessing` and `concurrent.futures` pass results back
with pickle, which is why the sandbox does not use them.
"""

from __future__ import annotations

import json
import socket
import struct
import time

from protocol.sandbox.errors import FrameError

_HEADER = struct.Struct(">I")


def write_frame(sock: socket.socket, obj: object, *, deadline: float | None = None) -> None:
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    _settimeout(sock, deadline)
    try:
        sock.sendall(_HEADER.pack(len(data)) + data)
    except TimeoutError:
        raise FrameError("timed out while sending") from None
    except OSError as exc:
        raise FrameError(f"cannot send: {exc.strerror or exc}") from None


def read_frame(sock: socket.socket, *, limit: int, deadline: float | None = None) -> object:
    """One frame's JSON value; FrameError when it is late, cut off, larger than `limit` or not JSON."""
    (size,) = _HEADER.unpack(_read_exact(sock, _HEADER.size, deadline))
    if size > limit:
        raise FrameError(f"a frame of {size} bytes exceeds the limit of {limit}")
    body = _read_exact(sock, size, deadline)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FrameError("a frame is not JSON") from None


def _settimeout(sock: socket.socket, deadline: float | None) -> None:
    if deadline is None:
        sock.settimeout(None)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise FrameError("timed out")
    sock.settimeout(left)


def _read_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        _settimeout(sock, deadline)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except TimeoutError:
            raise FrameError("timed out") from None
        except OSError as exc:
            raise FrameError(f"cannot receive: {exc.strerror or exc}") from None
        if not chunk:
            raise FrameError("the other side closed the connection")
        buf += chunk
    return bytes(buf)
