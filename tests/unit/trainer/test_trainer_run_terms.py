"""The trainer joins the coordinator's run: the run id, the async window and the task source are
the coordinator's settings (GET /v1/run), taken at start; a trainer config that says otherwise
stops the trainer before anything heavy starts. And the trainer's calls to the coordinator follow
the one retry rule (`protocol.retry`): a 429 is waited out, not a failure."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi import FastAPI, Response

from protocol.errors import Stopped
from protocol.http import ServerThread
from protocol.identity import KeyPair
from protocol.messages import RunInfo, TaskSpec
from tests.unit.coordinator.coord_harness import start_swarm
from trainer.client import CoordinatorLink
from trainer.config import TrainerConfig, from_run
from trainer.errors import TrainerError
from trainer.main import StopFlag
from trainer.setup import build_trainer, join_run

KEY = "0" * 64


def _info(**kw) -> RunInfo:
    fields = dict(run_id="run-a", coordinator_key=KEY, operator_key=KEY, verifier_keys=[], relays=[],
                  current_policy_version=None, async_window=2, tasks=TaskSpec(kind="arithmetic", seed=7))
    return RunInfo(**(fields | kw))


def test_the_runs_terms_fill_the_config_and_a_config_that_names_them_must_agree():
    cfg = from_run(TrainerConfig(model="m"), _info(), "here")
    assert (cfg.run_id, cfg.async_window, cfg.tasks) == ("run-a", 2, TaskSpec(kind="arithmetic", seed=7, options={}))
    same = TrainerConfig(model="m", run_id="run-a", async_window=2, tasks_kind="arithmetic", tasks_seed=7)
    assert from_run(same, _info(), "here").async_window == 2
    with pytest.raises(TrainerError, match=r"run_id = 'run-b' \(the coordinator's: 'run-a'\); async_window = 1 "
                                           r"\(the coordinator's: 2\); tasks_seed = 0"):
        from_run(TrainerConfig(model="m", run_id="run-b", async_window=1, tasks_seed=0), _info(), "here")
    with pytest.raises(TrainerError, match="does not say which task source"):
        from_run(TrainerConfig(model="m"), _info(tasks=None), "here")
    own = from_run(TrainerConfig(model="m", tasks_kind="arithmetic", tasks_seed=3), _info(tasks=None), "here")
    assert own.tasks.seed == 3


def test_a_trainer_takes_the_coordinators_terms_and_refuses_to_start_against_another_window(tmp_path,
                                                                                           tiny_model_dir):
    s = start_swarm(tmp_path / "coord", tiny_model_dir, async_window=3, tasks={"kind": "arithmetic", "seed": 5})
    try:
        s.operator.save(tmp_path / "operator.key")
        cfg = TrainerConfig(model=str(tiny_model_dir), key_file=tmp_path / "operator.key", data_dir=tmp_path / "t",
                            coordinator_url=s.server.url)
        joined, _, link = join_run(cfg, StopFlag())
        link.close()
        assert (joined.run_id, joined.async_window) == (s.cfg.run_id, 3)
        assert joined.tasks == TaskSpec(kind="arithmetic", seed=5, options={})
        with pytest.raises(TrainerError, match=r"async_window = 2 \(the coordinator's: 3\)"):
            build_trainer(cfg.model_copy(update={"async_window": 2}), team=None, stop=StopFlag())
        assert not (tmp_path / "t").exists()  # refused before anything was written
    finally:
        s.close()


def _busy_coordinator(answers: list[Response]) -> tuple[ServerThread, list[float]]:
    """POST /v1/trainer/batch answers `answers` in turn (then an empty batch); returns the call times."""
    app, calls = FastAPI(), []

    @app.post("/v1/trainer/batch")
    def batch():
        calls.append(time.monotonic())
        if len(calls) <= len(answers):
            return answers[len(calls) - 1]
        return {"groups": [], "dropped_stale": 0}

    return ServerThread(app).start(), calls


def test_a_trainer_told_429_waits_the_retry_after_instead_of_failing():
    busy = Response('{"detail": "busy"}', status_code=429, headers={"retry-after": "0.3"},
                    media_type="application/json")
    server, calls = _busy_coordinator([busy])
    link = CoordinatorLink(server.url, KeyPair.generate(), run_id="run-a")
    try:
        assert link.take_batch(4, 0, 0.0).groups == []
        assert len(calls) == 2 and calls[1] - calls[0] >= 0.3
    finally:
        link.close()
        server.stop()


def test_a_stop_ends_the_trainers_wait_for_a_busy_coordinator():
    busy = Response('{"detail": "busy"}', status_code=429, headers={"retry-after": "30"},
                    media_type="application/json")
    server, calls = _busy_coordinator([busy])
    stop = threading.Event()
    link = CoordinatorLink(server.url, KeyPair.generate(), stop=stop, run_id="run-a")
    threading.Timer(0.2, stop.set).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(Stopped, match="taking a batch"):
            link.take_batch(4, 0, 0.0)
        assert time.monotonic() - t0 < 5 and len(calls) == 1
    finally:
        link.close()
        server.stop()
