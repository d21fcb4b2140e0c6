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
        with admin.begin() as conn:                      # the same for a public read
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = 'swarmrl' AND pid <> pg_backend_pid()"))
        r = s.http.get(f"/v1/workers/{w.peer_id}")
        assert r.status_code == 503 and r.json()["reason"] == "database_unavailable", r.text
        assert s.http.get(f"/v1/workers/{w.peer_id}").status_code == 200
    finally:
        admin.dispose()
        s.close()


# -- check-then-act races between replicas ------------------------------------------------------
# Each test below makes two replicas run the same transaction at once and holds each one, at the
# point between its read and its write, until the other one has read too (or `Rendezvous.wait_s`
# has passed: then a replica that serialises them goes on alone). Without a lock both read the
# state before either wrote, which is the interleaving two replicas behind a load balancer get
# by chance under load.
class Rendezvous:
    def __init__(self, n: int = 2, wait_s: float = 2.0):
        self.n, self.wait_s, self.arrived = n, wait_s, 0
        self.cond = threading.Condition()

    def arrive(self) -> None:
        with self.cond:
            self.arrived += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.arrived >= self.n, timeout=self.wait_s)

    def after(self, fn):
        """`fn`, then the rendezvous (the window between a read and the write that depends on it)."""
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.arrive()
            return out
        return wrapped


def _at_once(*calls):
    out: list = [None] * len(calls)

    def run(i, call):
        out[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def _replicas(pg_url, tmp_path, tiny_model, **overrides):
    a = start_swarm(tmp_path / "a", tiny_model, database_url=pg_url, **overrides)
    b = start_swarm(tmp_path / "b", tiny_model, database_url=pg_url, rng_seed=1, **overrides)  # its own ids
    b.clock.t = a.clock.t
    return a, b


def _register_from(s, key, address: str):
    from protocol.messages import KIND_REGISTRATION, HardwareReport, Registration

    env = s.seal(KIND_REGISTRATION, Registration(hardware=HardwareReport(cpu_count=1, ram_bytes=1)), key)
    return s.http.post("/v1/workers/register", content=env.model_dump_json(),
                       headers={"content-type": "application/json", "x-forwarded-for": address})


def _active_at(s, address: str) -> int:
    from coordinator.store import workers

    with s.ctx.db.read() as conn:
        return len(workers.active_ids_at_address(conn, address))


ONE_PER_ADDRESS = dict(limits={"exempt_addresses": [], "trusted_proxies": ["127.0.0.1"]},
                       join={"identities_per_address": 1})


def test_two_replicas_registering_from_one_address_at_once_keep_the_identities_per_address_cap(
        pg_url, tmp_path, tiny_model, monkeypatch):
    """The cap was a count, then an insert, with no lock: two registrations from one address on
    two replicas both counted 0 others and both became active (cap 1). An advisory lock on the
    address key, held to the end of the transaction, now makes the second count the first."""
    import coordinator.store.workers as store_workers
    from protocol.identity import KeyPair

    a, b = _replicas(pg_url, tmp_path, tiny_model, **ONE_PER_ADDRESS)
    try:
        meet = Rendezvous()
        monkeypatch.setattr(store_workers, "active_ids_at_address", meet.after(store_workers.active_ids_at_address))
        ra, rb = _at_once(lambda: _register_from(a, KeyPair.generate(), "198.51.100.20"),
                          lambda: _register_from(b, KeyPair.generate(), "198.51.100.20"))
        assert sorted([ra.status_code, rb.status_code]) == [200, 429], (ra.text, rb.text)
        assert _active_at(a, "198.51.100.20") == 1
        # one IPv6 /64, two addresses in it, at once: the same key, the same lock
        ra, rb = _at_once(lambda: _register_from(a, KeyPair.generate(), "2001:db8:7:7::1"),
                          lambda: _register_from(b, KeyPair.generate(), "2001:db8:7:7::2"))
        assert sorted([ra.status_code, rb.status_code]) == [200, 429], (ra.text, rb.text)
    finally:
        a.close()
        b.close()


def test_two_gone_identities_of_one_address_waking_at_once_keep_the_cap(pg_url, tmp_path, tiny_model, monkeypatch):
    """The same race through `revive`: two silent identities of one address (each registered
    while the other was gone) heartbeat at once on two replicas; both found room."""
    import coordinator.store.workers as store_workers
    from coordinator.service import upkeep
    from protocol.identity import KeyPair
    from protocol.messages import KIND_HEARTBEAT, Heartbeat

    a, b = _replicas(pg_url, tmp_path, tiny_model, **ONE_PER_ADDRESS)
    try:
        j = a.cfg.join

        def go_silent():
            for s in (a, b):
                s.clock.advance(j.heartbeat_interval_s * (j.missed_heartbeats_gone + 1))
            upkeep.sweep(a.ctx)

        x, y = KeyPair.generate(), KeyPair.generate()
        assert _register_from(a, x, "198.51.100.21").status_code == 200
        go_silent()
        assert _register_from(a, y, "198.51.100.21").status_code == 200
        go_silent()
        assert _active_at(a, "198.51.100.21") == 0
        meet = Rendezvous()
        monkeypatch.setattr(store_workers, "active_ids_at_address", meet.after(store_workers.active_ids_at_address))
        ra, rb = _at_once(lambda: a.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(), x),
                          lambda: b.post("/v1/workers/heartbeat", KIND_HEARTBEAT, Heartbeat(), y))
        assert sorted([ra.status_code, rb.status_code]) == [200, 429], (ra.text, rb.text)
        assert _active_at(a, "198.51.100.21") == 1
    finally:
        a.close()
        b.close()


