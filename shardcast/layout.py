"""On-disk layout shared by the origin, the relay and the client (files are replaced with
`protocol.durable`, the one atomic-write helper of every role).

Every party keeps one folder per policy version, named by its decimal number, next to
hidden work folders that are never served or loaded:

    origin  data_dir/versions/N/<checkpoint files>, N/.manifest.json (the signed envelope)
    relay   data_dir/versions/N/.manifest.json, N/shards/<index> (only verified shards)
    client  cache_dir/N/<checkpoint files>, N/.manifest.json   (only complete, verified versions)
            cache_dir/.partial/N/...                           (a download in progress)

A folder named N appears only by `os.rename` of a fully written work folder, so a reader
never sees half of a version. `.manifest.json` is hidden so `build_manifest` (which skips
dot files) never lists it as part of the checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from protocol.durable import write_atomic
from protocol.envelope import Envelope
from protocol.manifest import MANIFEST_NAME
from shardcast.bounded import decimal



def write_manifest(folder: Path, env: Envelope, *, durable: bool = True) -> None:
    write_atomic(Path(folder) / MANIFEST_NAME, env.model_dump_json().encode(), durable=durable)


def read_manifest(folder: Path) -> Envelope:
    """The signed manifest stored in `folder` (not verified: callers open it with the key)."""
    return Envelope.model_validate_json((Path(folder) / MANIFEST_NAME).read_bytes())


def version_dirs(root: Path) -> dict[int, Path]:
    """Folders under `root` whose name is a version number, by version."""
    root = Path(root)
    if not root.is_dir():
        return {}
    return {int(p.name): p for p in root.iterdir() if p.is_dir() and decimal(p.name)}


def remove_tree(path: Path) -> None:
    """Delete a version folder: rename it to a hidden name first so it vanishes atomically."""
    path = Path(path)
    if not path.exists():
        return
    doomed = path.with_name(f".del-{path.name}-{os.getpid()}-{id(path)}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_work_dirs(root: Path) -> None:
    """Remove leftovers of interrupted work (hidden `.tmp-*` / `.del-*` folders) under `root`."""
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".del-")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def versions_to_prune(versions: list[int], keep: int | None) -> list[int]:
    """The versions to delete so that only the newest `keep` remain (None keeps all)."""
    if keep is None or len(versions) <= keep:
        return []
    return sorted(versions)[: len(versions) - keep]
