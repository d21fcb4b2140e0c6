"""The host side of the scorer sandbox: a pool of pre-forked, confined children and one call.

`Sandbox.score(scorer, items)` scores a batch (one submission's completions) in one round trip
to one child and returns one `ScoreResult` per item. Collaborators: the zygote
(`protocol.sandbox.zygote`) forks the children, which confine themselves
(`protocol.sandbox.confine`) and score (`protocol.sandbox.child`); callers are
`coordinator.taskbook` (intake), `verifier.checks.reward` (and through it `swarmrl audit
reverify`) and `protocol.tasks.score`.

Invariants:
- nothing a child sends is trusted: frames are size-capped JSON read under a deadline, a
  reward must be a finite number in [0, 1] for the item asked, in order; anything else
  (timeout, death, garbage, an oversized frame) gives that item reward 0 with a short
  reason, the child is killed (SIGKILL through its pidfd), and the rest of the batch goes to
  a fresh child. Items still unscored when `batch_timeout_s` runs out get 0 too;
- a child that ran an impure scorer never scores another batch, so hostile text can at most
  choose the rewards of its own batch (one worker's own submission), never another's;
- `spares` confined children wait pre-forked; a background thread forks replacements, and a
  zygote that died is started again, so the service stays up whatever a scorer does;
- the host holds no lock while a child scores, except its slot (at most `max_children`
  batches at once).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import weakref
from dataclasses import dataclass, field

from protocol.errors import MessageError
from protocol.sandbox.errors import FrameError, SandboxError
from protocol.sandbox.frames import read_frame, write_frame
from protocol.sandbox.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger("swarmrl.sandbox")

_BOOT = ("import json, sys; a = json.loads(sys.argv[1]); sys.path[:] = a['path']; "
         "from protocol.sandbox.zygote import main; main(sys.argv[1:])")
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false"}


@dataclass(frozen=True)
class ScoreItem:
    """One completion to score: the worker's text, the task's answer, the task's metadata (JSON)."""

    completion: str
    answer: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreResult:
    """The reward (0 when anything went wrong) and why it is 0 when it is not the scorer's own verdict."""

    reward: float
    reason: str = ""


