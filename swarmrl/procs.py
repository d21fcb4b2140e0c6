"""Running swarmrl roles as child processes: the demo's and the integration tests' launcher.

Each role runs as `python -m swarmrl <role> --config <file>` with its output in
`<logs>/<name>.log`. `ProcessGroup` starts them, tells whether they are alive, and stops
them all (SIGTERM, then SIGKILL after a grace period) on exit, on Ctrl-C, or when a test
ends — no child outlives its parent's `with` block.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from protocol.config import dump_toml


LINUX_EPHEMERAL = (32768, 60999)
_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return LINUX_EPHEMERAL


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, for a service started next to bind.

    Chosen outside the kernel's ephemeral range, so that until the service binds it no other
    process can be handed it by a bind to port 0 or an outgoing connection. (From inside that
    range, a coordinator slow to start on a busy core once lost its port to a worker's status
    server, which answered the other roles' requests to the coordinator with 404s.) Never the
    same port twice in one process."""
    lo, hi = _ephemeral_range()
    pool = range(max(1024, lo - 12000), lo) if lo > 2048 else range(hi + 1, 65536)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(pool)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # that pool is crowded: fall back to one the kernel picks
        s.bind((host, 0))
        return s.getsockname()[1]


def write_config(path: Path, cfg: BaseModel) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(cfg))
    return path


def child_env(threads: int = 1, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


AUTOGROUP = "/proc/self/autogroup"


def session_priority(nice: int) -> None:
    """This process at CPU priority `nice` (os.nice: added to its own), and so its session
    where Linux schedules sessions as groups (autogroup,
    /proc/sys/kernel/sched_autogroup_enabled, on by default in many distributions' kernels). A
    process that started a session of its own (setsid, as every role here does) is then one
    group among the others, each with an equal share of the CPU whatever its processes' nice
    values: measured on this machine, a nice-19 and a nice-0
    spinner in sessions of their own, on one CPU, each took half of it; with the session's
    nice set as well (writing `nice` to /proc/self/autogroup), 0.21 s against 2.0 s. So
    without this the demo's workers at nice 10 competed with the coordinator as equals.
    Call it in a process that leads its session (the session's nice is every member's).
    Best effort for the session: where the file is absent or not writable, only the nice."""
    now = os.nice(nice)
    try:
        with open(AUTOGROUP, "w") as f:
            f.write(str(now))
    except OSError:
        pass


@dataclass
class ProcessGroup:
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict | None = None, module: str = "swarmrl",
              nice: int = 0, prefix: list[str] | None = None) -> Child:
        """Start `python -m module *args` in a session of its own; `nice` > 0 runs it (and its
        threads and children) at lower CPU priority (`session_priority`);
        `prefix` goes before the command line and must exec it (e.g. `ip netns exec NS`, tests/wan)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        fh = open(log, "ab")
        popen = subprocess.Popen([*(prefix or []), sys.executable, "-m", module, *args], stdout=fh, stderr=subprocess.STDOUT,
                                 env=env or child_env(), start_new_session=True,
                                 preexec_fn=(lambda: session_priority(nice)) if nice > 0 else None)
        fh.close()
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def get(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        c = self.get(name)
        return _stop(c, sig, timeout_s)

    def stop_all(self, timeout_s: float = 15.0) -> None:
        live = [c for c in self.children if c.alive]
        for c in reversed(live):
            try:
                c.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        for c in live:
            try:
                c.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(c)

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()


def _kill_group(c: Child) -> None:
    try:
        os.killpg(c.popen.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        c.popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _stop(c: Child, sig: int, timeout_s: float) -> int | None:
    if c.alive:
        try:
            c.popen.send_signal(sig)
            c.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(c)
        except ProcessLookupError:
            pass
    return c.popen.returncode
