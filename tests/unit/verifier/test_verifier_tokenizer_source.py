"""Where the verifier's tokenizer comes from: the operator-signed checkpoint, else the
verifier's own config, never a path or hub id the coordinator names.

`RunInfo.tokenizer_ref` is the coordinator's `model` setting: a path on the coordinator's
machine or a hub id, served to anyone. The verifier fell back to loading it when a checkpoint
had no tokenizer, so a coordinator (a wrong URL, a compromised host) chose which tokenizer,
from any folder of the verifier's machine or any hub repository, decoded the completions the
verifier scores.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from swarmrl.modelkit import build_tokenizer
from verifier.errors import SetupError
from verifier.main import _first_tokenizer


class _Checkpoints:
    """A shardcast client whose version 0 is a folder without a tokenizer."""

    def __init__(self, folder: Path):
        self.folder = folder

    def fetch(self, version: int) -> Path:
        return self.folder

    def wait_for_version(self, after, timeout_s):
        return 0


@pytest.fixture
def folders(tmp_path):
    empty = tmp_path / "checkpoint"
    empty.mkdir()
    tok = tmp_path / "somewhere-on-this-machine"
    build_tokenizer().save_pretrained(tok)
    return empty, tok


def test_a_tokenizer_the_coordinator_names_is_not_loaded(folders):
    empty, tok = folders
    info = SimpleNamespace(current_policy_version=0, tokenizer_ref=str(tok))
    with pytest.raises(SetupError, match="tokenizer") as err:
        _first_tokenizer(_Checkpoints(empty), info, threading.Event())
    assert "verifier config" in str(err.value)


def test_the_verifiers_own_tokenizer_setting_is_used(folders):
    empty, tok = folders
    info = SimpleNamespace(current_policy_version=0, tokenizer_ref="/elsewhere/on/the/coordinator")
    tokenizer, version, path = _first_tokenizer(_Checkpoints(empty), info, threading.Event(), own_ref=str(tok))
    assert version == 0 and path == empty and len(tokenizer) == len(build_tokenizer())


def test_the_checkpoints_tokenizer_comes_first(folders):
    _, tok = folders
    info = SimpleNamespace(current_policy_version=0, tokenizer_ref="/elsewhere/on/the/coordinator")
    tokenizer, version, path = _first_tokenizer(_Checkpoints(tok), info, threading.Event())
    assert path == tok and len(tokenizer) == len(build_tokenizer())
