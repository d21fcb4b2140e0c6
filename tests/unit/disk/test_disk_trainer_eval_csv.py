"""The trainer's eval.csv (appended after each evaluation, read at every start to skip versions
already evaluated) after a crash mid-append or outside damage: the start never fails on it, a
file it cannot read is set aside with a log line, and a torn last row does not swallow the next."""

import logging

from trainer.evaluate import EvalResult, append_csv, evaluated_versions


def _res(v: int) -> EvalResult:
    return EvalResult(version=v, step=v, wall_s=1.0, unix_time=2.0, greedy_accuracy=0.5, sampled_accuracy=None,
                      num_tasks=4, seconds=0.1)


def test_garbage_is_set_aside_and_the_start_goes_on(tmp_path, caplog):
    p = tmp_path / "eval.csv"
    p.write_bytes(bytes(range(128, 256)) * 8)
    with caplog.at_level(logging.ERROR, logger="trainer.evaluate"):
        assert evaluated_versions(p) == set()
    assert not p.exists() and (tmp_path / "eval.csv.corrupt").exists()
    assert any("eval.csv" in r.getMessage() for r in caplog.records)


def test_a_folder_in_its_place_is_set_aside(tmp_path):
    p = tmp_path / "eval.csv"
    p.mkdir()
    assert evaluated_versions(p) == set()
    assert (tmp_path / "eval.csv.corrupt").is_dir()


def test_rows_that_do_not_parse_are_skipped(tmp_path):
    p = tmp_path / "eval.csv"
    append_csv(p, _res(1))
    with open(p, "a") as fh:
        fh.write("abc,1,2\n,,\n")
    append_csv(p, _res(3))
    assert evaluated_versions(p) == {1, 3}


def test_a_torn_last_row_does_not_swallow_the_next(tmp_path):
    p = tmp_path / "eval.csv"
    append_csv(p, _res(1))
    append_csv(p, _res(2))
    data = p.read_bytes()
    p.write_bytes(data[:-9])          # a crash mid-append of version 2's row
    append_csv(p, _res(7))
    assert 7 in evaluated_versions(p)
    assert p.read_text().splitlines()[-1].startswith("7,")
