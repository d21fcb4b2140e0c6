"""The committed worker config parses, and the CLI's `worker status` finds a running worker."""

from pathlib import Path

import pytest

from protocol.config import load_config
from protocol.errors import ProtocolError
from worker.config import WorkerConfig
from worker.main import fetch_status

ROOT = Path(__file__).resolve().parents[3]


def test_the_example_worker_config_parses():
    cfg = load_config(WorkerConfig, ROOT / "deploy" / "worker" / "worker.toml")
    assert cfg.engine == "auto" and cfg.max_tasks == 0


def test_worker_status_without_a_running_worker_is_one_clear_error(tmp_path):
    with pytest.raises(ProtocolError, match="is a worker running"):
        fetch_status(WorkerConfig(data_dir=tmp_path))