def test_two_replicas_recording_verdicts_of_one_worker_at_once_lose_no_proof_drift(
        pg_url, tmp_path, tiny_model, monkeypatch):
    """A verdict read the worker's standing (its proof-drift CUSUMs), computed the new scores
    and wrote them back whole: two verdicts of one worker recorded at once on two replicas (the
    verifiers run many processes) each added their step to the same old score, and one step was
    lost. A worker whose proofs drift was banned later than the test says, or never. The
    worker's row is now locked before its standing is read."""
    import coordinator.rules.verdicts as rules_verdicts
    from tests.verdict_fixtures import passing_checks

    a, b = _replicas(pg_url, tmp_path, tiny_model)
    try:
        a.publish(0)
        w = a.new_worker()
        sids = [a.submit(w, lease).json()["submission_id"] for lease in a.lease(w, 2)]
        assert all(a.snapshot_submission(sid)["full_check"] for sid in sids)
        # each check's error is (0.11 - 0.01) / 0.2 = half of the float32 limit: two ban the worker
        checks = passing_checks(mant_mean=0.11, per_completion=[0.11])
        meet = Rendezvous()
        monkeypatch.setattr(rules_verdicts, "consequences", meet.after(rules_verdicts.consequences))
        ra, rb = _at_once(lambda: a.verdict(sids[0], True, checks=checks),
                          lambda: b.verdict(sids[1], True, checks=checks))
        assert ra.status_code == 200 and rb.status_code == 200, (ra.text, rb.text)
        row = a.snapshot_worker(w)
        assert row["drift_score"] >= 1.0 - 1e-9 and row["status"] == "banned", row
    finally:
        a.close()
        b.close()


def test_two_replicas_sweeping_at_once_count_each_expired_lease_once(pg_url, tmp_path, tiny_model, monkeypatch):
    """`close_many` selected the active leases, then closed those still active, and returned what
    it had selected: a replica whose update waited for another's (the same leases expiring in
    both sweeps) closed nothing but still counted every lease as dropped by its worker again, so
    an honest worker's dropped leases doubled (each beyond the allowance doubles its check rate),
    and put their tasks back in the pool a second time. It now returns only the leases it closed."""
    import coordinator.store.leases as store_leases
    from coordinator.service import upkeep

    a, b = _replicas(pg_url, tmp_path, tiny_model, lease_sizing={"enabled": False})
    try:
        a.publish(0)
        w = a.new_worker()
        assert len(a.lease(w, 3)) == 3
        for s in (a, b):
            s.clock.advance(s.cfg.lease_ttl_s + 1)
        meet = Rendezvous()
        monkeypatch.setattr(store_leases, "return_tasks", meet.after(store_leases.return_tasks))
        done = _at_once(lambda: upkeep.sweep(a.ctx), lambda: upkeep.sweep(b.ctx))
        assert a.snapshot_worker(w)["leases_dropped"] == 3
        assert sorted(d["expired"] for d in done) == [0, 3], done
    finally:
        a.close()
        b.close()


