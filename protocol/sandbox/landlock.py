"""Landlock (Linux >= 5.13): an unprivileged process takes away its own file and network access.

Used by `protocol.sandbox.confine` in every scorer child, after its imports and before it reads
any untrusted text. `restrict(read_only=paths)` leaves the process (and anything it could
start) able to read files beneath `read_only` and nothing else: no write, create, remove,
rename, truncate or device ioctl anywhere, no read outside those paths (key files, the
database, /proc of other processes). Depending on the kernel's Landlock ABI it also denies
TCP bind/connect (ABI >= 4), connecting to abstract Unix sockets and sending signals outside
the sandbox (ABI >= 6). File descriptors opened before the call keep working.

Written with ctypes rather than taken from PyPI: the only binding there (`landlock`) is a
pre-release (1.0.0.dev5), and the three system calls need about sixty lines.
"""

from __future__ import annotations

import ctypes
import os
import platform

_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create_ruleset, add_rule, restrict_self
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# filesystem rights, by the ABI that introduced them
_FS_ABI1 = (1 << 13) - 1        # execute .. make_sym
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_READ_FILE, _READ_DIR = 1 << 2, 1 << 3
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI (0 when Landlock is absent, disabled or not Linux)."""
    nums = _SYS.get(platform.machine())
    if platform.system() != "Linux" or nums is None:
        return 0
    v = _libc().syscall(nums[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(v))


def restrict(read_only: list[str]) -> dict:
    """Confine this process as described above; returns what was enforced. OSError on failure."""
    abi = abi_version()
    if abi < 1:
        return {}
    create, add_rule, restrict_self = _SYS[platform.machine()]
    libc = _libc()
    fs = _FS_ABI1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0) | (_IOCTL_DEV if abi >= 5 else 0)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    fd = libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        allowed = []
        for path in dict.fromkeys(read_only):
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rights = (_READ_FILE | _READ_DIR) if os.path.isdir(path) else _READ_FILE
                rule = _PathBeneathAttr(rights, pfd)
                if libc.syscall(add_rule, ctypes.c_int(fd), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                                ctypes.c_uint32(0)) != 0:
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({path}) failed")
                allowed.append(path)
            finally:
                os.close(pfd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(restrict_self, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(fd)
    return {"landlock_abi": abi, "files": "read-only beneath " + ", ".join(allowed),
            "tcp": "denied" if net else "not restricted (Landlock ABI < 4)",
            "signals_and_abstract_sockets": "scoped" if scoped else "not restricted (Landlock ABI < 6)"}
