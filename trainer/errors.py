"""Errors raised by the trainer.

    TrainerError            base of every trainer error (a ProtocolError, so the CLI prints it as one line)
    ├── CheckpointError     a checkpoint folder is missing, incomplete or unreadable
    ├── BatchError          a training group is malformed (lengths, versions, temperatures)
    └── DistributedError    torchrun / process-group set-up failed or ranks disagree

Messages say what is wrong and what to change.
"""

from __future__ import annotations

from protocol.errors import ProtocolError


class TrainerError(ProtocolError):
    """Base of every trainer error."""


class CheckpointError(TrainerError):
    """A checkpoint folder is missing, incomplete or unreadable."""


class BatchError(TrainerError):
    """A training group cannot be turned into training data."""


class DistributedError(TrainerError):
    """Distributed set-up failed or ranks disagree."""
