"""The verifier's replay ledger (seen.sqlite) on a hostile disk.

Damaged (garbage, truncated, a folder): the service does not start, with a SetupError naming the
file and what moving it aside costs (the CLI prints it as one line), instead of a bare sqlite
traceback at every start; the file is left as it is (forgetting it would let replays through).
Full: recording fails with a sqlite error (the pipeline turns it into JobError: the job returns
to the queue), what was recorded before stays, and recording works again once space returns."""

import os
import sqlite3

import pytest

from verifier.errors import SetupError
from verifier.seen import SeenLedger


def _ledger(path, n=2000):
    led = SeenLedger(path)
    for i in range(n):
        led.remember(f"s{i}", [("lease", f"d{i}", ""), ("sample", f"x{i}", "")])
    led.close()


@pytest.mark.parametrize("how", ["garbage", "truncated", "directory"])
def test_a_damaged_ledger_is_a_clear_setup_error_and_is_left_alone(tmp_path, how):
    p = tmp_path / "seen.sqlite"
    _ledger(p)
    if how == "garbage":
        p.write_bytes(bytes(range(256)) * 16)
    elif how == "truncated":
        os.truncate(p, p.stat().st_size // 2)
    else:
        p.unlink()
        p.mkdir()
    before = p.read_bytes() if p.is_file() else None
    with pytest.raises(SetupError, match="seen.sqlite"):
        SeenLedger(p)
    assert (p.read_bytes() if p.is_file() else None) == before


def test_a_full_disk_fails_the_write_keeps_the_ledger_and_recovers(tiny_fs, fill_disk):
    with tiny_fs("256k") as d:
        led = SeenLedger(d / "seen.sqlite")
        led.remember("first", [("lease", "a", "")])
        fill_disk(d)
        with pytest.raises(sqlite3.Error):
            for i in range(200):
                led.remember(f"s{i}", [("sample", f"{i}-{j}" * 20, "v" * 200) for j in range(50)])
        assert led.conflicts("other", [("lease", "a", "")]) == [("lease", "a", "first")]
        (d / "filler").unlink()
        led.remember("later", [("lease", "b", "")])
        assert led.conflicts("other", [("lease", "b", "")]) == [("lease", "b", "later")]
        led.close()
        assert len(SeenLedger(d / "seen.sqlite")) >= 2


def test_a_ledger_emptied_to_zero_bytes_starts_empty_and_says_so(tmp_path, caplog):
    """SQLite opens a 0-byte file as a new database without a word, so a ledger truncated to
    nothing forgot every submission silently. A ledger the service made has its header from the
    start (WAL mode writes it at once), so an empty file is not one of ours: it still starts (an
    operator need not step in), with a warning that says what was lost."""
    p = tmp_path / "seen.sqlite"
    _ledger(p, n=10)
    for extra in ("-wal", "-shm"):
        (tmp_path / f"seen.sqlite{extra}").unlink(missing_ok=True)
    os.truncate(p, 0)
    with caplog.at_level("WARNING", logger="swarmrl.verifier"):
        led = SeenLedger(p)
    led.close()
    assert any("empty file" in r.getMessage() and "seen.sqlite" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="swarmrl.verifier"):
        SeenLedger(tmp_path / "new.sqlite").close()   # a new ledger: no warning
        SeenLedger(p).close()                         # the one started above has its header now
    assert not caplog.records
