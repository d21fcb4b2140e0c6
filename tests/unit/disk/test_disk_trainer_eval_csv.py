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


def test_a_full_disk_while_logging_an_evaluation_does_not_stop_the_trainer(tmp_path, monkeypatch, caplog):
    """eval.csv is a local log: a failed append is logged and the evaluation is still reported
    (it ended the trainer with a bare OSError)."""
    import contextlib
    import errno
    from types import SimpleNamespace
    from unittest import mock

    import trainer.loop as loop_mod

    def full(path, res):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(loop_mod, "evaluate", lambda *a, **k: _res(4))
    monkeypatch.setattr(loop_mod, "append_csv", full)
    cfg = SimpleNamespace(eval=SimpleNamespace(every_versions=1, num_tasks=4, sampled=False, temperature=1.0),
                          data_dir=tmp_path, max_eval_tokens=8, tasks=SimpleNamespace(chat_template=False))
    me = SimpleNamespace(cfg=cfg, source=object(), version=4, step=4, evaluated=set(), tokenizer=None,
                         eval_model_fn=lambda: None, clock=SimpleNamespace(phase=lambda _: contextlib.nullcontext(),
                                                                         elapsed=lambda: 1.0),
                         link=mock.Mock(), metrics=mock.MagicMock(), tracker=mock.Mock(), board=mock.Mock())
    with caplog.at_level(logging.ERROR):
        loop_mod.TrainerLoop.maybe_evaluate(me)
    assert me.link.report_eval.called
    assert any("eval.csv" in r.getMessage() for r in caplog.records)
