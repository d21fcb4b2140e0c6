"""Checkpoints of policy versions on the trainer's disk, and the spool of received groups.

Layout under `data_dir`:

    versions/<N>/model/          the published checkpoint (safetensors + config + tokenizer)
    versions/<N>/optimizer.pt    optimizer state, kept apart so it is never broadcast
    versions/<N>/state.json      version, step, counters needed to resume, and `trained`: the
                                 [submission id, policy version] of every group its step trained
    versions/<N>/COMPLETE        written last: a version without it does not exist
    inbox/<sha256(id)>.json      groups taken from the coordinator and not yet trained on

A version is written into `versions/.tmp-<N>-<pid>/`, every file fsynced, the folder renamed
to `versions/<N>`, then `COMPLETE` written and the parent directory fsynced. At start-up
incomplete folders are deleted and the newest complete version is where training resumes,
so a crash at any moment loses at most the step in progress — and not its data: each group
is spooled to `inbox/` (fsync + rename) before it is trained on (and before the coordinator is
told it may forget it) and removed only once the version trained on it is complete. Which
groups were trained is part of that version (`state.json`), so a crash between the version and
the inbox clean-up, or the coordinator handing a group out twice, never trains it twice
(`CheckpointStore.trained`).

The optimizer state is loaded with `torch.load(weights_only=True)`: it is tensors and plain
numbers, and a full unpickler would run whatever code a tampered file names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.durable import fsync_dir, fsync_tree, remove_temporaries, write_atomic
from trainer.errors import CheckpointError

COMPLETE = "COMPLETE"
# An inbox file larger than this is not one the trainer wrote (a group is bounded by the
# coordinator's body cap on its submission, 4 MiB by default): set aside unread.
MAX_INBOX_FILE_BYTES = 256 * 1024 * 1024
MAX_STATE_BYTES = 64 * 1024 * 1024   # a state.json: counters and one [id, version] per group trained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Saved:
    version: int
    root: Path

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def optimizer_path(self) -> Path:
        return self.root / "optimizer.pt"

    def state(self) -> dict:
        """The version's state.json; damaged (unreadable, not an object, `trained` not a list of
        [submission id, policy version]): a CheckpointError naming the file. Nothing is guessed
        past it: resuming elsewhere could train a group twice or publish a second version N."""
        path = self.root / "state.json"
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size > MAX_STATE_BYTES:
                    raise ValueError(f"over {MAX_STATE_BYTES} bytes")
                state = json.loads(fh.read(MAX_STATE_BYTES + 1))
            if not isinstance(state, dict):
                raise TypeError(f"a JSON {type(state).__name__}, not an object")
            trained = state.get("trained", [])
            if not isinstance(trained, list) or not all(
                    isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) and type(t[1]) is int
                    for t in trained):
                raise ValueError("'trained' is not a list of [submission id, policy version]")
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            raise CheckpointError(f"the checkpoint state {path} is unreadable ({type(exc).__name__}: {exc}); "
                                  f"it was changed after it was saved. Move the folder {self.root} aside by hand "
                                  "to resume from an older version") from None
        return state

    def optimizer_state(self) -> dict:
        """The saved optimizer state (tensors and plain values only; anything else is refused)."""
        try:
            return torch.load(self.optimizer_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{self.optimizer_path} holds more than an optimizer state (tensors and plain "
                                  f"values); refusing to unpickle it: {str(exc).splitlines()[0]}") from None


def publishable(model: Any, state_dict: dict | None, dtype: torch.dtype | None) -> dict:
    """The tensors a checkpoint holds: floating-point weights in `dtype` (None: unchanged), and
    a tied LM head stored once (as the input embedding; loaders tie it back). A gathered FSDP
    state dict lists the tied head under its own name too, which would double the bytes every
    relay carries."""
    sd = dict(state_dict if state_dict is not None else model.state_dict())
    if getattr(model.config, "tie_word_embeddings", False):
        head = model.get_output_embeddings()
        for name, module in model.named_modules():
            if module is head:
                sd.pop(f"{name}.weight" if name else "weight", None)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return sd


class CheckpointStore:
    """Complete versions under data_dir/versions; see the module docstring for the layout."""

    def __init__(self, data_dir: Path, keep: int):
        self.root = Path(data_dir) / "versions"
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)

    def clean_incomplete(self) -> list[Path]:
        """Delete temporary and incomplete version folders (left by a crash); return them."""
        removed = []
        for p in self.root.iterdir():
            if p.is_dir() and (p.name.startswith(".tmp-") or not (p / COMPLETE).exists()):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def complete_versions(self) -> list[int]:
        return sorted(int(p.name) for p in self.root.iterdir()
                      if p.is_dir() and p.name.isdigit() and (p / COMPLETE).exists())

    def latest(self) -> Saved | None:
        versions = self.complete_versions()
        return Saved(versions[-1], self.root / str(versions[-1])) if versions else None

    def trained(self) -> dict[str, int]:
        """{submission id: policy version} of the groups trained by the complete versions on disk
        (at least the async window's worth: a group older than that is dropped as stale anyway)."""
        out: dict[str, int] = {}
        for v in self.complete_versions():
            for sid, version in self.get(v).state().get("trained", []):
                out[str(sid)] = int(version)
        return out

    def get(self, version: int) -> Saved:
        p = self.root / str(version)
        if not (p / COMPLETE).exists():
            raise CheckpointError(f"version {version} has no complete checkpoint under {self.root}")
        return Saved(version, p)

    def save(self, version: int, *, model: Any, tokenizer: Any, optimizer_state: dict | None,
             state: dict, state_dict: dict | None = None, dtype: torch.dtype | None = None) -> Saved:
        """Write version `version` atomically and mark it complete. `state_dict` (a full,
        gathered state dict) replaces model.state_dict() when the model is sharded; `dtype`:
        the weights' dtype in the checkpoint (None: as they are)."""
        final = self.root / str(version)
        if (final / COMPLETE).exists():
            raise CheckpointError(f"version {version} already exists at {final}; versions are never overwritten")
        if final.exists():
            shutil.rmtree(final)
        tmp = self.root / f".tmp-{version}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            (tmp / "model").mkdir(parents=True)
            model.save_pretrained(tmp / "model", state_dict=publishable(model, state_dict, dtype), safe_serialization=True)
            if dtype is not None:  # save_pretrained names the live (float32 master) weights' dtype
                cfg_path = tmp / "model" / "config.json"
                config = json.loads(cfg_path.read_text())
                for key in ("dtype", "torch_dtype"):
                    if key in config or key == "dtype":
                        config[key] = str(dtype).replace("torch.", "")
                cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            tokenizer.save_pretrained(tmp / "model")
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({**state, "version": version, "saved_at": time.time()},
                                                       indent=1, sort_keys=True) + "\n")
            fsync_tree(tmp)
            os.replace(tmp, final)
            write_atomic(final / COMPLETE, f"{version}\n".encode())
        except BaseException as exc:
            # a full (or failing) disk -- OSError, or torch.save's RuntimeError and safetensors'
            # SafetensorError around it: remove the half-written folder now (it would hold the
            # space until the next start); the previous versions and the inbox are untouched
            shutil.rmtree(tmp, ignore_errors=True)
            if final.exists() and not (final / COMPLETE).exists():
                shutil.rmtree(final, ignore_errors=True)
            if not isinstance(exc, Exception):
                raise
            raise CheckpointError(f"cannot save version {version} under {self.root} ({exc}); the half-written "
                                  f"folder was removed, version {self.latest().version if self.latest() else None} "
                                  "is still the newest and the groups it has not trained stay in the inbox") from exc
        self.prune()
        return Saved(version, final)

    def prune(self) -> list[int]:
        """Keep the newest `keep` complete versions; delete older ones (oldest first)."""
        versions = self.complete_versions()
        dropped = versions[: max(0, len(versions) - self.keep)]
        for v in dropped:
            # Remove the marker first, so a crash mid-delete leaves an incomplete (ignored) folder.
            (self.root / str(v) / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(self.root / str(v), ignore_errors=True)
        return dropped


class Inbox:
    """Groups taken from the coordinator and not yet part of a complete version."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "inbox"
        self.root.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.root.glob(".*.tmp"))  # left by a write killed midway

    @staticmethod
    def _name(submission_id: str) -> str:
        return hashlib.sha256(submission_id.encode()).hexdigest()[:32] + ".json"

    def put(self, groups: list) -> None:
        """Spool `groups` (TrainingGroup models) durably before they are used."""
        for g in groups:
            try:
                write_atomic(self.root / self._name(g.submission_id), g.model_dump_json().encode())
            except OSError as exc:
                # before the acknowledgement: the coordinator still holds every one of them
                raise CheckpointError(f"cannot spool group {g.submission_id} into {self.root} ({exc}); the "
                                      "groups are not acknowledged, so the coordinator hands them out again") from exc

    def load(self, model_type: type) -> list:
        """Every spooled group, oldest file first (a damaged file is moved aside with a log line,
        not trusted and not deleted: `<name>.corrupt`, `.corrupt.N` when that name is taken)."""
        out = []
        for p in sorted(self.root.glob("*.json"), key=lambda x: (x.stat().st_mtime, x.name)):
            try:
                with open(p, "rb") as fh:  # a folder named *.json raises IsADirectoryError here
                    if os.fstat(fh.fileno()).st_size > MAX_INBOX_FILE_BYTES:
                        raise ValueError(f"over {MAX_INBOX_FILE_BYTES} bytes, larger than any group")
                    data = fh.read(MAX_INBOX_FILE_BYTES + 1)
                out.append(model_type.model_validate_json(data))
            except FileNotFoundError:
                continue
            except (ValueError, OSError) as exc:
                target = p.with_name(p.stem + ".corrupt")
                n = 1
                while target.exists() or target.is_symlink():
                    target = p.with_name(f"{p.stem}.corrupt.{n}")
                    n += 1
                p.rename(target)
                log.error("inbox file %s is unreadable (%s: %s); moved aside to %s, its group is not trained",
                          p, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", target.name)
        return out

    def remove(self, submission_ids: list[str]) -> None:
        for sid in submission_ids:
            (self.root / self._name(sid)).unlink(missing_ok=True)
        if submission_ids:
            fsync_dir(self.root)
