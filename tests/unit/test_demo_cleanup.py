"""`swarmrl demo` stops every process it started however the run ends: an error after the RL
phase (here the final fetch through the relay raising) once left the coordinator, relay,
verifier and workers running after the demo had exited."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from swarmrl import demo


def test_an_error_after_the_rl_phase_still_stops_the_swarm(tmp_path, monkeypatch):
    started = []

    def fake_start(plan, group):  # one long-lived child in the demo's process group
        started.append(group.start("relay", ["--bind", "127.0.0.1", "0"], module="http.server"))

    def broken_fetch(plan, root):
        raise ImportError("cannot import name 'decimal'")

    plan = SimpleNamespace(logs=tmp_path / "logs", coordinator_url="http://127.0.0.1:1", relay_url="",
                           operator_token="t", p2p_bootstrap="", worker_names=[], cheater_names=[],
                           root=tmp_path)
    monkeypatch.setattr(demo, "_accuracy", lambda *a, **k: 0.25)
    monkeypatch.setattr("swarmrl.modelkit.build_demo_model",
                        lambda *a, **k: {"parameters": 1, "warm_start": {"steps": 0, "seconds": 0.0}})
    monkeypatch.setattr(demo, "plan_swarm", lambda *a, **k: plan)
    monkeypatch.setattr(demo, "start_swarm", fake_start)
    monkeypatch.setattr(demo, "_stats", lambda *a: None)
    monkeypatch.setattr(demo, "_relay_bytes_served", lambda plan: None)
    monkeypatch.setattr(demo, "_p2p_summary", lambda plan: "")
    monkeypatch.setattr(demo, "_fetch_latest", broken_fetch)
    with pytest.raises(ImportError):
        demo.run_demo(demo.DemoOptions(workdir=tmp_path, minutes=0.02))
    assert started and started[0].popen.poll() is not None, "the swarm's process outlived the demo"
