"""A full disk while the daemon spools a finished batch (see tests/unit/disk for the spool itself)."""

import errno

from worker import spool as spool_mod


def test_a_full_disk_while_spooling_stops_the_daemon_with_a_clear_error_and_keeps_what_was_spooled(
        fake, versions, start_daemon, monkeypatch):
    """The second put of a batch fails: the first stays spooled (its lease is not released under
    it, and it is sent), the daemon stops with a WorkerError naming the spool and the cause (the
    CLI prints it as one line), and the leases of the work it could not keep go back to the pool."""
    from tests.waiting import wait_until
    from worker.errors import WorkerError

    versions.publish(0)
    fake.tasks_left = 2
    real = spool_mod.write_atomic
    puts = []

    def write_atomic(path, data, **kw):
        if path.parent.name == "pending":
            puts.append(path.name)
            if len(puts) >= 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data, **kw)

    monkeypatch.setattr(spool_mod, "write_atomic", write_atomic)
    r = start_daemon(max_tasks=2)
    r.thread.join(60)
    assert not r.thread.is_alive(), "the daemon went on without a spool"
    assert isinstance(r.error, WorkerError), repr(r.error)
    assert "No space left" in str(r.error) and "spool" in str(r.error)
    spooled = puts[0].removesuffix(".json")
    wait_until(lambda: spooled in fake.by_lease, what="the spooled submission sent", timeout=10)
    assert spooled not in fake.released
    assert set(fake.released) >= {puts[1].removesuffix(".json")}