def test_two_lease_requests_of_one_worker_at_once_keep_its_lease_quota(pg_url, tmp_path, tiny_model, monkeypatch):
    """Not a hole (kept as a guard): the lease request counts the worker's active leases after
    its `seen` update, which locks the worker's row, so the second request waits for the
    first and, under READ COMMITTED, counts its leases."""
    import coordinator.store.leases as store_leases

    a, b = _replicas(pg_url, tmp_path, tiny_model, lease_sizing={"enabled": False},
                     limits={"max_leases_per_worker": 2})
    try:
        a.publish(0)
        w = a.new_worker()
        meet = Rendezvous()
        monkeypatch.setattr(store_leases, "active_task_ids", meet.after(store_leases.active_task_ids))
        got = _at_once(lambda: a.lease(w, 2), lambda: b.lease(w, 2))
        assert sorted(len(g) for g in got) == [0, 2], got
    finally:
        a.close()
        b.close()


def test_two_replicas_taking_in_one_lease_s_submission_at_once_answer_409_not_500(
        pg_url, tmp_path, tiny_model, monkeypatch):
    """A resend of a submission (a new nonce) that reaches another replica while the first copy is
    being stored: both passed the lease check, both inserted, and the second died on the
    primary key (500, an error logged) instead of being told it was stored (409
    duplicate_submission, which the worker takes for delivered). The lease row is now locked by
    the write transaction that checks and closes it."""
    import coordinator.store.submissions as store_submissions
    from protocol.messages import KIND_SUBMISSION

    a, b = _replicas(pg_url, tmp_path, tiny_model)
    try:
        a.publish(0)
        w = a.new_worker()
        (lease,) = a.lease(w, 1)
        envs = [s.seal(KIND_SUBMISSION, s.submission(lease), w) for s in (a, b)]   # two nonces
        meet = Rendezvous()
        real = store_submissions.insert
        monkeypatch.setattr(store_submissions, "insert", lambda *x, **kw: (meet.arrive(), real(*x, **kw))[1])
        # both past the intake claim (one taken over as stale, say), to reach the write at once:
        # the claim answers the usual race earlier (test_copies_of_one_submission_..._scored_once)
        import coordinator.service.work as work

        monkeypatch.setattr(work, "_claim", lambda *x: None)
        ra, rb = _at_once(lambda: a.send("/v1/submissions", envs[0]), lambda: b.send("/v1/submissions", envs[1]))
        assert sorted([ra.status_code, rb.status_code]) == [200, 409], (ra.text, rb.text)
        assert "duplicate_submission" in (ra.text + rb.text)
    finally:
        a.close()
        b.close()


def test_two_replicas_leasing_at_once_never_hand_one_returned_task_to_two_workers(
        pg_url, tmp_path, tiny_model, monkeypatch):
    """A returned task was read from the pool, then deleted from it, and leased whether the delete
    took it or not: two lease requests on two replicas read the same returned task and both
    leased it (two workers on one task, with the same prompt, while the next task waited). A
    request now leases only the returned tasks its own delete took."""
    import coordinator.store.leases as store_leases
    from protocol.messages import KIND_LEASE_RELEASE, LeaseRelease

    a, b = _replicas(pg_url, tmp_path, tiny_model, lease_sizing={"enabled": False})
    try:
        a.publish(0)
        x, y, z = a.new_worker(), a.new_worker(), a.new_worker()
        (given_up,) = a.lease(x, 1)
        r = a.post("/v1/leases/release", KIND_LEASE_RELEASE, LeaseRelease(lease_ids=[given_up.lease_id]), x)
        assert r.status_code == 200, r.text
        meet = Rendezvous()
        monkeypatch.setattr(store_leases, "returned", meet.after(store_leases.returned))
        (ly,), (lz,) = _at_once(lambda: a.lease(y, 1), lambda: b.lease(z, 1))
        assert ly.task_id != lz.task_id, (ly.task_id, lz.task_id)
        assert given_up.task_id in (ly.task_id, lz.task_id)
    finally:
        a.close()
        b.close()


