"""Idle-time accounting and the trainer's HTTP surface (in-process app, real HTTP on loopback)."""

from __future__ import annotations

import httpx

from trainer.status import PhaseClock, StatusBoard, TrainerMetrics, make_app
from protocol.http import ServerThread


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_idle_fraction_is_waiting_over_accounted_time():
    clock = FakeClock()
    pc = PhaseClock(clock)
    with pc.phase("waiting"):
        clock.t += 3.0
    with pc.phase("training"):
        clock.t += 1.0
    with pc.phase("saving"):
        clock.t += 1.0
    assert pc.seconds["waiting"] == 3.0 and pc.seconds["training"] == 1.0
    assert pc.idle_fraction() == 0.6
    assert PhaseClock(clock).idle_fraction() == 0.0  # nothing accounted yet


def test_health_metrics_and_status_routes():
    board, metrics, clock = StatusBoard(), TrainerMetrics(), PhaseClock()
    clock.on_add = lambda phase, s: metrics.phase_seconds.labels(phase).inc(s)
    clock.add("waiting", 2.0)
    clock.add("training", 2.0)
    metrics.steps.inc(3)
    board.update(state="training", version=3, step=3)
    board.add_eval({"version": 0, "greedy_accuracy": 0.25})
    server = ServerThread(make_app(board, metrics, clock)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            assert http.get("/health").json() == {"ok": True, "state": "training", "version": 3}
            text = http.get("/metrics").text
            assert "swarmrl_trainer_steps_total 3.0" in text
            assert 'swarmrl_trainer_phase_seconds_total{phase="waiting"} 2.0' in text
            assert "swarmrl_trainer_idle_fraction 0.5" in text
            status = http.get("/v1/trainer/status").json()
            assert status["version"] == 3 and status["idle_fraction"] == 0.5
            assert status["evals"] == [{"version": 0, "greedy_accuracy": 0.25}]
            board.update(state="failed")
            assert http.get("/health").json()["ok"] is False
    finally:
        server.stop()
