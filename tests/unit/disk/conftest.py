"""Shared by the full-disk tests: a real, tiny tmpfs (needs root and mount; the test is skipped
with the reason otherwise) and a way to fill it."""

import errno
import os
import subprocess
from contextlib import contextmanager

import pytest


@pytest.fixture
def tiny_fs(tmp_path):
    """`with tiny_fs("256k") as d:` a tmpfs of that size mounted at a fresh folder, unmounted after."""

    @contextmanager
    def mount(size: str = "64k"):
        d = tmp_path / f"fs-{size}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        try:
            yield d
        finally:
            subprocess.run(["umount", "-l", str(d)], check=False)

    return mount


def fill(d) -> None:
    """Write `d/filler` until the file system is full (ENOSPC)."""
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture
def fill_disk():
    return fill
