"""A whole swarm under SIGKILLs of its roles in turn (slow: a few minutes; seed: SWARMRL_CHAOS_SEED).

Coordinator, trainer (with its origin), one relay, one verifier and two honest workers run as
real processes (the demo's launcher, test_swarm's smallest settings, HTTP only). Once versions
flow, a seeded schedule SIGKILLs a role at random moments (each of coordinator, verifier,
trainer, relay and one worker at least once) and starts it again after a short random pause.
Then the workers are stopped, the queue drains, everything stops, and the invariants are
checked from what each role persisted:

- every submission a worker was answered 2xx for (its log) is in the coordinator's database
  and its Parquet archive; every submission has a verdict (none left queued or claimed);
- every group a complete trainer version trained was trained once, is an accepted group, and
  is `consumed` in the buffer; every accepted group is trained, still waiting (buffer or the
  trainer's inbox), or left unused with a recorded cause;
- each restarted trainer resumed from its newest complete version, versions came after its
  last restart, numbers never went back, and one number never named two checkpoints;
- what a worker had pending when the chaos ended was delivered; no worker set work aside;
- the ledger (workers.accepted/rejected/accepted_tokens) equals what the verdicts imply.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import httpx
import pytest

from protocol.messages import PolicyInfo
from swarmrl.modelkit import init_tiny_model, warm_start
from swarmrl.procs import ProcessGroup, child_env
from swarmrl.swarm import SwarmSettings, plan_swarm, start_swarm
from tests.integration.swarm_chaos import (
    acknowledged_submissions,
    archived_ids,
    db_rows,
    kill_schedule,
    manifest_files,
    set_aside_reasons,
    trained_by_version,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

TASKS = {"max_operand": 4}
KILLS = int(os.environ.get("SWARMRL_CHAOS_KILLS", "8"))
SPAN_S = 120.0
SEEDS = [int(s) for s in os.environ.get("SWARMRL_CHAOS_SEED", "1").split(",")]


def _policy(http: httpx.Client, url: str) -> PolicyInfo | None:
    try:
        r = http.get(url + "/v1/policy")
        return PolicyInfo.model_validate_json(r.text) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


class Watch:
    """Polls the coordinator's current policy: the versions it announced, in order, with the
    files each one's manifest names."""

    def __init__(self, http: httpx.Client, url: str):
        self.http, self.url = http, url
        self.seen: list[int] = []
        self.files: dict[int, list[tuple[str, str]]] = {}
        self.conflicts: list[int] = []

    def poll(self) -> int:
        info = _policy(self.http, self.url)
        if info is None or info.version is None:
            return self.seen[-1] if self.seen else 0
        files = sorted((f["path"], f["sha256"]) for f in info.manifest.body["files"])
        if self.files.setdefault(info.version, files) != files:
            self.conflicts.append(info.version)
        if not self.seen or self.seen[-1] != info.version:
            self.seen.append(info.version)
        return info.version


def _args(plan, name: str) -> list[str]:
    role = "worker" if name in plan.worker_names else name
    return [role, "--config", str(plan.configs[name])]


