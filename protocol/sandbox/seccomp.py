"""A seccomp filter for scorer children: no sockets but Unix ones, no new processes, no io_uring.

Installed by `protocol.sandbox.confine` last, after Landlock. The filter is a fixed classic-BPF
program (Linux x86_64 and aarch64) that makes these system calls fail with EACCES:
`socket` for any family but AF_UNIX (no TCP, UDP, raw, netlink or packet socket, whatever the
process's privileges or namespace); `fork`, `vfork` and `clone` without CLONE_THREAD (no new
process: a fork bomb fails at once; threads still start, as `clone3` fails with ENOSYS and
glibc falls back to `clone`); `io_uring_setup` (io_uring opens sockets without the socket
call); signals and tracing aimed at other processes (`kill`, `tkill`, `tgkill`, `ptrace`,
`process_vm_readv/writev`, `pidfd_open`, `pidfd_send_signal`, `rt_(tg)sigqueueinfo`: a scorer
cannot stop or read a sibling scorer or its host); making another process the owner of a file,
which the kernel then signals on I/O (`fcntl` F_SETOWN, F_SETOWN_EX, F_SETSIG and the `ioctl`s
FIOSETOWN, SIOCSPGRP: one byte written to an O_ASYNC socket pair would send SIGIO, which ends a
process, to the host); `open_by_handle_at`; and every x32 call. A process of another
architecture is killed. It never needs privileges (it sets no_new_privs first).

Written out by hand rather than through libseccomp's Python binding, which is not on PyPI (the
`seccomp` module ships only with libseccomp's own build); the program is about twenty instructions.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_AF_UNIX, _CLONE_THREAD, _X32_BIT = 1, 0x00010000, 0x40000000
_F_SETOWN, _F_SETSIG, _F_SETOWN_EX = 8, 10, 15          # fcntl commands that aim I/O signals
_FIOSETOWN, _SIOCSPGRP = 0x8901, 0x8902                 # ioctl commands that do the same

# arch token; the calls the filter looks at; the calls it denies outright (-1: none on that arch)
_ARCH = {
    "x86_64": (0xC000003E, dict(socket=41, clone=56, clone3=435, fcntl=72, ioctl=16),
               dict(io_uring_setup=425, fork=57, vfork=58, kill=62, tkill=200, tgkill=234, ptrace=101,
                    process_vm_readv=310, process_vm_writev=311, pidfd_open=434, pidfd_send_signal=424,
                    rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, open_by_handle_at=304)),
    "aarch64": (0xC00000B7, dict(socket=198, clone=220, clone3=435, fcntl=25, ioctl=29),
                dict(io_uring_setup=425, kill=129, tkill=130, tgkill=131, ptrace=117, process_vm_readv=270,
                     process_vm_writev=271, pidfd_open=434, pidfd_send_signal=424, rt_sigqueueinfo=138,
                     rt_tgsigqueueinfo=240, open_by_handle_at=265)),
}


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def available() -> bool:
    return platform.system() == "Linux" and platform.machine() in _ARCH


def _program(arch: int, nr: dict[str, int], denied: dict[str, int], x32: bool) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k); labels resolved into the relative jumps BPF wants."""
    deny = sorted(denied.values())
    code: list[tuple] = [(_LD_W_ABS, 0, 0, 4), (_JEQ, "next1", "kill", arch), ("next1",), (_LD_W_ABS, 0, 0, 0)]
    if x32:
        code.append((_JGE, "deny", 0, _X32_BIT))
    code += [(_JEQ, "deny", 0, n) for n in deny]
    code.append((_JEQ, "nosys", 0, nr["clone3"]))  # ENOSYS: glibc then starts threads with clone
    code += [(_JEQ, "socket", 0, nr["socket"]), (_JEQ, "fcntl", 0, nr["fcntl"]), (_JEQ, "ioctl", 0, nr["ioctl"]),
             (_JEQ, "clone", "allow", nr["clone"]),
             ("socket",), (_LD_W_ABS, 0, 0, 16), (_JEQ, "allow", "deny", _AF_UNIX),
             # the command is the second argument (its low 32 bits: the kernel reads an unsigned int)
             ("fcntl",), (_LD_W_ABS, 0, 0, 24), (_JEQ, "deny", 0, _F_SETOWN), (_JEQ, "deny", 0, _F_SETOWN_EX),
             (_JEQ, "deny", "allow", _F_SETSIG),
             ("ioctl",), (_LD_W_ABS, 0, 0, 24), (_JEQ, "deny", 0, _FIOSETOWN), (_JEQ, "deny", "allow", _SIOCSPGRP),
             ("clone",), (_LD_W_ABS, 0, 0, 16), (_JSET, "allow", "deny", _CLONE_THREAD),
             ("kill",), (_RET, 0, 0, _RET_KILL_PROCESS),
             ("deny",), (_RET, 0, 0, _RET_ERRNO | errno.EACCES),
             ("nosys",), (_RET, 0, 0, _RET_ERRNO | errno.ENOSYS),
             ("allow",), (_RET, 0, 0, _RET_ALLOW)]
    labels, out = {}, []
    for ins in code:
        if len(ins) == 1:
            labels[ins[0]] = len(out)
        else:
            out.append(ins)

    def rel(target, at):
        return 0 if target == 0 else labels[target] - at - 1

    return [(c, rel(jt, i) if c not in (_LD_W_ABS, _RET) else 0, rel(jf, i) if c not in (_LD_W_ABS, _RET) else 0, k)
            for i, (c, jt, jf, k) in enumerate(out)]


def install() -> str:
    """Install the filter on this process (and its future threads); OSError on failure."""
    arch, nr, denied = _ARCH[platform.machine()]
    prog = _program(arch, nr, denied, x32=platform.machine() == "x86_64")
    raw = b"".join(struct.pack("=HBBI", c, jt, jf, k) for c, jt, jf, k in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _Fprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
    return "only AF_UNIX sockets; no new processes, signals to others (kill or I/O owner), tracing or io_uring"
