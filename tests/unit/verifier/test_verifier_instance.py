"""`verifier.instance.resolve`: the id a verifier process names in its claims and resumes is
stable across its restarts (same host, same data folder) and differs between replicas that
share a key: on other hosts or containers (even over one shared data folder) or with their own
data folders on one host; a configured id wins. Every id is a valid `ClaimRequest.instance`."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from protocol.messages import ClaimRequest
from verifier import instance
from verifier.config import VerifierConfig


def _valid(i: str) -> str:
    return ClaimRequest(max_jobs=1, instance=i).instance


def test_the_id_survives_a_restart_and_tells_replicas_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(instance.socket, "gethostname", lambda: "verifier-7f9c")
    first = _valid(instance.resolve("", tmp_path / "a"))
    assert instance.resolve("", tmp_path / "a") == first   # the same process started again
    assert first.startswith("verifier-7f9c.")
    assert instance.resolve("", tmp_path / "b") != first   # another process on this host, its own folder
    monkeypatch.setattr(instance.socket, "gethostname", lambda: "verifier-0b12")
    assert instance.resolve("", tmp_path / "a") != first   # another container over the same volume
    assert instance.resolve("replica-3", tmp_path / "a") == "replica-3"


def test_a_hostname_outside_the_id_alphabet_still_gives_a_valid_id(tmp_path, monkeypatch):
    monkeypatch.setattr(instance.socket, "gethostname", lambda: "host name/é" + "x" * 300)
    assert len(_valid(instance.resolve("", tmp_path))) <= 128


def test_processes_starting_at_once_over_one_folder_read_one_token(tmp_path):
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(instance._token(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got[0]) == instance.TOKEN_CHARS
    assert sorted(p.name for p in tmp_path.iterdir()) == [instance.FILE_NAME]   # no temporary file left


def test_the_configured_id_is_checked_like_the_wire_field():
    assert VerifierConfig(instance_id="pod-1.a:b_c").instance_id == "pod-1.a:b_c"
    for bad in ("a b", "a/b", "x" * 129):
        with pytest.raises(ValidationError):
            VerifierConfig(instance_id=bad)
