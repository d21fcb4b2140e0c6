"""The scorer sandbox's limits: part of the definition of a reward, so one set for every role.

The coordinator (intake), the verifier (reward check) and `swarmrl audit reverify` must compute
the same reward for the same text; a scorer that takes longer than `item_timeout_s` scores 0,
so the limits are a protocol rule (`DEFAULT_LIMITS`), not a per-role setting. Tests pass
tighter ones to `protocol.sandbox.Sandbox`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    item_timeout_s: float = 3.0      # wall clock for one completion; then the child is killed, reward 0
    batch_timeout_s: float = 20.0    # wall clock for one batch; items not scored by then get 0
    cpu_s: int = 60                  # RLIMIT_CPU of a child over its life (it retires at half of it)
    memory_mb: int = 512             # RLIMIT_AS of a child: its preloaded address space plus this
    nofile: int = 32                 # RLIMIT_NOFILE: open descriptors a child may hold
    result_bytes: int = 4096         # the largest frame the host reads from a child for one item
    reason_chars: int = 160          # a reason is cut to this length
    spares: int = 2                  # pre-forked, confined children kept waiting for work
    max_children: int = 8            # batches scored at once; more callers wait for a slot
    max_requests: int = 1000         # a child that runs only pure scorers retires after this many batches
    ready_timeout_s: float = 15.0    # how long a new child may take to confine itself and say so
    unprivileged_user: str = "nobody"  # when the host runs as root, children run as this user


DEFAULT_LIMITS = Limits()
