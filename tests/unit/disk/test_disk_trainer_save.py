"""A full disk while the trainer saves a version: a CheckpointError naming the version and the
cause (the CLI prints it as one line); the half-written folder is removed at once (it would keep
the disk full until the next start), the previous version stays complete, and the same version
saves once space returns."""

import errno
import os
from types import SimpleNamespace

import pytest

from trainer.checkpoint import COMPLETE, CheckpointStore
from trainer.errors import CheckpointError


class _Model:
    config = SimpleNamespace(tie_word_embeddings=False)

    def __init__(self):
        self.full = False

    def save_pretrained(self, path, state_dict=None, safe_serialization=True):
        with open(os.path.join(path, "model.safetensors"), "wb") as fh:
            fh.write(b"w" * 1024)
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")


class _Tok:
    def save_pretrained(self, path):
        with open(os.path.join(path, "tokenizer.json"), "w") as fh:
            fh.write("{}")


@pytest.mark.parametrize("where", ["model", "complete_marker"])
def test_a_full_disk_while_saving_is_a_clear_error_and_leaves_nothing_half_written(tmp_path, monkeypatch, where):
    store = CheckpointStore(tmp_path, keep=3)
    model = _Model()
    store.save(0, model=model, tokenizer=_Tok(), optimizer_state=None, state={"step": 0}, state_dict={})
    if where == "model":
        model.full = True
    else:
        import trainer.checkpoint as ck
        real = ck.write_atomic

        def full(path, data, **kw):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(ck, "write_atomic", full)
    with pytest.raises(CheckpointError, match="version 1.*No space left"):
        store.save(1, model=model, tokenizer=_Tok(), optimizer_state=None, state={"step": 1}, state_dict={})
    assert sorted(p.name for p in store.root.iterdir()) == ["0"], "a half-written version was left on disk"
    assert store.latest().version == 0 and store.latest().state()["step"] == 0
    model.full = False
    if where != "model":
        monkeypatch.setattr(ck, "write_atomic", real)
    saved = store.save(1, model=model, tokenizer=_Tok(), optimizer_state=None, state={"step": 1}, state_dict={})
    assert (saved.root / COMPLETE).exists() and store.latest().version == 1


def test_torch_save_on_a_really_full_disk_is_the_same_clear_error(tiny_fs):
    """torch.save reports ENOSPC as a RuntimeError ("unexpected pos"), not an OSError."""
    import torch

    with tiny_fs("256k") as d:
        store = CheckpointStore(d, keep=3)
        store.save(0, model=_Model(), tokenizer=_Tok(), optimizer_state=None, state={"step": 0}, state_dict={})
        with pytest.raises(CheckpointError, match="version 1"):
            store.save(1, model=_Model(), tokenizer=_Tok(), optimizer_state={"m": torch.zeros(200_000)},
                       state={"step": 1}, state_dict={})
        assert sorted(p.name for p in store.root.iterdir()) == ["0"]
        assert store.latest().state()["step"] == 0
