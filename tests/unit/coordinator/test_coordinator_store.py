"""The store: migrations match the schema, state survives reopening, the archive is readable."""

import json
from pathlib import Path

import duckdb
import pandas as pd
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from coordinator.archive import Archiver
from coordinator.store.db import Database
from coordinator.store.schema import metadata
from protocol.envelope import AUDIENCE_COORDINATOR, Envelope, open_envelope
from protocol.messages import KIND_SUBMISSION, KIND_VERDICT, Submission, Verdict


def test_migrations_create_exactly_the_schema(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'm.db'}")
    db.migrate()
    db.migrate()  # idempotent
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    db.dispose()


def test_state_survives_a_restart_of_the_coordinator(swarm, tmp_path, tiny_model):
    swarm.publish(0)
    w = swarm.new_worker()
    leases = swarm.lease(w, 2)
    sid = swarm.submit(w, leases[0]).json()["submission_id"]
    swarm.claim()
    swarm.verdict(sid, True)
    before = swarm.snapshot()
    swarm.close()
    from coord_harness import start_swarm

    again = start_swarm(tmp_path, tiny_model)
    try:
        assert again.snapshot() == before
        assert again.submit(w, leases[1]).status_code == 200  # the open lease is still valid
        assert again.submit(w, leases[0]).status_code == 409  # and the submitted one still submitted
    finally:
        again.close()


def test_archive_holds_submissions_and_verdicts_by_version_readable_with_duckdb(swarm, tmp_path):
    swarm.publish(0)
    w = swarm.new_worker()
    (l0,) = swarm.lease(w)
    swarm.publish(1)
    (l1, l2) = swarm.lease(w, 2)
    s0 = swarm.submit(w, l0).json()["submission_id"]
    s1 = swarm.submit(w, l1, version=1).json()["submission_id"]
    s2 = swarm.submit(w, l2, version=1).json()["submission_id"]
    swarm.claim()
    swarm.verdict(s0, True)
    root = tmp_path / "archive"
    arch = Archiver(swarm.ctx.db, root, swarm.ctx.metrics, batch_rows=2)
    assert arch.flush() == {"submissions": 3, "verdicts": 1}
    assert arch.flush() == {"submissions": 0, "verdicts": 0}
    swarm.verdict(s1, False, reason="proof check failed")
    assert arch.flush() == {"submissions": 0, "verdicts": 1}
    assert sorted(p.name for p in (root / "submissions").iterdir()) == ["v000000", "v000001"]

    subs = duckdb.sql(f"SELECT * FROM read_parquet('{root}/submissions/*/*.parquet') ORDER BY received_at").df()
    assert list(subs.submission_id) == [s0, s1, s2] and list(subs.policy_version) == [0, 1, 1]
    assert list(subs.rewards[0]) == json.loads(swarm.snapshot_submission(s0)["rewards"])
    # the signed envelopes are there as received: an auditor can re-check the signatures
    env = Envelope.model_validate_json(subs.submission_envelope[1])
    body = open_envelope(env, KIND_SUBMISSION, Submission, max_skew_s=None, run_id=swarm.cfg.run_id,
                         audience=AUDIENCE_COORDINATOR).body
    assert body.lease_id == l1.lease_id and env.signer == w.public.hex
    assert json.loads(subs.lease_envelope[1])["body"]["lease_id"] == l1.lease_id

    verdicts = pd.read_parquet(sorted((root / "verdicts").rglob("*.parquet")))
    assert sorted(zip(verdicts.submission_id, verdicts.status)) == sorted([(s0, "accepted"), (s1, "rejected")])
    rej = verdicts[verdicts.status == "rejected"].iloc[0]
    v = open_envelope(Envelope.model_validate_json(rej.verdict_envelope), KIND_VERDICT, Verdict, max_skew_s=None,
                      run_id=swarm.cfg.run_id, audience=AUDIENCE_COORDINATOR)
    assert v.signer.hex == swarm.verifier.public.hex and rej.reason == "proof check failed"
    assert not list(root.rglob(".*.tmp"))


def test_archive_files_are_durable_before_their_rows_are_marked_archived(swarm, tmp_path, monkeypatch):
    """Each Parquet rename is followed by an fsync of its folder (and of the parents of folders
    made for it), all before the rows are marked archived: a power loss cannot leave rows marked
    archived whose file's directory entry was never written."""
    from coordinator.store import submissions
    from protocol import durable

    events: list[tuple[str, object]] = []
    real_fsync, real_mark = durable.fsync_dir, submissions.mark_archived

    def fsync_dir(path):
        events.append(("fsync", (Path(path), sorted(q.name for q in Path(path).iterdir()))))
        real_fsync(path)

    def mark_archived(conn, ids, column):
        events.append(("mark", column))
        real_mark(conn, ids, column)

    monkeypatch.setattr(durable, "fsync_dir", fsync_dir)
    monkeypatch.setattr(submissions, "mark_archived", mark_archived)
    swarm.publish(0)
    w = swarm.new_worker()
    (lease,) = swarm.lease(w)
    swarm.submit(w, lease)
    root = tmp_path / "archive"
    assert Archiver(swarm.ctx.db, root).flush()["submissions"] == 1
    (part,) = (root / "submissions" / "v000000").glob("*.parquet")
    synced = [e[1] for e in events[:events.index(("mark", "archived"))] if e[0] == "fsync"]
    assert (part.parent, [part.name]) in synced                       # the rename itself
    assert {d for d, _ in synced} >= {part.parent, root / "submissions", root, root.parent}  # the new folders