@dataclass
class _Child:
    sock: socket.socket
    pid: int
    pidfd: int | None
    gen: int = 0          # the warm generation it was forked in: it knows the scorers warmed before
    enforced: dict | None = None
    batches: int = 0

    def kill(self) -> None:
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
        self.sock.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Sandbox:
    """A scorer pool; thread-safe. `allow_modules`: modules whose functions may be named as
    `<module>:<function>` scorers (the operator's own code, e.g. tests)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, allow_modules: tuple[str, ...] = ()):
        self.limits = limits
        self.allow_modules = frozenset(allow_modules)
        self.enforced: dict | None = None   # what the first child reported it enforces
        self._lock = threading.Lock()       # zygote, idle list, warmed set
        self._need = threading.Condition(self._lock)
        self._slots = threading.BoundedSemaphore(limits.max_children)
        self._idle: list[_Child] = []
        self._warmed: set[str] = set()
        self._gen = 0  # bumped by every warm: children forked before it lack that scorer
        self._zygote: subprocess.Popen | None = None
        self._ctl: socket.socket | None = None
        self._workdir = self._home = ""
        self._closed = False
        self._filler: threading.Thread | None = None
        self._finalizer = weakref.finalize(self, _shutdown, os.getpid(), self._idle, [None], "")

    # -- public -----------------------------------------------------------------------------
    def start(self, warm: tuple[str, ...] = ()) -> Sandbox:
        """Start the zygote and warm these scorers now (MessageError if one cannot load)."""
        with self._lock:
            self._ensure_zygote()
        for ref in warm:
            self.warm(ref)
        return self

    def warm(self, ref: str) -> None:
        self._check(ref)
        with self._lock:
            if ref in self._warmed:
                return
            self._ensure_zygote()
            reply = self._command({"warm": ref})
            if "error" in reply:
                raise MessageError(f"cannot load the scorer of task kind {ref!r}: {reply['error']}")
            self._warmed.add(ref)
            self._gen += 1
            stale, self._idle[:] = list(self._idle), []  # forked before the warm: without it
            self._need.notify_all()
        for c in stale:
            c.kill()

    def score(self, scorer: str, items: list[ScoreItem]) -> list[ScoreResult]:
        """One batch, one result per item (see the module docstring). MessageError only when
        `scorer` names no scorer or it cannot be loaded (a configuration error, not hostile
        input); SandboxError when no confined process can be had (nothing was scored)."""
        pure = self._check(scorer)
        if not items:
            return []
        self.warm(scorer)
        task, payload = batch_payload(items)
        results: list[ScoreResult | None] = [None] * len(items)
        deadline = time.monotonic() + self.limits.batch_timeout_s
        with self._slots:
            k = 0
            while k < len(items):
                if time.monotonic() >= deadline:
                    self._fail(scorer, results, k, "the batch ran out of time")
                    break
                k = self._run(self._take(), scorer, pure, task, payload, results, k, deadline)
        for i, r in enumerate(results):
            if r is None:  # a later item of a batch cut short
                results[i] = ScoreResult(0.0, "the batch ran out of time")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._need.notify_all()
        self._finalizer()

    # -- children -----------------------------------------------------------------------------
    def _check(self, ref: str) -> bool:
        from protocol.tasks import describe, plugin_module

        pure = describe(ref)
        module = plugin_module(ref)
        if module is not None and module not in self.allow_modules:
            raise MessageError(f"scorer {ref!r} is a module reference this sandbox was not told to allow")
        return pure

    def _run(self, child: _Child, scorer: str, pure: bool, task: list | None, payload: list, results: list,
             k: int, deadline: float) -> int:
        """Send items k.. to `child`; fill `results`; return the index to go on from."""
        keep = False
        try:
            request = {"scorer": scorer, "first": k, "items": payload[k:]}
            if task is not None:
                request["task"] = task
            write_frame(child.sock, request, deadline=min(deadline, time.monotonic() + self.limits.item_timeout_s))
            cpu = 0.0
            for i in range(k, len(payload)):
                item_deadline = min(deadline, time.monotonic() + self.limits.item_timeout_s)
                try:
                    frame = read_frame(child.sock, limit=self.limits.result_bytes, deadline=item_deadline)
                except FrameError as exc:
                    why = ("timed out" if "timed out" in str(exc) else
                           "the scorer process died" if "closed" in str(exc) else f"bad output: {exc}")
                    self._fail(scorer, results, i, why)
                    return i + 1
                if isinstance(frame, dict) and i == k and set(frame) == {"error"}:
                    raise MessageError(f"cannot load the scorer of task kind {scorer!r}: "
                                       f"{printable(str(frame['error']), 300)}")
                reward, why = _parse(frame, i, self.limits.reason_chars)
                if reward is None:
                    self._fail(scorer, results, i, why)
                    return i + 1
                results[i] = ScoreResult(reward, why)
                if isinstance(frame.get("cpu"), (int, float)):
                    cpu = float(frame["cpu"])
            child.batches += 1
            keep = (pure and child.batches < self.limits.max_requests and cpu < self.limits.cpu_s / 2)
            return len(payload)
        except FrameError as exc:  # the request itself could not be sent: the child is gone
            self._fail(scorer, results, k, f"the scorer process did not take the batch ({exc})")
            return k + 1
        finally:
            self._release(child, keep)

    def _fail(self, scorer: str, results: list, i: int, why: str) -> None:
        results[i] = ScoreResult(0.0, printable(why, self.limits.reason_chars))
        log.warning("sandbox: %s: item %d scored 0: %s", scorer, i, results[i].reason)

    def _take(self) -> _Child:
        with self._lock:
            child = self._idle.pop() if self._idle else None
            self._need.notify_all()
            if child is not None and child.gen != self._gen:
                child.kill()
                child = None
            if child is None:
                child = self._fork()
        if child.enforced is None:
            self._ready(child)
        return child

    def _release(self, child: _Child, keep: bool) -> None:
        with self._lock:
            if keep and not self._closed and child.gen == self._gen:
                self._idle.append(child)
                return
        child.kill()

    def _ready(self, child: _Child) -> None:
        try:
            frame = read_frame(child.sock, limit=65536, deadline=time.monotonic() + self.limits.ready_timeout_s)
        except FrameError as exc:
            child.kill()
            raise SandboxError(f"a scorer sandbox process did not start: {exc}") from None
        if not (isinstance(frame, dict) and frame.get("ready") is True):
            child.kill()
            raise SandboxError(f"a scorer sandbox process could not confine itself: {str(frame)[:500]}")
        child.enforced = frame.get("enforced") or {}
        if self.enforced is None:
            self.enforced = child.enforced
            log.info("scorer sandbox: %s", json.dumps(child.enforced, sort_keys=True))

    def _fork(self) -> _Child:
        """A new child from the zygote (caller holds the lock); restarts a dead zygote once."""
        for attempt in (0, 1):
            self._ensure_zygote()
            try:
                self._ctl.send(b'{"fork":true}')
                data, fds, _, _ = socket.recv_fds(self._ctl, 4096, 2)
                if not data or not fds:
                    raise OSError("the zygote closed its socket")
                info = json.loads(data)
                return _Child(socket.socket(fileno=fds[0]), int(info["pid"]), fds[1] if len(fds) > 1 else None,
                              gen=self._gen)
            except (OSError, ValueError, KeyError) as exc:
                self._stop_zygote()
                if attempt:
                    raise SandboxError(f"the scorer sandbox cannot fork: {exc}") from None
        raise AssertionError("unreachable")

    def _fill_once(self) -> bool:
        """Fork and confine one spare child if fewer than `spares` wait; False once closed."""
        with self._lock:
            if self._closed:
                return False
            if len(self._idle) >= self.limits.spares:
                self._need.wait(5.0)
                return not self._closed
            try:
                child = self._fork()
            except SandboxError as exc:
                log.warning("scorer sandbox: %s", exc)
                self._need.wait(1.0)
                return not self._closed
        try:
            self._ready(child)
        except SandboxError as exc:
            log.warning("scorer sandbox: %s", exc)
            time.sleep(1.0)
            return True
        self._release(child, keep=True)
        return True

    # -- the zygote ---------------------------------------------------------------------------
    def _command(self, cmd: dict) -> dict:
        self._ctl.send(json.dumps(cmd).encode())
        data = self._ctl.recv(65536)
        if not data:
            self._stop_zygote()
            raise SandboxError("the scorer sandbox's zygote exited (see its log lines above)")
        return json.loads(data)

    def _ensure_zygote(self) -> None:
        if self._closed:
            raise SandboxError("the scorer sandbox is closed")
        if self._zygote is not None and self._zygote.poll() is None:
            return
        self._stop_zygote()
        if not self._workdir:
            # the zygote's scratch (its imports may cache files in HOME: matplotlib does) and,
            # inside it, the children's working folder, which stays empty and unwritable
            self._home = tempfile.mkdtemp(prefix="swarmrl-sandbox-")
            self._workdir = os.path.join(self._home, "cwd")
            os.mkdir(self._workdir, 0o555)
        kind = socket.SOCK_SEQPACKET if sys.platform == "linux" else socket.SOCK_DGRAM  # message boundaries
        host, there = socket.socketpair(socket.AF_UNIX, kind)
        args = {"fd": there.fileno(), "host_pid": os.getpid(), "path": [os.path.abspath(p) for p in sys.path], "limits": self.limits.__dict__,
                "workdir": self._workdir, "home": self._home, "warm": sorted(self._warmed)}
        env = {**_ENV, "HOME": self._home, "MPLCONFIGDIR": os.path.join(self._home, ".config")}
        self._zygote = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, json.dumps(args)],
                                        pass_fds=(there.fileno(),), env=env, cwd=self._workdir, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, close_fds=True,
                                        start_new_session=True)  # a kill of the host's group: it still cleans up
        there.close()
        self._ctl = host
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, os.getpid(), self._idle, [self._zygote, self._ctl],
                                           self._home)
        if self._filler is None or not self._filler.is_alive():
            self._filler = threading.Thread(target=_fill, args=(weakref.ref(self),), name="sandbox-fill", daemon=True)
            self._filler.start()

    def _stop_zygote(self) -> None:
        """(Caller holds the lock.) Its children die with it: drop the idle ones now."""
        stale, self._idle[:] = list(self._idle), []
        self._gen += 1
        for c in stale:
            c.kill()
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._zygote is not None:
            if self._zygote.poll() is None:
                self._zygote.kill()
            self._zygote.wait()
            self._zygote = None


def _fill(ref: weakref.ref) -> None:
    """The spare-forking thread; holds the sandbox only while it works, so that an unused
    Sandbox is still collected (and its finalizer stops the zygote)."""
    while True:
        sandbox = ref()
        if sandbox is None or not sandbox._fill_once():
            return
        del sandbox


_INVISIBLE = ("Cc", "Cf", "Zl", "Zp", "Cs")  # controls, format (bidi), line/paragraph separators


def batch_payload(items: list[ScoreItem]) -> tuple[list | None, list]:
    """(task, items) of a batch's request to a child (`protocol.sandbox.child`). When every item
    has the same answer and metadata (one submission's completions: every caller's case), the
    task `[answer, metadata]` is sent once and each item is its completion alone: a task's
    metadata (up to MAX_TASK_DATA_BYTES) per completion made a batch of 256 carry 128 MiB.
    Otherwise task is None and each item is `[completion, answer, metadata]`."""
    first = items[0]
    if all(i.answer == first.answer and (i.metadata is first.metadata or i.metadata == first.metadata)
           for i in items[1:]):
        return [str(first.answer), dict(first.metadata)], [str(i.completion) for i in items]
    return None, [[str(i.completion), str(i.answer), dict(i.metadata)] for i in items]


def printable(text: str, limit: int) -> str:
    """Text a child sent (a scorer's reason quotes worker text; a child that ran its text writes
    any frame) as one printable line of at most `limit` characters: every control, format or
    separator character (newlines, escape sequences, NUL, bidi overrides, U+2028) written as
    an escape (`\\n`, `\\x1b`, `\\u202e`), so a reason stored in a verdict or written to a log
    cannot forge lines or drive a terminal."""
    return "".join(_escape(c) if unicodedata.category(c) in _INVISIBLE else c for c in text[:limit])[:limit]


def _escape(c: str) -> str:
    n = ord(c)
    if c in "\n\r\t":
        return repr(c)[1:-1]
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _parse(frame: object, i: int, reason_chars: int) -> tuple[float | None, str]:
    """(reward, reason) of a child's frame for item i; reward None when the frame is garbage."""
    if not isinstance(frame, dict) or frame.get("i") != i:
        return None, "bad output: not the result of this item"
    r, why = frame.get("r"), frame.get("why", "")
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0.0 <= r <= 1.0:
        return None, "bad output: the reward is not a number in [0, 1]"
    if not isinstance(why, str):
        return None, "bad output: the reason is not text"
    return float(r), printable(why, reason_chars)


def _shutdown(owner: int, idle: list[_Child], zygote: list, home: str) -> None:
    """Finalizer: kill idle children and the zygote, remove the zygote's scratch folder; only in
    the process that started them (a forked copy of the host that exits must not touch them)."""
    if os.getpid() != owner:
        return
    for c in list(idle):
        c.kill()
    idle.clear()
    proc, ctl = (zygote + [None, None])[:2]
    if ctl is not None:
        ctl.close()
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if home:
        shutil.rmtree(home, ignore_errors=True)
