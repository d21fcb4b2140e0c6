"""The trainer's own small HTTP surface and its accounting: /health, /metrics, /v1/trainer/status.

`PhaseClock` splits the trainer's wall time into phases (waiting for data vs training,
saving, publishing, evaluating): the idle fraction that `bench/learning.py` reports is
waiting / total. `TrainerMetrics` holds the Prometheus collectors in the service's own
registry (no global state), and `make_app` is a thin FastAPI adapter that reads a
`StatusBoard` the training loop updates. The app runs in a background thread of the
trainer (`protocol.http.ServerThread`), so a slow scrape never blocks a step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PHASES = ("waiting", "training", "saving", "publishing", "evaluating")


class PhaseClock:
    """Seconds spent per phase; `clock` is injectable (monotonic by default)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started = clock()
        self.seconds = {p: 0.0 for p in PHASES}
        self._lock = threading.Lock()
        self.on_add: Callable[[str, float], None] | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - t0)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self.on_add is not None:
            self.on_add(name, seconds)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def idle_fraction(self) -> float:
        """Share of the accounted time spent waiting for data."""
        with self._lock:
            total = sum(self.seconds.values())
            return self.seconds["waiting"] / total if total > 0 else 0.0


class TrainerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.steps = Counter("swarmrl_trainer_steps", "optimizer steps (one per policy version)", registry=r)
        self.version = Gauge("swarmrl_trainer_policy_version", "newest published policy version", registry=r)
        self.loss = Gauge("swarmrl_trainer_loss", "loss of the last step", registry=r)
        self.grad_norm = Gauge("swarmrl_trainer_grad_norm", "gradient norm before clipping, last step", registry=r)
        self.clip_fraction = Gauge("swarmrl_trainer_clip_fraction", "share of tokens clipped, last step", registry=r)
        self.importance = Gauge("swarmrl_trainer_importance_weight", "mean behaviour importance weight, last step", registry=r)
        self.groups = Counter("swarmrl_trainer_groups", "groups received, by outcome", ["outcome"], registry=r)
        self.tokens = Counter("swarmrl_trainer_tokens", "completion tokens trained on", registry=r)
        self.stale_tokens = Counter("swarmrl_trainer_stale_tokens", "tokens from older versions (importance-weighted)", registry=r)
        self.missing_behaviour = Counter("swarmrl_trainer_missing_behaviour_tokens",
                                         "stale tokens whose version's weights were gone (treated as on-policy)", registry=r)
        self.phase_seconds = Counter("swarmrl_trainer_phase_seconds", "wall seconds per phase", ["phase"], registry=r)
        self.idle = Gauge("swarmrl_trainer_idle_fraction", "share of time waiting for data", registry=r)
        self.accuracy = Gauge("swarmrl_trainer_eval_accuracy", "held-out accuracy of the last evaluation", ["kind"], registry=r)
        self.eval_version = Gauge("swarmrl_trainer_eval_version", "policy version of the last evaluation", registry=r)
        self.reward = Gauge("swarmrl_trainer_mean_reward", "mean reward of the groups of the last step", registry=r)


class StatusBoard:
    """What the loop publishes for the HTTP adapter (a dict behind a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {"state": "starting", "version": None, "step": 0, "evals": []}

    def update(self, **kw: Any) -> None:
        with self._lock:
            self._data.update(kw)

    def add_eval(self, row: dict) -> None:
        with self._lock:
            self._data["evals"] = (self._data["evals"] + [row])[-1000:]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._data)


STATUS_PATH = "/v1/trainer/status"


def make_app(board: StatusBoard, metrics: TrainerMetrics, clock: PhaseClock) -> Any:
    from fastapi import FastAPI, Response

    app = FastAPI(title="swarmrl trainer", description="GRPO trainer: health, metrics and status")

    @app.get("/health")
    def health() -> dict:
        snap = board.snapshot()
        return {"ok": snap.get("state") != "failed", "state": snap.get("state"), "version": snap.get("version")}

    @app.get("/metrics")
    def prom() -> Response:
        metrics.idle.set(clock.idle_fraction())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(STATUS_PATH)
    def status() -> dict:
        snap = board.snapshot()
        snap["phase_seconds"] = dict(clock.seconds)
        snap["idle_fraction"] = clock.idle_fraction()
        snap["uptime_s"] = clock.elapsed()
        return snap

    return app
