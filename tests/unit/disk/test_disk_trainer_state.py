"""A complete checkpoint whose state.json was damaged on disk (COMPLETE is written after an
fsync of the whole folder, so no crash of the trainer leaves this; a failing disk or a hand can).
Resuming from it, or reading which groups it trained, is a clear CheckpointError naming the file
(the CLI prints it and exits), never a bare traceback, and nothing on disk is changed: guessing
past it could train a group twice or publish a second, different version N."""

import json

import pytest

from trainer.checkpoint import COMPLETE, CheckpointStore
from trainer.errors import CheckpointError


def _version(store: CheckpointStore, v: int, state: bytes | None):
    d = store.root / str(v)
    (d / "model").mkdir(parents=True)
    if state is not None:
        (d / "state.json").write_bytes(state)
    (d / COMPLETE).write_text(f"{v}\n")


GOOD = json.dumps({"step": 1, "version": 1, "trained": [["s1", 0]]}).encode()


@pytest.mark.parametrize("damage", [b'{"step": 1, "trai', bytes(range(200, 256)), b"[1, 2]", b'{"trained": [["s1"]]}',
                                    b'{"trained": 5}', b'{"trained": [["s1", 1e999]]}', None, "directory"])
def test_a_damaged_state_file_is_a_clear_checkpoint_error(tmp_path, damage):
    store = CheckpointStore(tmp_path, keep=3)
    _version(store, 1, GOOD)
    if damage == "directory":
        _version(store, 2, None)
        (store.root / "2" / "state.json").mkdir()
    else:
        _version(store, 2, damage)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(CheckpointError, match=r"versions/2/state\.json"):
        store.trained()
    with pytest.raises(CheckpointError, match=r"versions/2/state\.json"):
        store.latest().state()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert store.get(1).state()["trained"] == [["s1", 0]]
