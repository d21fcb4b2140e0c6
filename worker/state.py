"""What the daemon is doing, as one thread-safe record.

The main loop, the housekeeping thread and the policy downloader write here; the live
terminal view, the JSON logs, the local `/status` endpoint and its Prometheus `/metrics`
read `snapshot()`, a plain JSON-able dict whose keys are the contract of
`GET /status` (and of `swarmrl worker status`). Counters are this session's; `lifetime`
is the coordinator's record of this identity (`GET /v1/workers/{id}`).

`phase_seconds` is where the main loop's time went, by the phase's first word (generating,
leasing, syncing, loading, idle, ...): how a contributor (or bench/wan.py) sees that its
engine waits for leases or policy versions instead of generating.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

EMA_ALPHA = 0.3


@dataclass
class Download:
    version: int
    done_bytes: int = 0
    total_bytes: int = 0


@dataclass
class _Fields:
    peer_id: str = ""
    coordinator_url: str = ""
    run_id: str = ""
    engine: dict = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    phase: str = "starting"
    policy_version: int | None = None
    newest_version: int | None = None
    download: Download | None = None
    batch_sequences: int = 0
    tokens_generated: int = 0
    tokens_per_s: float = 0.0
    leases_active: int = 0
    submitted: int = 0
    accepted: int = 0
    rejected: int = 0
    dropped: int = 0
    credits_tokens: int = 0
    spool_pending: int = 0
    spool_awaiting: int = 0
    spool_rejected: int = 0
    coordinator_up: bool = True
    coordinator_error: str = ""
    last_error: str = ""
    lifetime: dict | None = None
    p2p: dict | None = None        # the libp2p node (worker.p2p.SwarmWatch); None: HTTP only
    phase_seconds: dict = field(default_factory=dict)  # seconds spent per phase (its first word)


class WorkerState:
    """One record, many threads: every read and write holds the lock."""

    def __init__(self, **initial: Any):
        self._lock = threading.Lock()
        self._f = _Fields(**initial)
        self._phase_since = time.monotonic()

    def set(self, **values: Any) -> None:
        with self._lock:
            if "phase" in values:
                self._close_phase()
            for k, v in values.items():
                if not hasattr(self._f, k):
                    raise AttributeError(k)
                setattr(self._f, k, v)

    def _close_phase(self) -> None:
        """Add the time since the last phase change to the current phase's total (lock held)."""
        now = time.monotonic()
        key = self._f.phase.split(" ", 1)[0]
        self._f.phase_seconds[key] = self._f.phase_seconds.get(key, 0.0) + now - self._phase_since
        self._phase_since = now

    def add(self, **deltas: int) -> None:
        with self._lock:
            for k, d in deltas.items():
                setattr(self._f, k, getattr(self._f, k) + d)

    def record_batch(self, tokens: int, seconds: float) -> None:
        """Fold one generation batch into the token rate (exponential moving average)."""
        with self._lock:
            self._f.tokens_generated += tokens
            rate = tokens / seconds if seconds > 0 else 0.0
            prev = self._f.tokens_per_s
            self._f.tokens_per_s = rate if prev == 0 else (1 - EMA_ALPHA) * prev + EMA_ALPHA * rate

    def progress(self, version: int, done_bytes: int, total_bytes: int) -> None:
        with self._lock:
            self._f.download = Download(version, done_bytes, total_bytes)

    def get(self, name: str) -> Any:
        with self._lock:
            return getattr(self._f, name)

    def snapshot(self) -> dict:
        with self._lock:
            self._close_phase()
            d = asdict(self._f)
        d["phase_seconds"] = {k: round(v, 2) for k, v in d["phase_seconds"].items()}
        d["uptime_s"] = round(time.time() - d["started_at"], 1)
        d["tokens_per_s"] = round(d["tokens_per_s"], 1)
        return d