def _sigkill(group: ProcessGroup, name: str) -> None:
    c = group.get(name)
    try:
        os.killpg(c.popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    c.popen.wait(timeout=30)
    group.children.remove(c)


def _restart(group: ProcessGroup, plan, name: str) -> None:
    nice = plan.settings.worker_nice if name in plan.worker_names else 0
    group.start(name, _args(plan, name), env=child_env(threads=1), nice=nice)


def _trainer_resumes(plan) -> list[int]:
    import re

    log = (plan.logs / "trainer.log").read_text(errors="replace")
    return [int(m) for m in re.findall(r"resuming from version (\d+)", log)]


@pytest.mark.parametrize("seed", SEEDS)
def test_swarm_keeps_every_acknowledged_thing_through_sigkills(tmp_path, seed):
    t0 = time.monotonic()
    model = tmp_path / "model"
    init_tiny_model(model, hidden_size=64, num_layers=2, seed=0)
    warm_start(model, max_steps=80, seed=0, task_options=TASKS, lr=3e-3)
    settings = SwarmSettings(seed=seed, honest_workers=2, cheaters=0, group_size=4, max_tokens=4,
                             task_options=TASKS, groups_per_step=4, lr=1e-4, eval_every=0,
                             worker_max_tasks=2, p2p=False, keep_versions=1000,
                             overrides={"trainer": {"keep_checkpoints": 1000}})
    plan = plan_swarm(tmp_path / "run", model, settings)
    schedule = kill_schedule(seed, KILLS, SPAN_S, plan.worker_names)
    trainer_dir = plan.root / "trainer"
    resumed_expected: list[int] = []
    pending_at_end: dict[str, set[str]] = {}
    with ProcessGroup(plan.logs) as group, httpx.Client(timeout=5) as http:
        watch = Watch(http, plan.coordinator_url)
        start_swarm(plan, group)
        wait_until(lambda: watch.poll() >= 2, 240, "version 2", every=1.0, group=group)

        # -- chaos ------------------------------------------------------------------------------
        start = time.monotonic()
        for k in schedule:
            while time.monotonic() - start < k.at_s:
                watch.poll()
                time.sleep(0.5)
            print(f"{time.strftime('%H:%M:%S')} SIGKILL {k.name} (down {k.pause_s} s)", flush=True)
            _sigkill(group, k.name)
            if k.role == "trainer":
                complete = trained_by_version(trainer_dir)
                resumed_expected.append(max(complete))
            time.sleep(k.pause_s)
            _restart(group, plan, k.name)
        last_trainer_restart = max((i for i, k in enumerate(schedule) if k.role == "trainer"), default=None)
        chaos_end_version = watch.poll()

        # -- settle -----------------------------------------------------------------------------
        wait_until(lambda: watch.poll() >= chaos_end_version + 2, 180, "two versions after the chaos",
                   every=1.0, group=group)
        for name in plan.worker_names:
            pending_at_end[name] = {p.name for p in (plan.root / name / "spool" / "pending").glob("*.json")}

        def delivered() -> bool:
            return all(not (plan.root / n / "spool" / "pending" / f).exists()
                       for n, files in pending_at_end.items() for f in files)

        wait_until(delivered, 120, "the workers' pending submissions to be delivered", every=1.0, group=group)
        alive = {c.name: c.alive for c in group.children}
        dead_tails = {c.name: c.tail(5) for c in group.children if not c.alive}
        for name in plan.worker_names:
            group.stop(name)
        db = plan.root / "coordinator" / "coordinator.db"

        def drained() -> bool:
            rows = db_rows(db, "SELECT count(*) FROM submissions WHERE status='queued' "
                               "OR archived=0 OR (status IN ('accepted','rejected') AND verdict_archived=0)")
            return rows[0][0] == 0

        wait_until(drained, 120, "every submission judged and archived", every=1.0, group=group,
                   may_exit=lambda n: n in plan.worker_names)
        final_version = watch.poll()
        group.stop_all()

    # -- invariants -----------------------------------------------------------------------------
    report = f"seed {seed}, schedule {schedule}, took {time.monotonic() - t0:.0f} s"
    print(report)
    assert all(alive.values()), f"roles down before the end (crash loop? banned?): {dead_tails}; {report}"

    subs = {r["submission_id"]: r for r in db_rows(db, "SELECT * FROM submissions")}
    assert subs, report
    acked: dict[str, str] = {}
    for name in plan.worker_names:
        acked.update(acknowledged_submissions(plan.logs / f"{name}.log"))
    assert acked, report
    missing = sorted(set(acked) - set(subs))
    assert not missing, f"acknowledged to a worker, not in the database: {missing}; {report}"
    archived = archived_ids(plan.root / "coordinator" / "archive", "submissions")
    assert not set(subs) - archived, f"not in the archive: {sorted(set(subs) - archived)}; {report}"
    decided = {s for s, r in subs.items() if r["status"] in ("accepted", "rejected")}
    verdicts = archived_ids(plan.root / "coordinator" / "archive", "verdicts")
    assert not decided - verdicts, f"verdicts not archived: {sorted(decided - verdicts)}; {report}"
    undecided = {s: r["status"] for s, r in subs.items() if r["status"] not in ("accepted", "rejected")}
    assert not undecided, f"submissions without a verdict: {undecided}; {report}"

    # training: at most once, and every accepted group accounted for
    by_version = trained_by_version(trainer_dir)
    trained = [sid for v in sorted(by_version) for sid in by_version[v]]
    twice = sorted({s for s in trained if trained.count(s) > 1})
    assert not twice, f"trained more than once: {twice}; {report}"
    for sid in trained:
        r = subs.get(sid)
        assert r is not None and r["status"] == "accepted" and r["buffer"] == "consumed", (sid, dict(r or {}), report)
    inbox = {p.name for p in (trainer_dir / "inbox").glob("*.json")}
    unaccounted = []
    for sid, r in subs.items():
        if r["status"] != "accepted":
            continue
        in_inbox = hashlib.sha256(sid.encode()).hexdigest()[:32] + ".json" in inbox
        ok = (sid in trained or r["buffer"] in ("ready", "held", "handed") or r["unused"]
              or (r["buffer"] == "consumed" and in_inbox))
        if not ok:
            unaccounted.append((sid, r["buffer"], r["unused"], r["policy_version"]))
    assert not unaccounted, f"accepted groups neither trained, waiting nor dropped with a cause: {unaccounted}; {report}"

    # versions
    assert watch.seen == sorted(watch.seen), f"announced versions went back: {watch.seen}; {report}"
    assert not watch.conflicts, f"one version number named two checkpoints: {watch.conflicts}; {report}"
    announced = [r["version"] for r in db_rows(db, "SELECT version FROM policy_versions ORDER BY version")]
    complete = sorted(by_version)
    assert complete == list(range(complete[0], complete[-1] + 1)), f"trainer versions have gaps: {complete}"
    assert set(announced) <= set(complete) | {0}, (announced, complete, report)
    for v in announced:
        origin_manifest = plan.root / "origin" / "versions" / str(v) / ".manifest.json"
        if v in watch.files and origin_manifest.exists():
            assert manifest_files(origin_manifest) == watch.files[v], f"version {v} changed contents; {report}"
    resumes = _trainer_resumes(plan)
    assert resumes == resumed_expected, f"trainer resumed from {resumes}, newest complete {resumed_expected}"
    if last_trainer_restart is not None:
        assert final_version > resumed_expected[-1], f"no version after the trainer's last restart; {report}"

    # workers' spools: nothing set aside, except (a known limit, not the chaos's doing) a group
    # identical to one already stored for the task: a converged policy on a short answer repeats
    # its group when a task comes round again (tasks cycle past the train split), and intake
    # refuses it as a content duplicate (409 duplicate_completion)
    for name in plan.worker_names:
        reasons = set_aside_reasons(plan.root / name)
        other = [r for r in reasons if "duplicate_completion" not in r]
        assert not other, f"{name} set work aside: {other}; {report}"
        if reasons:
            print(f"{name}: {len(reasons)} groups refused as content duplicates")

    # the ledger equals the verdicts
    for w in db_rows(db, "SELECT worker_id, accepted, rejected, accepted_tokens FROM workers"):
        mine = [r for r in subs.values() if r["worker_id"] == w["worker_id"]]
        acc = [r for r in mine if r["status"] == "accepted"]
        want = (len(acc), sum(r["status"] == "rejected" for r in mine), sum(r["n_tokens"] for r in acc))
        assert (w["accepted"], w["rejected"], w["accepted_tokens"]) == want, (dict(w), want, report)
