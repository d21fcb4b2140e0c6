"""The submission spool: durable until acknowledged, each entry moved exactly once."""

import json

from protocol.messages import Completion, EngineInfo, Submission
from worker.spool import Spool


def _sub(lease_id: str, n: int = 2) -> Submission:
    return Submission(lease_id=lease_id, policy_version=3,
                      completions=[Completion(token_ids=[1, 2, i], finish_reason="length", proof="AAAA") for i in range(n)],
                      engine=EngineInfo(name="transformers"))


def test_put_survives_a_new_spool_object_on_the_same_folder(tmp_path):
    Spool(tmp_path).put(_sub("lease-1"), tokens=6, expires_at=123.0)
    again = Spool(tmp_path).pending()
    assert [e.lease_id for e in again] == ["lease-1"]
    assert again[0].submission == _sub("lease-1")
    assert again[0].tokens == 6 and again[0].expires_at == 123.0


def test_acknowledge_moves_to_awaiting_with_the_submission_id_then_settle_forgets(tmp_path):
    s = Spool(tmp_path)
    e = s.put(_sub("lease-1"), 6, 0.0)
    s.acknowledge(e, "sub-9")
    assert s.pending() == []
    [a] = s.awaiting()
    assert a.submission_id == "sub-9" and a.lease_id == "lease-1"
    s.settle(a)
    assert s.awaiting() == [] and s.pending() == []


def test_set_aside_keeps_the_reason_and_is_never_pending_again(tmp_path):
    s = Spool(tmp_path)
    e = s.put(_sub("lease-2"), 6, 0.0)
    s.set_aside(e, "HTTP 410: lease expired")
    assert s.pending() == [] and s.rejected() == ["lease-2"]
    doc = json.loads((tmp_path / "rejected" / "lease-2.json").read_text())
    assert doc["reason"] == "HTTP 410: lease expired"


def test_pending_is_oldest_first_and_leftover_temp_files_are_removed(tmp_path):
    s = Spool(tmp_path)
    for i in range(3):
        s.put(_sub(f"lease-{i}"), 1, 0.0)
    (tmp_path / "pending" / ".lease-9.json.tmp").write_text("{half")
    s2 = Spool(tmp_path)
    assert [e.lease_id for e in s2.pending()] == ["lease-0", "lease-1", "lease-2"]
    assert not (tmp_path / "pending" / ".lease-9.json.tmp").exists()


def test_a_damaged_file_is_moved_aside_not_resent(tmp_path):
    s = Spool(tmp_path)
    s.put(_sub("good"), 1, 0.0)
    (tmp_path / "pending" / "bad.json").write_text("not json")
    assert [e.lease_id for e in s.pending()] == ["good"]
    assert (tmp_path / "pending" / "bad.json.corrupt").exists()


def test_unsafe_lease_ids_cannot_escape_the_folder(tmp_path):
    import pytest

    s = Spool(tmp_path)
    with pytest.raises(ValueError):
        s._path("pending", "../x")
