"""Experiment tracking: a run's scalar metrics to TensorBoard event files (the default), or to
Weights & Biases or MLflow when configured.

Collaborators: the trainer logs each step (loss, KL, clip and importance-cap fractions,
entropy, gradient norm, learning rate, reward, tokens/s) and each held-out evaluation
(accuracy by version); the coordinator logs its counters and state (verdicts, rejections by
reason, bans, buffer depth, accepted reward by version) every `every_s` seconds. Both call
`open_tracker(cfg, ...)` once and `Tracker.log(metrics, step)`; the step is the policy
version (the trainer's optimizer step count for step metrics), so curves of both roles line up.

Backends are optional extras (`pip install 'swarmrl[tracking]'` for TensorBoard event files
through tensorboardX, which needs no TensorFlow; `[wandb]`, `[mlflow]`). None of them needs a
network by default: W&B runs with `mode="offline"` (sync later with `wandb sync`), MLflow
writes a local SQLite store (tracking folder/mlflow.db) unless `mlflow_uri` names a server. A
backend whose package is missing is a warning at start and the run goes on untracked; a
backend that cannot start, or fails while logging, is a warning (once), never a crash of the role.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("swarmrl.tracking")


class TrackingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["tensorboard", "wandb", "mlflow", "none"] = Field(
        "tensorboard", description="where metrics go: TensorBoard event files (default), Weights & Biases, MLflow, "
        "or none")
    dir: str = Field("", description="folder of event files / offline runs / the MLflow store "
                     "(empty: <the role's data_dir>/tracking)")
    project: str = Field("swarmrl", description="W&B project / MLflow experiment name")
    run_name: str = Field("", description="name of this run in the tracker (empty: <run_id>-<role>)")
    online: bool = Field(False, description="W&B: sync to the server while running (False: offline mode, no "
                         "network; `wandb sync` the folder later)")
    mlflow_uri: str = Field("", description="MLflow tracking URI (empty: a local SQLite store, dir/mlflow.db)")
    every_s: float = Field(30.0, gt=0, description="coordinator: seconds between two snapshots of its metrics")


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class _Guarded:
    """A backend whose errors are logged once instead of stopping the role that tracks."""

    def __init__(self, name: str, log_fn: Any, close_fn: Any):
        self.name, self._log, self._close, self._failed = name, log_fn, close_fn, False

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        try:
            self._log(clean, int(step))
        except Exception as exc:  # noqa: BLE001 - any backend error; the role must go on training
            if not self._failed:
                log.warning("tracking to %s failed (%s: %s); further errors are not logged",
                            self.name, type(exc).__name__, exc)
            self._failed = True

    def close(self) -> None:
        try:
            self._close()
        except Exception as exc:  # noqa: BLE001 - see log()
            log.warning("closing the %s tracker failed: %s", self.name, exc)


def _tensorboard(folder: Path) -> _Guarded:
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(logdir=str(folder), flush_secs=10, filename_suffix=f".{os.getpid()}")  # one file per process

    def write(metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            writer.add_scalar(k, v, step)
        writer.flush()

    return _Guarded("tensorboard", write, writer.close)


def _wandb(cfg: TrackingConfig, folder: Path, name: str, config: dict) -> _Guarded:
    import wandb

    run = wandb.init(project=cfg.project, name=name, dir=str(folder), config=config,
                     mode="online" if cfg.online else "offline", reinit="create_new")
    def close() -> None:
        run.finish()
        wandb.teardown()  # waits for W&B's writer process: the offline run is complete on disk after close()

    return _Guarded("wandb", lambda m, s: run.log(m, step=s), close)


def _mlflow(cfg: TrackingConfig, folder: Path, name: str, config: dict) -> _Guarded:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.mlflow_uri or f"sqlite:///{(folder / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(cfg.project)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(cfg.project)
    run_id = client.create_run(exp_id, run_name=name).info.run_id
    for k, v in config.items():
        client.log_param(run_id, k, v)

    def write(metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            client.log_metric(run_id, k.replace("/", "."), v, step=step)

    return _Guarded("mlflow", write, lambda: client.set_terminated(run_id))


EXTRA = {"tensorboard": "tracking", "wandb": "wandb", "mlflow": "mlflow"}


def open_tracker(cfg: TrackingConfig, *, default_dir: Path, run_id: str, role: str,
                 config: dict | None = None) -> Tracker:
    """The configured tracker of one role's process (`NullTracker` for backend "none", or
    when the backend's package is not installed: then a warning says which extra to install)."""
    if cfg.backend == "none":
        return NullTracker()
    folder = Path(cfg.dir or default_dir) / role if cfg.backend == "tensorboard" else Path(cfg.dir or default_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = cfg.run_name or f"{run_id}-{role}"
    try:
        if cfg.backend == "tensorboard":
            return _tensorboard(folder)
        if cfg.backend == "wandb":
            return _wandb(cfg, folder, name, config or {})
        return _mlflow(cfg, folder, name, config or {})
    except ImportError:
        log.warning("tracking backend %s is not installed: metrics are not tracked (pip install 'swarmrl[%s]', "
                    "or set tracking.backend = \"none\")", cfg.backend, EXTRA[cfg.backend])
        return NullTracker()
    except Exception as exc:  # noqa: BLE001 - a tracker that cannot start must not stop the role
        log.warning("tracking backend %s could not start (%s: %s): metrics are not tracked; check the tracking "
                    "settings", cfg.backend, type(exc).__name__, exc)
        return NullTracker()
