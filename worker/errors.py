"""Errors of the worker daemon.

    WorkerError
    ├── Banned            the coordinator banned this identity; nothing more to do with this key
    ├── LeaseError        a lease is not usable (bad signature, someone else's, wrong run, expired)
    ├── PolicyUnavailable no allowed policy version could be fetched before the leases expired
    └── EngineRefused     the inference engine cannot run as the run requires (vLLM settings the run
                          does not allow, hidden states that could not be captured for a proof)

Network failures arrive as `protocol.errors.Unavailable` (retry with backoff) or
`protocol.errors.Rejected` (do not retry the same message); the daemon handles those at its
boundary (`protocol.retry.retry_call`) and only raises these errors for what it cannot recover
from by waiting. A stop requested while waiting or retrying is `protocol.errors.Stopped`.
"""

from __future__ import annotations

from protocol.errors import ProtocolError


class WorkerError(ProtocolError):
    """Base of the worker's errors (a ProtocolError, so the CLI prints it as one line)."""


class Banned(WorkerError):
    """The coordinator refuses this identity for good."""


class LeaseError(WorkerError):
    """A lease cannot be used."""


class PolicyUnavailable(WorkerError):
    """No allowed policy version could be obtained in time."""


class EngineRefused(WorkerError):
    """The engine would compute or prove differently from what the run allows; nothing is submitted."""