def test_one_key_registering_on_two_replicas_at_once_gets_a_retry_not_a_500(pg_url, tmp_path, tiny_model,
                                                                             monkeypatch):
    """Both replicas read "no such worker", both insert; the second insert breaks the primary key.
    That was a 500 with a traceback; a constraint a concurrent request broke first is now a 503
    `concurrent_change` with Retry-After (nothing changed), and the same request sent again is
    answered as a registration of a known key."""
    import coordinator.store.workers as store_workers
    from protocol.identity import KeyPair

    a, b = _replicas(pg_url, tmp_path, tiny_model)
    try:
        key = KeyPair.generate()
        meet = Rendezvous()
        monkeypatch.setattr(store_workers, "get", meet.after(store_workers.get))
        ra, rb = _at_once(lambda: _register_from(a, key, "198.51.100.30"),
                          lambda: _register_from(b, key, "198.51.100.31"))
        codes = sorted([ra.status_code, rb.status_code])
        assert codes == [200, 503], (ra.text, rb.text)
        refused = ra if ra.status_code == 503 else rb
        assert refused.json()["reason"] == "concurrent_change" and refused.headers["Retry-After"] == "1"
        again = _register_from(b, key, "198.51.100.31")
        assert again.status_code == 200, again.text
    finally:
        a.close()
        b.close()


def _held_in_the_scorer(monkeypatch, a, b) -> list[str]:
    """Replicas `a` and `b` score through a rendezvous (both in the scorer at once, if both get
    there); the returned list names each replica as it scores."""
    meet = Rendezvous()
    scored: list[str] = []
    for name, s in (("a", a), ("b", b)):
        real = s.ctx.tasks.rewards

        def rewards(task, completions, real=real, name=name):
            scored.append(name)
            meet.arrive()
            return real(task, completions)

        monkeypatch.setattr(s.ctx.tasks, "rewards", rewards)
    return scored


def test_copies_of_one_submission_sent_to_two_replicas_at_once_are_scored_once(
        pg_url, tmp_path, tiny_model, monkeypatch):
    """The intake's in-flight guard (429 `submission_in_progress`) is per process: copies of one
    submission (two nonces) reaching two replicas at once both passed the read-only checks and
    were both scored (the scorer sandbox: the expensive part); only the write transaction
    refused one. A claim on the lease row, taken before scoring, lets one replica score it; the
    other is answered 429 at once, and gets the first one's outcome when it asks again."""
    from protocol.messages import KIND_SUBMISSION

    a, b = _replicas(pg_url, tmp_path, tiny_model)
    try:
        a.publish(0)
        w = a.new_worker()
        (lease,) = a.lease(w, 1)
        scored = _held_in_the_scorer(monkeypatch, a, b)
        envs = [s.seal(KIND_SUBMISSION, s.submission(lease), w) for s in (a, b)]   # two nonces
        ra, rb = _at_once(lambda: a.send("/v1/submissions", envs[0]), lambda: b.send("/v1/submissions", envs[1]))
        assert len(scored) == 1, f"scored by {scored}"
        assert sorted([ra.status_code, rb.status_code]) == [200, 429], (ra.text, rb.text)
        assert "submission_in_progress" in (ra.text + rb.text)
        again = b.send("/v1/submissions", b.seal(KIND_SUBMISSION, b.submission(lease), w))
        assert again.status_code == 409 and again.json()["reason"] == "duplicate_submission", again.text
        assert len(scored) == 1
    finally:
        a.close()
        b.close()


def test_one_envelope_sent_to_two_replicas_at_once_is_scored_once(pg_url, tmp_path, tiny_model, monkeypatch):
    """The same signed submission (one nonce: a resend of the same bytes, or a copy an attacker
    fans out to every replica) reaching two replicas at once: the claim let a copy under the
    nonce it already held claim again, so every replica scored it (the sandbox, the expensive
    part, once per replica), and the copies that lost the write were answered 409 `replay`
    instead of the first one's outcome. A copy under the same nonce is now refused 429 like
    any other while the claim is fresh."""
    from protocol.messages import KIND_SUBMISSION

    a, b = _replicas(pg_url, tmp_path, tiny_model)
    try:
        a.publish(0)
        w = a.new_worker()
        (lease,) = a.lease(w, 1)
        scored = _held_in_the_scorer(monkeypatch, a, b)
        env = a.seal(KIND_SUBMISSION, a.submission(lease), w)   # one nonce, sent to both
        ra, rb = _at_once(lambda: a.send("/v1/submissions", env), lambda: b.send("/v1/submissions", env))
        assert len(scored) == 1, f"scored by {scored}"
        assert sorted([ra.status_code, rb.status_code]) == [200, 429], (ra.text, rb.text)
        again = b.send("/v1/submissions", env)   # asked again: the first one's outcome
        assert again.status_code == 409 and again.json()["reason"] == "duplicate_submission", again.text
        assert len(scored) == 1
    finally:
        a.close()
        b.close()


