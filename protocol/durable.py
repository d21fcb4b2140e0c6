"""Writing files so that a crash leaves the old version or the new one, never half of either.

The one way every role replaces a file: write a temporary file in the same folder, fsync it,
rename it over the target (`os.replace`, atomic on POSIX), then fsync the folder so the rename
itself survives a power loss. Used for checkpoints and the trainer's inbox, the worker's spool,
shardcast's manifests, the coordinator's archive and run description, key files and port files.

    write_atomic(path, data)        bytes or text -> path (mode: permissions of the new file)
    atomic_path(path)               a context manager for writers that want a path (pyarrow):
                                    yields the temporary path, then syncs and renames it
    fsync_dir(path)                 make a rename or a new entry inside `path` durable
    fsync_tree(path)                fsync every file and folder under `path` (a folder that is
                                    renamed into place as a whole)
    remove_temporaries(paths)       at start-up: delete the temporary files a killed writer left

`durable=False` keeps the rename (readers still never see half a file) but skips the fsyncs:
for files that are cheap to lose (port files, the worker's awaiting list). Temporary files are
named `.<name>.<pid>-<thread>.tmp`, hidden and never matching a reader's glob, and are removed when the
write fails. Python's standard library has no atomic replace-a-file helper, hence these few lines.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry inside the folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then every folder (children before parents)."""
    path = Path(path)
    for p in sorted(path.rglob("*"), key=lambda x: -len(x.parts)):
        fsync_dir(p)  # an O_RDONLY descriptor fsyncs a file as well as a folder
    fsync_dir(path)


def remove_temporaries(paths: Iterable[Path]) -> None:
    """Delete the temporary files (`.<name>.<pid>-<thread>.tmp`) in `paths` that a writer killed midway
    left behind; anything else by such a name (a folder) is not one of ours and is left alone."""
    for p in paths:
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


def _tmp_name(path: Path) -> Path:
    """A name of this writer's own: the process and the thread (two threads replacing one file
    at once must not write into one temporary file)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def _commit(tmp: Path, path: Path, durable: bool) -> None:
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; once the block has written it, it replaces `path`
    (fsynced first, and the folder after, when `durable`). On an error the temporary file is
    removed and `path` is left as it was."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        _commit(tmp, path, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes | str, *, durable: bool = True, mode: int | None = None) -> None:
    """Replace `path` with `data` (text is written as UTF-8); `mode`: permissions of the new file,
    set before any byte is written (key files: 0o600)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)  # O_CREAT's mode is reduced by the umask
            fh.write(data.encode() if isinstance(data, str) else data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        _commit(tmp, path, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
