"""protocol.durable on a really full file system (a 64 KiB tmpfs; needs root and mount): the old
version stays whole and readable, no temporary file is left taking the space, and the write
succeeds once space returns."""

import errno
import os

import pytest

from protocol.durable import atomic_path, write_atomic


@pytest.mark.parametrize("writer", ["write_atomic", "atomic_path"])
def test_enospc_keeps_the_old_version_and_leaves_no_temporary(tiny_fs, fill_disk, writer):
    with tiny_fs() as d:
        target = d / "state.json"
        write_atomic(target, b'{"v": 1}')
        fill_disk(d)
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
