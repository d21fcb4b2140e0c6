"""protocol.durable on a really full file system (a 64 KiB tmpfs; needs root and mount): the old
version stays whole and readable, no temporary file is left taking the space, and the write
succeeds once space returns."""

import errno
import os
import subprocess
from contextlib import contextmanager

import pytest

from protocol.durable import atomic_path, write_atomic


@contextmanager
def _tiny_fs(tmp_path, size="64k"):
    d = tmp_path / "fs"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(d):
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.parametrize("writer", ["write_atomic", "atomic_path"])
def test_enospc_keeps_the_old_version_and_leaves_no_temporary(tmp_path, writer):
    with _tiny_fs(tmp_path) as d:
        target = d / "state.json"
        write_atomic(target, b'{"v": 1}')
        _fill(d)
        big = b"x" * 200_000
        with pytest.raises(OSError) as err:
            if writer == "write_atomic":
                write_atomic(target, big)
            else:
                with atomic_path(target) as tmp, open(tmp, "wb") as fh:
                    fh.write(big)
        assert err.value.errno == errno.ENOSPC
        assert target.read_bytes() == b'{"v": 1}'
        assert sorted(os.listdir(d)) == ["filler", "state.json"]
        (d / "filler").unlink()   # space returns
        write_atomic(target, b'{"v": 2}')
        assert target.read_bytes() == b'{"v": 2}'
