"""bench/verification.py, section 3: how many cheated groups reach a training batch before a
cheater's identity is burned.

A real coordinator (the test harness's: FastAPI app on loopback, SQLite, default check rates
with the floor at 0.1) and a stand-in verifier that catches every cheat it fully checks and
passes the rest on the cheap checks (a cheat the cheap checks cannot see). Each identity first
earns the check-rate floor (its clean record is set to what ~300 honest submissions give),
then submits; after every verdict the trainer takes whatever the buffer offers, and the
cheated groups among them are counted. Strategies:

    always   cheats on every submission after reaching the floor (issue 17's case)
    p=0.3    cheats on a random 30% of its submissions, honest on the rest

each with `hold_until_checked` on (the default: groups accepted without a full check wait for
the worker's next clean full check) and off (before this change). Printed per identity: mean
and p99 of cheated groups trained, and the submissions it took to ban it.
"""

from __future__ import annotations

import importlib.util
import random
import statistics
import sys
from pathlib import Path

if __name__ == "__main__":   # run as a file: the same as bench/verification.py --sections damage
    import subprocess
    import sys

    sys.exit(subprocess.call([sys.executable, str(Path(__file__).resolve().parent / "verification.py"),
                              "--sections", "damage", *sys.argv[1:]]))

from bench.verification import ROOT

HARNESS = ROOT / "tests" / "unit" / "coordinator" / "coord_harness.py"
MAX_SUBMISSIONS = 400  # per identity; one never banned within them counts as not burned


def _harness():
    spec = importlib.util.spec_from_file_location("coord_harness", HARNESS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["coord_harness"] = mod
    spec.loader.exec_module(mod)
    return mod


def _tiny_model(root: Path) -> Path:
    from swarmrl.modelkit import init_tiny_model

    d = root / "damage-model"
    if not (d / "config.json").exists():
        init_tiny_model(d, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
    return d


def run_identity(s, rng: random.Random, cheat_share: float) -> tuple[int, int, bool]:
    """(cheated groups trained, submissions, banned) of one identity at the check-rate floor."""
    from sqlalchemy import update

    from coordinator.store.schema import workers
    from protocol.messages import BatchResponse

    w = s.new_worker()
    with s.ctx.db.write() as conn:  # the clean record ~300 honest submissions earn: the floor
        conn.execute(update(workers).where(workers.c.worker_id == w.peer_id).values(clean_checks=80))
    cheated: set[str] = set()
    trained = 0
    for n in range(1, MAX_SUBMISSIONS + 1):
        (lease,) = s.lease(w)
        sid = s.submit(w, lease).json()["submission_id"]
        cheat = rng.random() < cheat_share
        if cheat:
            cheated.add(sid)
        (job,) = [j for j in s.claim(64) if j.submission_id == sid]
        if job.full_check and cheat:
            s.verdict(sid, False, full_check=True, reason="proof: caught")
        else:
            s.verdict(sid, True, full_check=job.full_check)
        taken = BatchResponse.model_validate_json(s.batch(max_groups=256).content).groups
        trained += sum(g.submission_id in cheated for g in taken)
        if s.snapshot_worker(w)["status"] == "banned":
            return trained, n, True
    return trained, MAX_SUBMISSIONS, False


def damage_section(root: Path, identities: int, out: dict) -> None:
    h = _harness()
    model = _tiny_model(root)
    rows = []
    print(f"{'strategy':<10}{'holding':>9}{'identities':>11}{'burned':>8}{'trained/identity mean':>23}"
          f"{'p99':>6}{'max':>6}{'submissions to ban (mean)':>27}")
    for share, label in ((1.0, "always"), (0.3, "p=0.3")):
        for hold in (True, False):
            s = h.start_swarm(root / f"damage-{label}-{hold}", model, check_rate={"floor": 0.1},
                              standing={"hold_until_checked": hold})
            try:
                s.publish(0)
                rng = random.Random(1)
                res = [run_identity(s, rng, share) for _ in range(identities)]
            finally:
                s.close()
            trained = sorted(t for t, _, _ in res)
            burned = [r for r in res if r[2]]
            row = {"strategy": label, "hold_until_checked": hold, "identities": len(res), "burned": len(burned),
                   "trained_mean": statistics.fmean(trained), "trained_p99": trained[int(0.99 * (len(trained) - 1))],
                   "trained_max": trained[-1],
                   "per_burned_identity": sum(trained) / max(1, len(burned)),
                   "submissions_to_ban": statistics.fmean(n for _, n, b in res if b) if burned else None}
            rows.append(row)
            print(f"{label:<10}{'on' if hold else 'off':>9}{len(res):>11}{len(burned):>8}"
                  f"{row['trained_mean']:>23.2f}{row['trained_p99']:>6}{row['trained_max']:>6}"
                  f"{(row['submissions_to_ban'] or 0):>27.1f}", flush=True)
    out["damage"] = rows
