"""The steps that turn a freshly forked process into a scorer sandbox (Linux; partial elsewhere).

`isolate_network` runs once in the zygote (`protocol.sandbox.zygote`) before it imports
anything: a new, empty network namespace, so every child forked from it has no interface
but a loopback that is down. `confine` runs in each child right after the fork, before it
reads any untrusted text, in this order:

1. die with the zygote (PR_SET_PDEATHSIG), stdin/stdout/stderr on /dev/null, every other
   inherited descriptor closed except the child's own socket;
2. the working directory is an empty folder nobody can write to;
3. rlimits: CORE 0, FSIZE 0 (no byte written to any file), NOFILE, NPROC 0, CPU, AS (the
   address space already mapped plus `memory_mb`);
4. when root: all groups dropped, gid and uid set to `unprivileged_user` (which drops every
   capability, so the rlimits cannot be raised again);
5. Landlock (`protocol.sandbox.landlock`): files read-only beneath Python's install and the
   imported packages' folders, nothing else; TCP, signals and abstract sockets fenced;
6. seccomp (`protocol.sandbox.seccomp`): no socket but AF_UNIX, no new process, no signal
   to or tracing of another process.

Every step that the platform refuses is reported instead of enforced (`confine` returns what
holds), and the host logs that report once; none is skipped silently.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
import sys

from protocol.sandbox import landlock, seccomp
from protocol.sandbox.limits import Limits

_CLONE_NEWNET, _CLONE_NEWUSER = 0x40000000, 0x10000000
_PR_SET_PDEATHSIG = 1


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent goes (Linux); exit now if it already has."""
    if platform.system() == "Linux":
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def isolate_network() -> str:
    """Move this (still single-threaded) process into a new network namespace, if allowed."""
    if platform.system() != "Linux":
        return "not isolated (no network namespaces on this platform)"
    libc = _libc()
    if os.geteuid() == 0 and libc.unshare(_CLONE_NEWNET) == 0:
        return "new network namespace"
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        return "new user and network namespace"
    return f"not isolated (unshare: {os.strerror(ctypes.get_errno())})"


def read_only_paths() -> list[str]:
    """What a child may read: Python's install, and the folders of the packages imported so far."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr/lib", "/lib", "/lib64", "/usr/lib64",
             "/usr/local/lib", "/etc/ld.so.cache", "/dev/null", "/dev/urandom"}
    paths.update(p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p)
    for mod in list(sys.modules.values()):
        where = getattr(mod, "__file__", None) or ""
        top = mod.__name__.split(".")[0]
        if where and top == mod.__name__:  # a top-level module or package: its folder (or file)
            paths.add(os.path.dirname(where) if where.endswith("__init__.py") else where)
    # a source checkout on sys.path (tests, editable installs) is not readable as a whole: only
    # the packages imported from it are, so keys or data kept beside the code stay out of reach
    kept: list[str] = []
    for p in sorted(p for p in paths if os.path.exists(p)):  # a path beneath a kept one adds nothing
        if not any(p.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(p)
    return kept


def confine(limits: Limits, *, keep_fd: int, workdir: str, zygote_pid: int, read_paths: list[str]) -> dict:
    """Confine this freshly forked child (see the module docstring); returns what holds.
    `read_paths`: `read_only_paths()` as the zygote computed it before forking (once per warm)."""
    die_with_parent(zygote_pid)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 1 << 16)
    os.chdir(workdir)
    os.environ.clear()
    enforced: dict = {"workdir": workdir}
    vm = _vm_bytes()
    rl = {"CORE": (0, 0), "FSIZE": (0, 0), "NOFILE": (limits.nofile, limits.nofile), "NPROC": (0, 0),
          "CPU": (limits.cpu_s, limits.cpu_s + 1),
          "AS": (vm + limits.memory_mb * 2**20, vm + limits.memory_mb * 2**20) if vm else None}
    done = []
    for name, value in rl.items():
        if value is None or not hasattr(resource, f"RLIMIT_{name}"):
            continue
        try:
            resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), value)
            done.append(name)
        except (ValueError, OSError):
            pass
    enforced["rlimits"] = done
    enforced["user"] = _drop_privileges(limits.unprivileged_user)
    try:
        ll = landlock.restrict(read_paths)
        enforced["landlock"] = ll or "not available (kernel without Landlock)"
    except OSError as exc:
        enforced["landlock"] = f"not enforced ({exc})"
    if seccomp.available():
        try:
            enforced["seccomp"] = seccomp.install()
        except OSError as exc:
            enforced["seccomp"] = f"not enforced ({exc})"
    else:
        enforced["seccomp"] = "not available on this platform"
    return enforced


def _vm_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _drop_privileges(user: str) -> str:
    if os.geteuid() != 0:
        return f"uid {os.geteuid()} (not root: kept)"
    import pwd

    try:
        entry = pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        uid = gid = 65534
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.geteuid() == 0 or os.getuid() == 0:
        raise OSError("still root after setuid")
    return f"uid {uid} gid {gid} (dropped from root)"