def test_a_submission_whose_scoring_failed_can_be_sent_again_to_another_replica(pg_url, tmp_path, tiny_model,
                                                                                  monkeypatch):
    """The claim taken before scoring is given back when the intake fails after it (here the
    scorer raises): a resend to the other replica is scored and stored, not refused 429 until
    the claim goes stale."""
    from protocol.messages import KIND_SUBMISSION

    a, b = _replicas(pg_url, tmp_path, tiny_model)
    try:
        a.publish(0)
        w = a.new_worker()
        (lease,) = a.lease(w, 1)

        def broken(task, completions):
            raise RuntimeError("scorer sandbox died")

        monkeypatch.setattr(a.ctx.tasks, "rewards", broken)
        r = a.send("/v1/submissions", a.seal(KIND_SUBMISSION, a.submission(lease), w))
        assert r.status_code >= 500, r.text
        r = b.send("/v1/submissions", b.seal(KIND_SUBMISSION, b.submission(lease), w))
        assert r.status_code == 200, r.text
    finally:
        a.close()
        b.close()
def test_the_lease_sizing_counts_read_in_one_statement_on_postgres(pg_url):
    """coordinator.store.swarm_counts on PostgreSQL: the same counts as the rows say
    (tests/unit/coordinator/test_swarm_counts.py runs it on SQLite)."""
    from coordinator.store.db import Database
    from test_swarm_counts import check_counts_match

    db = Database(pg_url)
    db.migrate()
    try:
        check_counts_match(db, seed=1)
    finally:
        db.dispose()


def test_a_restarted_verifier_takes_its_own_claims_back_on_postgres(pg_url, tmp_path, tiny_model):
    """POST /v1/verification/resume on PostgreSQL (its row lock: FOR UPDATE SKIP LOCKED), through
    a replica other than the one that handed the claims out: its own claims back at once,
    another verifier's resume takes nothing (tests/unit/coordinator/test_verifier_resume.py on SQLite)."""
    from protocol.identity import KeyPair
    from test_verifier_resume import _resume

    other = KeyPair.from_seed(b"w" * 32)
    keys = [KeyPair.from_seed(b"v" * 32).public.hex, other.public.hex]
    a, b = _replicas(pg_url, tmp_path, tiny_model, verifier_keys=keys)
    try:
        a.publish(0)
        w = a.new_worker()
        sids = [a.submit(w, lease).json()["submission_id"] for lease in a.lease(w, 3)]
        assert [j.submission_id for j in a.claim(2)] == sids[:2]   # ... and the verifier is killed
        b.clock.advance(5.0)
        assert _resume(b, other) == []
        assert _resume(b, a.verifier) == sids[:2]
        assert _resume(b, a.verifier) == sids[:2]   # resumed again (a second restart): its claims still
    finally:
        a.close()
        b.close()


def test_replicas_of_one_verifier_key_resume_only_their_own_claims_on_postgres(pg_url, tmp_path, tiny_model):
    """ClaimRequest.instance on PostgreSQL: claims handed out by one coordinator replica to two
    verifier processes of one key (and an older verifier naming none), resumed through the other
    coordinator replica: each resume gets exactly its own instance's claims
    (tests/unit/coordinator/test_verifier_replicas.py on SQLite)."""
    from test_verifier_replicas import check_resume_takes_only_the_same_instance

    a, b = _replicas(pg_url, tmp_path, tiny_model)
    try:
        check_resume_takes_only_the_same_instance(a, b)
    finally:
        a.close()
        b.close()


def test_status_ids_outside_the_id_alphabet_are_refused_on_postgres(pg_url, tmp_path, tiny_model):
    """GET /v1/submission-statuses?ids=a%00b was a 500 on PostgreSQL (its text cannot hold NUL):
    now 422, as any id outside the submission id alphabet (test_coordinator_flow.py on SQLite)."""
    from test_coordinator_flow import check_status_ids_outside_the_id_alphabet_are_refused

    s = start_swarm(tmp_path, tiny_model, database_url=pg_url)
    try:
        check_status_ids_outside_the_id_alphabet_are_refused(s)
    finally:
        s.close()
