"""`protocol.durable`: the one way a file is replaced (temporary file, fsync, rename, fsync of the
folder). A failed write leaves the old file and no temporary one; a key file is 0600 whatever the
umask."""

from __future__ import annotations

import os

import pytest

from protocol.durable import atomic_path, fsync_tree, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    p = tmp_path / "state.json"
    write_atomic(p, b"old")
    write_atomic(p, "new")
    assert p.read_text() == "new" and os.listdir(tmp_path) == ["state.json"]


def test_a_mode_holds_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "key", b"secret", mode=0o600)
        write_atomic(tmp_path / "open", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "open").stat().st_mode & 0o777 == 0o644


def test_a_failed_writer_leaves_the_old_file_and_no_temporary_file(tmp_path):
    p = tmp_path / "part.parquet"
    write_atomic(p, b"complete")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer died")
    assert p.read_bytes() == b"complete" and os.listdir(tmp_path) == ["part.parquet"]
    with pytest.raises(TypeError):
        write_atomic(p, None)  # type: ignore[arg-type]
    assert p.read_bytes() == b"complete" and os.listdir(tmp_path) == ["part.parquet"]


def test_atomic_path_and_fsync_tree_for_writers_that_want_a_path(tmp_path):
    with atomic_path(tmp_path / "out.jsonl", durable=False) as tmp:
        tmp.write_text("{}\n")
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_bytes(b"1")
    fsync_tree(tmp_path / "d")
    assert (tmp_path / "out.jsonl").read_text() == "{}\n"


def test_two_threads_replacing_one_file_never_mix_their_bytes(tmp_path):
    """Two threads of one process writing the same path at once: each write must land whole or
    be replaced whole (a temporary name shared by the threads let one thread's bytes run into
    the other's file, and its rename then failed with FileNotFoundError)."""
    import threading

    p = tmp_path / "state.json"
    bodies = [bytes([65 + i]) * 200_000 for i in range(2)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def writer(body: bytes) -> None:
        start.wait()
        try:
            for _ in range(40):
                write_atomic(p, body, durable=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert p.read_bytes() in bodies
    assert os.listdir(tmp_path) == ["state.json"]
