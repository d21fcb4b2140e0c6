"""A scorer cannot make the kernel signal another process for it.

`kill`, `tgkill`, `pidfd_send_signal`... are denied by seccomp, but a file's owner gets a
signal when I/O happens on it: `fcntl(fd, F_SETOWN, pid)` (or F_SETOWN_EX, or the ioctls
FIOSETOWN / SIOCSPGRP) on a socket pair of the child's own, O_ASYNC, one byte written, and
`pid` gets SIGIO, whose default action ends a process (F_SETSIG picks another signal). The
kernel checks only that the owner's uid matches the target's, so where the host is not root
and Landlock's signal scope (ABI >= 6, Linux 6.12) is missing, a completion could end its host
(the coordinator) or the zygote. Seccomp now denies setting an owner or an I/O signal.
"""

from __future__ import annotations

import platform

import pytest

from protocol.sandbox import Limits, Sandbox, ScoreItem
from protocol.sandbox import seccomp as seccomp_mod
from tests.hostile.scoring import EVAL_SCORER, payload_value

pytestmark = pytest.mark.skipif(not seccomp_mod.available(), reason="seccomp filter only on Linux x86_64/aarch64")

LIMITS = Limits(item_timeout_s=3.0, batch_timeout_s=10.0, memory_mb=256, spares=1, max_children=2)

_SETUP = "import fcntl, os, socket, struct\na, b = socket.socketpair()\npid = os.getppid()\n"
OWNER_CALLS = {
    "F_SETOWN": "fcntl.fcntl(a, 8, pid)",
    "F_SETOWN_EX": "fcntl.fcntl(a, 15, struct.pack('ii', 1, pid))",
    "F_SETSIG": "fcntl.fcntl(a, 10, 9)",
    "FIOSETOWN": "fcntl.ioctl(a, 0x8901, struct.pack('i', pid))",
    "SIOCSPGRP": "fcntl.ioctl(a, 0x8902, struct.pack('i', pid))",
}


def attempt(call: str) -> str:
    """A completion whose value is '1' when `call` succeeded inside the scorer, else '0'."""
    return payload_value(_SETUP + f"try:\n    {call}\n    r = '1'\nexcept OSError:\n    r = '0'\n")


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(LIMITS, allow_modules=("tests.hostile.scoring",)).start(warm=(EVAL_SCORER,))
    yield sb
    sb.close()


def test_a_scorer_cannot_name_another_process_as_the_owner_of_its_files(sandbox):
    items = [ScoreItem(attempt(call), "1") for call in OWNER_CALLS.values()]
    got = sandbox.score(EVAL_SCORER, items)
    # 0.1: the payload evaluated to '1', the call went through; 0.0: it was refused
    assert {name: r.reward for name, r in zip(OWNER_CALLS, got)} == dict.fromkeys(OWNER_CALLS, 0.0)
    # the harmless fcntl and ioctl calls Python itself makes still work
    harmless = payload_value(_SETUP + "fcntl.fcntl(a, fcntl.F_SETFL, fcntl.fcntl(a, fcntl.F_GETFL) | os.O_NONBLOCK)\n"
                             "r = str(int(bool(fcntl.fcntl(a, fcntl.F_GETFL) & os.O_NONBLOCK)))\n")
    assert sandbox.score(EVAL_SCORER, [ScoreItem(harmless, "1")])[0].reward == 0.1


def test_the_filter_still_lets_a_scorer_read_and_score(sandbox):
    got = sandbox.score(EVAL_SCORER, [ScoreItem("42", "42"), ScoreItem("6*7", "42"), ScoreItem("41", "42")])
    assert [r.reward for r in got] == [1.0, 0.1, 0.0]
    assert platform.system() == "Linux"
