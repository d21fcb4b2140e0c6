"""A scorer child: confine itself, say so, then score batches sent by the host over its socket.

Runs in a process forked by `protocol.sandbox.zygote`. After `confine` it writes one frame
`{"ready": true, "enforced": {...}}` (or `{"ready": false, "error": ...}` and exits). Then, per
request `{"scorer": ref, "first": k, "items": [[completion, answer, metadata], ...]}`, or
`{"scorer": ref, "first": k, "task": [answer, metadata], "items": [completion, ...]}` for a batch
of one task (its metadata sent once, not once per completion; each item still gets a copy of
its own, so a scorer that changes it cannot change another item's reward), it
writes one frame per item, in order, `{"i": k + j, "r": reward, "why": reason}` (reason empty when the
scorer ran normally), or a single `{"error": ...}` when the scorer cannot be loaded. A
scorer's exception (any BaseException: MemoryError, RecursionError, SystemExit...) is that
item's reward 0 with the exception as reason. The last frame of a batch carries `"cpu"`,
the child's CPU seconds so far, so the host can retire it before RLIMIT_CPU would.

Nothing here is trusted by the host: hostile text may take this process over, and the host
validates every frame (`protocol.sandbox.pool`). A child serves one batch when the scorer is
not pure (it may have run the text as code) and exits; the host never reuses it.
"""

from __future__ import annotations

import copy
import math
import os
import resource
import socket

from protocol.sandbox.confine import confine
from protocol.sandbox.errors import FrameError
from protocol.sandbox.frames import read_frame, write_frame
from protocol.sandbox.limits import Limits

_REQUEST_LIMIT = 256 * 2**20  # requests come from the host (trusted); this only bounds a broken one


def run(sock: socket.socket, limits: Limits, *, workdir: str, zygote_pid: int, network: str,
        read_paths: list[str]) -> None:
    """The child's whole life; never returns (os._exit)."""
    code = 0
    try:
        try:
            enforced = {"network": network,
                        **confine(limits, keep_fd=sock.fileno(), workdir=workdir, zygote_pid=zygote_pid,
                                 read_paths=read_paths)}
        except Exception as exc:  # noqa: BLE001  (reported to the host, which refuses the child)
            write_frame(sock, {"ready": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
            os._exit(3)
        write_frame(sock, {"ready": True, "enforced": enforced})
        while True:
            try:
                req = read_frame(sock, limit=_REQUEST_LIMIT)
            except FrameError:
                break  # the host closed the socket: done
            if not _serve(sock, req, limits):
                break
    except BaseException:  # noqa: BLE001  (nothing may escape into the zygote's code after fork)
        code = 4
    os._exit(code)


def _serve(sock: socket.socket, req: dict, limits: Limits) -> bool:
    """Score one batch; True when this child may serve another."""
    from protocol.tasks import load_scorer

    try:
        fn, pure = load_scorer(req["scorer"])
    except Exception as exc:  # noqa: BLE001
        write_frame(sock, {"error": _why(exc, limits)})
        return False
    items, first, task = req["items"], int(req.get("first", 0)), req.get("task")
    for j, item in enumerate(items):
        reward, why = 0.0, ""
        try:
            if task is None:
                completion, answer, metadata = item
            else:
                completion, answer, metadata = item, task[0], copy.deepcopy(task[1])
            value = float(fn(completion, answer, metadata))
            if math.isfinite(value) and 0.0 <= value <= 1.0:
                reward = value
            else:
                why = f"the scorer returned {value!r}, outside [0, 1]"
        except BaseException as exc:  # noqa: BLE001  (the scorer is not trusted to raise nicely)
            why = _why(exc, limits)
        frame = {"i": first + j, "r": reward, "why": why}
        if j == len(items) - 1:
            frame["cpu"] = _cpu_s()
        write_frame(sock, frame)
    return pure


def _why(exc: BaseException, limits: Limits) -> str:
    try:
        text = f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: BLE001  (a hostile __str__)
        text = type(exc).__name__
    return text[: limits.reason_chars]


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return round(r.ru_utime + r.ru_stime, 3)