def _old_database(tmp_path):
    """(a Database with no schema yet, the Alembic config that migrates it)."""
    from alembic.config import Config

    from coordinator.store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return Database(f"sqlite:///{tmp_path / 'old.db'}"), cfg


def test_migration_0002_moves_envelopes_out_of_submissions(tmp_path):
    from alembic import command
    from sqlalchemy import text

    db, cfg = _old_database(tmp_path)
    env = json.dumps({"kind": "submission", "body": {"completions": [
        {"token_ids": [5, 6, 1], "finish_reason": "eos", "proof": "AA=="},
        {"token_ids": [7, 7, 7, 7], "finish_reason": "length", "proof": "AA=="}]}})
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text(
            "INSERT INTO submissions (submission_id, lease_id, worker_id, task_id, task_index, policy_version, status,"
            " full_check, rewards, advantages, reward_mean, n_tokens, content_hash, received_at, envelope) VALUES"
            " ('s-1', 'l-1', 'w', 't', 0, 0, 'queued', 1, '[0.0, 1.0]', '[-1.0, 1.0]', 0.5, 7, 'h', 1.0, :e)"),
            {"e": env})
        conn.commit()
        command.upgrade(cfg, "head")
        conn.commit()
        row = conn.execute(text("SELECT envelope, group_json FROM submission_payloads")).one()
        cols = [r[1] for r in conn.execute(text("PRAGMA table_info(submissions)"))]
    assert row[0] == env and "envelope" not in cols
    assert json.loads(row[1]) == {"completions": [[5, 6, 1], [7, 7, 7, 7]], "finish_reasons": ["eos", "length"]}
    db.dispose()


def test_migration_0006_keeps_a_leases_terms_only_in_its_envelope(tmp_path):
    """The row's copies of the lease's terms go (intake reads the signed lease); a downgrade
    takes them back from the envelope."""
    from alembic import command
    from sqlalchemy import text

    db, cfg = _old_database(tmp_path)
    env = json.dumps({"kind": "lease", "body": {"min_policy_version": 3, "max_policy_version": 5, "seeds": [1, 2],
                                                "sampling": {"temperature": 1.0, "max_tokens": 8}, "eos_token_id": 1}})
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        conn.execute(text(
            "INSERT INTO leases (lease_id, worker_id, task_index, task_id, status, issued_at, expires_at, min_version,"
            " max_version, n_seeds, max_tokens, eos_token_id, envelope) VALUES"
            " ('l-1', 'w', 0, 't', 'active', 1.0, 2.0, 3, 5, 2, 8, 1, :e)"), {"e": env})
        conn.commit()
        command.upgrade(cfg, "head")
        conn.commit()
        cols = [r[1] for r in conn.execute(text("PRAGMA table_info(leases)"))]
        kept = conn.execute(text("SELECT status, expires_at, envelope FROM leases")).one()
        command.downgrade(cfg, "0005")
        conn.commit()
        back = conn.execute(text("SELECT min_version, max_version, n_seeds, max_tokens, eos_token_id FROM leases")).one()
    assert not {"min_version", "max_version", "n_seeds", "max_tokens", "eos_token_id"} & set(cols)
    assert tuple(kept) == ("active", 2.0, env) and tuple(back) == (3, 5, 2, 8, 1)
    db.dispose()


def test_finished_archived_envelopes_leave_the_database_after_the_retention(swarm, tmp_path):
    from sqlalchemy import select

    from coordinator.service import upkeep
    from coordinator.store.schema import submission_payloads

    swarm.publish(0)
    honest, cheat = swarm.new_worker(), swarm.new_worker()
    a = [swarm.submit(honest, lease).json()["submission_id"] for lease in swarm.lease(honest, 2)]
    b = [swarm.submit(cheat, lease).json()["submission_id"] for lease in swarm.lease(cheat, 2)]
    swarm.claim()
    swarm.verdict(a[0], True)
    swarm.verdict(a[1], True)
    swarm.verdict(b[0], False)          # the cheater is banned; b[1] is dropped unjudged
    assert [g["submission_id"] for g in swarm.batch(max_groups=1).json()["groups"]] == [a[0]]
    assert swarm.ack([a[0]]).json() == {"acknowledged": 1}  # the trainer holds it: consumed
    Archiver(swarm.ctx.db, tmp_path / "archive").flush()

    def kept():
        with swarm.ctx.db.read() as conn:
            return set(conn.execute(select(submission_payloads.c.submission_id)).scalars())

    swarm.clock.advance(swarm.cfg.payload_retention_s - 10)
    assert upkeep.sweep(swarm.ctx)["payloads_pruned"] == 0
    swarm.clock.advance(20)
    assert upkeep.sweep(swarm.ctx)["payloads_pruned"] == 3
    assert kept() == {a[1]}             # accepted but not trained on yet: still needed
    assert [g["submission_id"] for g in swarm.batch().json()["groups"]] == [a[1]]


def test_background_checkpoint_moves_the_wal_into_the_database_while_writers_go_on(tmp_path):
    import threading

    from coordinator.store import meta

    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    db.migrate()
    for i in range(200):
        with db.write() as conn:
            meta.put(conn, f"k{i}", "x" * 4000)
    wal = tmp_path / "c.db-wal"
    before = (tmp_path / "c.db").stat().st_size
    t = threading.Thread(target=db.checkpoint)
    t.start()
    with db.write() as conn:  # a writer is not blocked by a passive checkpoint
        meta.put(conn, "during", "y")
    t.join(timeout=30)
    assert (tmp_path / "c.db").stat().st_size > before + 200 * 4000 * 0.9
    assert wal.exists()
    with db.read() as conn:
        assert meta.get(conn, "during") == "y" and meta.get(conn, "k199") == "x" * 4000
    db.dispose()
