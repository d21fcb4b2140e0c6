"""Experiment tracking: TensorBoard event files by default (read back here record by record),
a missing backend or a failing one never stops the role, and the coordinator's and the
trainer's scalars."""

from __future__ import annotations

import logging
import struct

import pytest

from protocol.tracking import NullTracker, TrackingConfig, _Guarded, open_tracker


def read_scalars(folder):
    """(tag, step, value) of every scalar in the TFRecord event files under `folder`."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for f in sorted(folder.rglob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            out += [(v.tag, ev.step, v.simple_value) for v in ev.summary.value]
    return out


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    t = open_tracker(TrackingConfig(), default_dir=tmp_path / "tracking", run_id="r", role="trainer")
    t.log({"train/loss": 0.5, "train/reward": 0.25, "eval/sampled_accuracy": None}, step=1)
    t.log({"train/loss": 0.25}, step=2)
    t.close()
    got = read_scalars(tmp_path / "tracking" / "trainer")
    assert sorted(got) == [("train/loss", 1, 0.5), ("train/loss", 2, 0.25), ("train/reward", 1, 0.25)]


def test_a_missing_backend_warns_and_the_run_goes_on(tmp_path, caplog, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with caplog.at_level(logging.WARNING, "swarmrl.tracking"):
        t = open_tracker(TrackingConfig(backend="wandb"), default_dir=tmp_path, run_id="r", role="trainer")
    assert isinstance(t, NullTracker) and "swarmrl[wandb]" in caplog.text
    assert isinstance(open_tracker(TrackingConfig(backend="none"), default_dir=tmp_path, run_id="r", role="x"),
                      NullTracker)


def test_a_failing_backend_is_logged_once_and_never_raises(caplog):
    calls = []

    def broken(metrics, step):
        calls.append(step)
        raise OSError("disk full")

    t = _Guarded("test", broken, lambda: None)
    with caplog.at_level(logging.WARNING, "swarmrl.tracking"):
        t.log({"a": 1.0}, 1)
        t.log({"a": 2.0}, 2)
    assert calls == [1, 2] and caplog.text.count("disk full") == 1


def test_coordinator_snapshot_flattens_counters_and_the_versions_reward():
    from coordinator.metrics import Metrics, tracking_snapshot

    m = Metrics()
    m.rejections.labels("bad_signature").inc(3)
    m.verdicts.labels("accepted").inc(2)
    m.bans.inc()
    m.attach_state(lambda: {"current_version": 4, "buffer_depth": 7, "workers": {"active": 2}})
    out, step = tracking_snapshot(m.registry, {4: 0.75, 3: 0.5})
    assert step == 4
    assert out["coordinator/rejections/bad_signature"] == 3 and out["coordinator/verdicts/accepted"] == 2
    assert out["coordinator/bans"] == 1 and out["coordinator/buffer_depth"] == 7
    assert out["coordinator/workers/active"] == 2 and out["coordinator/accepted_reward"] == 0.75
    assert not any(k.endswith("_created") for k in out)


def test_trainer_step_scalars():
    from trainer.loop import step_scalars
    from trainer.step import StepResult

    r = StepResult(version=3, groups=2, sequences=4, tokens=100, padded_tokens=128, real_tokens=96, micro_batches=1,
                   grad_norm=0.5, stale_tokens=10, missing_behaviour_tokens=0, seconds=2.0,
                   stats={"loss": 0.1, "kl": 0.01, "clip_fraction": 0.2, "entropy": 1.5})
    s = step_scalars(r, [1.0, 0.0, 1.0, 1.0], lr=1e-4, groups=2)
    assert s["train/tokens_per_s"] == 50 and s["train/reward"] == 0.75 and s["train/kl"] == 0.01
    assert s["train/clip_fraction"] == 0.2 and s["train/lr"] == 1e-4 and s["train/padding_fraction"] == 0.25


def test_wandb_offline_mode_needs_no_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: any network use would fail
    t = open_tracker(TrackingConfig(backend="wandb"), default_dir=tmp_path, run_id="r", role="trainer",
                     config={"lr": 1e-4})
    assert not isinstance(t, NullTracker)
    t.log({"train/loss": 0.5}, step=1)
    t.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(b"train/loss" in f.read_bytes() for f in runs[0].glob("*.wandb"))


def test_mlflow_writes_a_local_store_without_a_server(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    t = open_tracker(TrackingConfig(backend="mlflow"), default_dir=tmp_path, run_id="r", role="coordinator")
    assert not isinstance(t, NullTracker)
    t.log({"coordinator/verdicts/accepted": 3.0}, step=2)
    t.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}")
    [run] = client.search_runs([client.get_experiment_by_name("swarmrl").experiment_id])
    [m] = client.get_metric_history(run.info.run_id, "coordinator.verdicts.accepted")
    assert (m.step, m.value) == (2, 3.0) and run.info.run_name == "r-coordinator"
