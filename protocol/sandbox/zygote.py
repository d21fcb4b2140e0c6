"""The zygote: a clean helper process that forks confined scorer children for one host.

Started by `protocol.sandbox.pool.Sandbox` as a fresh interpreter (`python -I`, exec'd, not
forked: it holds no byte of the host's memory, so no key; its environment is a fixed minimal
one, so no database URL or token; only the control socket is passed to it). It joins a new
network namespace where allowed (`confine.isolate_network`), imports the scorers it is asked
to warm, and answers messages on its control socket (SOCK_SEQPACKET on Linux, SOCK_DGRAM
elsewhere), one JSON object each:

| host sends | zygote answers |
|---|---|
| `{"warm": ref}` | `{"ok": true}` once the scorer is imported and ran on harmless text, or `{"error": ...}` |
| `{"fork": true}` | `{"pid": n}` with descriptors attached (SCM_RIGHTS): the host's end of a socket pair |
| | to the new child, and a pidfd of the child (Linux >= 5.3; without it only the socket) |

The child (`protocol.sandbox.child.run`) confines itself before it reads anything. The zygote
never sees untrusted text; it reaps its children and exits when the control socket closes
or its parent is no longer the host (the host closed it or died), which kills the children
(their PR_SET_PDEATHSIG). It does not use PR_SET_PDEATHSIG itself: that fires when the host
*thread* that started it ends, and a host may start it from a pool thread.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import sys

from protocol.sandbox.confine import isolate_network, read_only_paths
from protocol.sandbox.limits import Limits


def main(argv: list[str]) -> None:
    args = json.loads(argv[0])
    ctl = socket.socket(fileno=int(args["fd"]))
    network = isolate_network()  # before any import that could start a thread
    limits = Limits(**args["limits"])
    workdir = args["workdir"]
    from protocol.sandbox import child  # noqa: F401  (imported before the first fork)

    for ref in args.get("warm", []):
        _warm(ref)
    paths = _settle()
    host = int(args["host_pid"])
    ctl.settimeout(2.0)
    while True:
        _reap()
        try:
            data = ctl.recv(65536)
        except (InterruptedError, TimeoutError):
            if os.getppid() == host:
                continue
            data = b""  # the host is gone (a datagram socket shows no end of file)
        if not data:  # the host closed the socket or died: its scratch folder goes with us
            shutil.rmtree(args["home"], ignore_errors=True)
            return
        try:
            cmd = json.loads(data)
        except ValueError:
            continue
        if "warm" in cmd:
            reply = _warm(str(cmd["warm"]))
            paths = _settle()
            ctl.send(json.dumps(reply).encode())
        elif cmd.get("fork"):
            _fork(ctl, limits, workdir, network, paths)


def _warm(ref: str) -> dict:
    from protocol.tasks import load_scorer, warm_scorer

    try:
        fn, _ = load_scorer(ref)
        warm_scorer(ref, fn)
    except Exception as exc:  # noqa: BLE001  (reported to the host as a configuration error)
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"ok": True}


def _settle() -> list[str]:
    """After imports: what children may read (computed once here, not in every child), and
    the heap frozen so that children's garbage collection does not copy every page."""
    paths = read_only_paths()
    gc.collect()
    gc.freeze()
    return paths


def _fork(ctl: socket.socket, limits: Limits, workdir: str, network: str, paths: list[str]) -> None:
    host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        from protocol.sandbox.child import run

        ctl.close()
        host_end.close()
        run(child_end, limits, workdir=workdir, zygote_pid=me, network=network, read_paths=paths)  # never returns
    child_end.close()
    fds = [host_end.fileno()]
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
            fds.append(pidfd)
        except OSError:
            pidfd = None
    try:
        socket.send_fds(ctl, [json.dumps({"pid": pid, "network": network}).encode()], fds)
    finally:
        host_end.close()
        if pidfd is not None:
            os.close(pidfd)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    main(sys.argv[1:])
