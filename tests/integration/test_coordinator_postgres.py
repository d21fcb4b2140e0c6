"""The same coordinator code on PostgreSQL: migrations, the whole flow, refusals that change
nothing, and two coordinator replicas sharing one database without handing a job out twice.

Runs a throwaway PostgreSQL cluster (Debian's packages) on a Unix socket; skipped with a
reason when PostgreSQL or the psycopg driver is not installed.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from coordinator.store.pgtemp import TempPostgres, find_bin
from swarmrl.procs import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "coordinator"))
from coord_harness import start_swarm

pytestmark = [
    pytest.mark.skipif(find_bin() is None, reason="PostgreSQL is not installed (apt-get install -y postgresql)"),
]



@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    pytest.importorskip("psycopg", reason="the postgres extra is not installed (pip install 'swarmrl[postgres]')")
    pg = TempPostgres(port=free_port())
    try:
        yield pg.start()
    finally:
        pg.remove()


@pytest.fixture
def pg_url(postgres):
    from sqlalchemy import create_engine, text

    eng = create_engine(postgres.url)
    with eng.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    eng.dispose()
    return postgres.url


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from swarmrl.modelkit import init_tiny_model

    d = tmp_path_factory.mktemp("model") / "tiny"
    init_tiny_model(d, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    return d


def test_migrations_create_exactly_the_schema_on_postgres(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from coordinator.store.db import Database
    from coordinator.store.schema import metadata

    db = Database(pg_url)
    db.migrate()
    db.migrate()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    db.dispose()


def test_the_whole_flow_on_postgres(pg_url, tmp_path, tiny_model):
    from protocol.messages import BatchResponse

    s = start_swarm(tmp_path, tiny_model, database_url=pg_url)
    try:
        s.publish(0)
        honest, cheat = s.new_worker(), s.new_worker()
        hl = s.lease(honest, 2)
        cl = s.lease(cheat, 2)
        hs = [s.submit(honest, lease).json()["submission_id"] for lease in hl]
        cs = s.submit(cheat, cl[0]).json()["submission_id"]
        assert s.submit(honest, hl[0]).status_code == 409
        assert sorted(j.submission_id for j in s.claim()) == sorted(hs + [cs])
        for sid in hs:
            assert s.verdict(sid, True).status_code == 200
        assert s.verdict(cs, False, reason="sampling check failed").status_code == 200
        before = s.snapshot()
        assert s.submit(cheat, cl[1]).status_code == 403
        assert s.verdict(hs[0], False).status_code == 409
        assert s.snapshot() == before
        groups = BatchResponse.model_validate_json(s.batch().content).groups
        assert [g.submission_id for g in groups] == hs
        s.clock.advance(s.cfg.batch_ack_timeout_s + 1)   # not acknowledged: handed out again
        again = BatchResponse.model_validate_json(s.batch().content).groups
        assert [g.submission_id for g in again] == hs
        assert s.ack(hs).json() == {"acknowledged": 2}
        s.clock.advance(s.cfg.batch_ack_timeout_s + 1)
        assert BatchResponse.model_validate_json(s.batch().content).groups == []
        st = s.stats()
        assert st["submissions"] == {"accepted": 2, "rejected": 1}
        assert {w["worker_id"]: w["status"] for w in st["workers"]}[cheat.peer_id] == "banned"
        assert s.metric("swarmrl_coordinator_buffer_depth") == 0
    finally:
        s.close()


def test_two_replicas_on_one_database_never_hand_out_a_job_twice(pg_url, tmp_path, tiny_model):
    a = start_swarm(tmp_path / "a", tiny_model, database_url=pg_url)
    b = start_swarm(tmp_path / "b", tiny_model, database_url=pg_url)
    try:
        b.clock.t = a.clock.t
        a.publish(0)
        w = a.new_worker()
        sids = []
        for _ in range(5):
            sids += [a.submit(w, lease).json()["submission_id"] for lease in a.lease(w, 8)]
        claimed: list[str] = []
        lock = threading.Lock()

        def drain(s):
            while True:
                jobs = s.claim(n=3)
                if not jobs:
                    return
                with lock:
                    claimed.extend(j.submission_id for j in jobs)

        threads = [threading.Thread(target=drain, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(claimed) == sorted(sids)  # every job once, none twice
        # the buffer is shared too: each accepted group is served by exactly one replica
        for sid in sids:
            assert a.verdict(sid, True).status_code == 200
        from protocol.messages import BatchResponse

        served: list[str] = []

        def take(s):
            while True:
                groups = BatchResponse.model_validate_json(s.batch(max_groups=4).content).groups
                if not groups:
                    return
                with lock:
                    served.extend(g.submission_id for g in groups)

        threads = [threading.Thread(target=take, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(served) == sorted(sids)
    finally:
        a.close()
        b.close()


def test_a_pooled_connection_the_server_dropped_is_replaced_after_an_idle_pause(pg_url, monkeypatch):
    """The pool pings a connection only when it sat idle (coordinator.store.db._ping_when_idle),
    not on every checkout: a connection the server dropped while idle is replaced unseen; one
    dropped within the idle window fails one request, and the pool reconnects for the next."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from coordinator.store import db as dbmod

    monkeypatch.setattr(dbmod, "PING_IDLE_S", 0.3)
    db = dbmod.Database(pg_url)
    admin = create_engine(pg_url)

    def drop_connections():
        with admin.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = 'swarmrl' AND pid <> pg_backend_pid()"))

    def backend_pid():
        with db.read() as conn:
            return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

    try:
        first = backend_pid()
        assert backend_pid() == first            # reused from the pool
        drop_connections()
        import time
        time.sleep(0.4)                          # idle past the window: pinged, found dead, replaced
        second = backend_pid()
        assert second != first
        drop_connections()                       # within the window: not pinged, one request fails
        with pytest.raises(OperationalError):
            backend_pid()
        assert backend_pid() not in (first, second)
    finally:
        admin.dispose()
        db.dispose()


def test_a_request_that_meets_a_dropped_connection_gets_503_and_may_be_sent_again(pg_url, tmp_path, tiny_model,
                                                                                   monkeypatch):
    """A database error that is not the request's fault is a 503 with Retry-After (not a 500),
    the transaction is rolled back (the nonce too), so the same signed request succeeds next."""
    from sqlalchemy import create_engine, text

    from coordinator.store import db as dbmod
    from protocol.messages import KIND_LEASE_REQUEST, LeaseRequest

    monkeypatch.setattr(dbmod, "PING_IDLE_S", 600.0)   # no ping: the request meets the dead connection
    s = start_swarm(tmp_path, tiny_model, database_url=pg_url)
    admin = create_engine(pg_url)
    try:
        s.publish(0)
        w = s.new_worker()
        env = s.seal(KIND_LEASE_REQUEST, LeaseRequest(max_tasks=1), w)
        with admin.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = 'swarmrl' AND pid <> pg_backend_pid()"))
        r = s.send("/v1/leases", env)
        assert r.status_code == 503 and r.json()["reason"] == "database_unavailable", r.text
        assert int(r.headers["Retry-After"]) >= 1
        r = s.send("/v1/leases", env)
        assert r.status_code == 200 and len(r.json()["leases"]) == 1, r.text
    finally:
        admin.dispose()
        s.close()
