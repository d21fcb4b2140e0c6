"""A hostile local disk under the worker's spool: damaged entries, a full disk.

Every damaged entry is set aside (renamed, logged) and never stops the spool from listing the
good ones; a full disk is a clear error that leaves the entry pending, and the background
sender keeps running through it."""

import json
import logging

import pytest

from protocol.messages import Completion, EngineInfo, Submission
from worker import spool as spool_mod
from worker.spool import Spool


def _sub(lease_id: str) -> Submission:
    return Submission(lease_id=lease_id, policy_version=3,
                      completions=[Completion(token_ids=[1, 2, 3], finish_reason="length", proof="AAAA")],
                      engine=EngineInfo(name="transformers"))


def _good_doc(lease_id: str) -> dict:
    return spool_mod._to_doc(spool_mod.SpoolEntry(lease_id=lease_id, submission=_sub(lease_id), tokens=1,
                                                  created_at=1.0, expires_at=2.0))


def _damage(path, how):
    if how == "directory":
        path.mkdir()
    elif how == "infinite_tokens":   # valid JSON, a number no int holds
        doc = _good_doc(path.stem)
        path.write_text(json.dumps(doc).replace('"tokens": 1', '"tokens": 1e999'))
    elif how == "deep_nesting":      # json.loads raises RecursionError
        path.write_text("[" * 200_000 + "]" * 200_000)
    elif how == "wrong_shape":
        path.write_text(json.dumps(["lease_id", "submission"]))
    elif how == "truncated":
        path.write_text(json.dumps(_good_doc(path.stem))[:37])
    elif how == "random_bytes":
        path.write_bytes(bytes(range(256)) * 4)
    elif how == "huge":
        with open(path, "wb") as fh:   # sparse: costs no disk
            fh.truncate(spool_mod.MAX_ENTRY_BYTES + 1)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["directory", "infinite_tokens", "deep_nesting", "wrong_shape", "truncated",
                                 "random_bytes", "huge"])
@pytest.mark.parametrize("where", ["pending", "awaiting"])
def test_a_damaged_entry_is_set_aside_and_the_good_ones_still_list(tmp_path, caplog, how, where):
    s = Spool(tmp_path)
    s.put(_sub("good"), 1, 0.0)
    if where == "awaiting":
        s.acknowledge(s.pending()[0], "sub-1")
    bad = tmp_path / where / "bad.json"
    _damage(bad, how)
    with caplog.at_level(logging.ERROR, logger="worker.spool"):
        listed = s.pending() if where == "pending" else s.awaiting()
    assert [e.lease_id for e in listed] == ["good"]
    assert not bad.exists()
    assert (tmp_path / where / "bad.json.corrupt").exists()   # kept, not deleted
    assert any("bad.json" in r.getMessage() and "moved aside" in r.getMessage() for r in caplog.records)
    # and a restart lists the same, without tripping on it again
    again = Spool(tmp_path)
    assert [e.lease_id for e in (again.pending() if where == "pending" else again.awaiting())] == ["good"]
    assert s.count(where) == 1


def test_a_second_damaged_file_of_the_same_name_does_not_overwrite_the_first(tmp_path):
    s = Spool(tmp_path)
    (tmp_path / "pending" / "bad.json").write_text("first")
    s.pending()
    (tmp_path / "pending" / "bad.json").write_text("second")
    s.pending()
    kept = sorted(p.read_text() for p in (tmp_path / "pending").glob("bad.json.corrupt*"))
    assert kept == ["first", "second"]


def test_a_folder_in_place_of_a_leftover_temporary_does_not_stop_the_start(tmp_path, caplog):
    (tmp_path / "pending").mkdir(parents=True)
    (tmp_path / "pending" / ".lease-9.json.123.tmp").mkdir()
    (tmp_path / "pending" / ".lease-8.json.123.tmp").write_text("{half")
    s = Spool(tmp_path)
    assert s.pending() == []
    assert not (tmp_path / "pending" / ".lease-8.json.123.tmp").exists()
