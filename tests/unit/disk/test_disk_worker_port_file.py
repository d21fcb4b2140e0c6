"""`swarmrl worker status` reads data_dir/status.port: damaged (a folder, garbage, a port out of
range, huge), it is the one-line "no worker status" error, not a traceback."""

import pytest

from protocol.errors import ProtocolError
from worker.config import WorkerConfig
from worker.main import fetch_status
from worker.status_server import PORT_FILE


@pytest.mark.parametrize("how", ["directory", "garbage", "out_of_range", "huge", "negative"])
def test_a_damaged_port_file_is_a_clear_error(tmp_path, how):
    cfg = WorkerConfig(coordinator_url="http://127.0.0.1:9", key_file=tmp_path / "k", data_dir=tmp_path / "w")
    p = tmp_path / "w" / PORT_FILE
    p.parent.mkdir(parents=True)
    if how == "directory":
        p.mkdir()
    elif how == "garbage":
        p.write_bytes(bytes(range(128, 256)))
    elif how == "out_of_range":
        p.write_text("99999\n")
    elif how == "negative":
        p.write_text("-1\n")
    else:
        with open(p, "wb") as fh:
            fh.write(b"1" * 10_000_000)
    with pytest.raises(ProtocolError, match="no worker status"):
        fetch_status(cfg, timeout_s=0.5)
