"""The trainer's inbox after a crash or a hostile disk: a damaged file is set aside (renamed, with
a log line) and the good groups are still loaded; nothing stops the trainer from starting."""

import logging
import os

import pytest

from protocol.messages import TrainingGroup
from trainer import checkpoint as ckpt
from trainer.checkpoint import Inbox


def _group(sid: str) -> TrainingGroup:
    return TrainingGroup(submission_id=sid, task_id="t", worker_id="w", policy_version=0, prompt_token_ids=[1],
                         completions=[[2, 3]], finish_reasons=["stop"], rewards=[1.0], advantages=[0.5],
                         temperature=1.0)


def _damage(path, how):
    if how == "directory":
        path.mkdir()
    elif how == "truncated":
        path.write_bytes(_group("x").model_dump_json().encode()[:20])
    elif how == "random_bytes":
        path.write_bytes(os.urandom(512))
    elif how == "wrong_shape":
        path.write_text('[1, 2, 3]')
    elif how == "huge":
        with open(path, "wb") as fh:   # sparse: costs no disk
            fh.truncate(ckpt.MAX_INBOX_FILE_BYTES + 1)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["directory", "truncated", "random_bytes", "wrong_shape", "huge"])
def test_a_damaged_inbox_file_is_set_aside_with_a_log_line(tmp_path, caplog, how):
    inbox = Inbox(tmp_path)
    inbox.put([_group("a"), _group("b")])
    bad = inbox.root / ("0" * 32 + ".json")
    _damage(bad, how)
    with caplog.at_level(logging.ERROR, logger="trainer.checkpoint"):
        loaded = inbox.load(TrainingGroup)
    assert sorted(g.submission_id for g in loaded) == ["a", "b"]
    assert not bad.exists()
    assert [p.name for p in inbox.root.iterdir() if "corrupt" in p.name], "deleted instead of set aside"
    assert any(bad.name in r.getMessage() for r in caplog.records), "set aside without a word"
    assert sorted(g.submission_id for g in Inbox(tmp_path).load(TrainingGroup)) == ["a", "b"]


def test_a_second_damaged_file_of_the_same_name_keeps_the_first(tmp_path):
    inbox = Inbox(tmp_path)
    bad = inbox.root / ("0" * 32 + ".json")
    bad.write_text("first")
    inbox.load(TrainingGroup)
    bad.write_text("second")
    inbox.load(TrainingGroup)
    kept = sorted(p.read_text() for p in inbox.root.iterdir() if "corrupt" in p.name)
    assert kept == ["first", "second"]


def test_a_full_disk_while_spooling_groups_is_a_clear_error_and_keeps_what_was_written(tmp_path, monkeypatch):
    """Inbox.put runs before the trainer acknowledges the groups: failing, it is a CheckpointError
    (printed as one line), the groups written before stay whole, and the coordinator, never told,
    hands the rest out again."""
    import errno

    from trainer.errors import CheckpointError

    real = ckpt.write_atomic
    calls = []

    def write_atomic(path, data, **kw):
        calls.append(path)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(ckpt, "write_atomic", write_atomic)
    inbox = Inbox(tmp_path)
    with pytest.raises(CheckpointError, match="No space left"):
        inbox.put([_group("a"), _group("b")])
    assert [g.submission_id for g in inbox.load(TrainingGroup)] == ["a"]
    assert [p.name for p in inbox.root.iterdir()] == [calls[0].name]


def test_temporaries_left_by_a_killed_write_are_removed_at_start(tmp_path):
    """write_atomic removes its temporary on an error, but not when the process is killed: each
    such crash left one in inbox/ for good (hidden from load, still holding its bytes)."""
    inbox = Inbox(tmp_path)
    inbox.put([_group("a")])
    (inbox.root / ".0123.json.999.tmp").write_bytes(b"x" * 4096)
    (inbox.root / ".4567.json.999.tmp").mkdir()
    again = Inbox(tmp_path)
    # the file is removed; a folder by that name is no temporary of ours and is left alone
    assert sorted(p.name for p in again.root.iterdir() if p.name.startswith(".")) == [".4567.json.999.tmp"]
    assert [g.submission_id for g in again.load(TrainingGroup)] == ["a"]
