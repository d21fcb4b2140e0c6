"""Errors of the scorer sandbox (both are `protocol.errors.ProtocolError`s).

    ProtocolError
    ├── MessageError
    │   └── FrameError    a child's frame is missing, truncated, oversized, late or not JSON
    │                     (the host turns it into reward 0 for that item; callers never see it)
    └── SandboxError      no confined process can be had: the zygote cannot start or fork, or a
                          child cannot confine itself (the caller gets no rewards: retry later,
                          and read the sandbox's log lines for the cause)

A scorer reference that names no scorer, or a scorer that cannot be loaded, is a
`MessageError` (a configuration error: change the task kind or install its extra).
"""

from __future__ import annotations

from protocol.errors import MessageError, ProtocolError


class FrameError(MessageError):
    """A frame is missing, truncated, oversized, late or not JSON."""


class SandboxError(ProtocolError):
    """The scorer sandbox cannot score now: its helper process or a child could not start."""
