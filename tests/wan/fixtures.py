"""What the WAN integration tests (tests/integration/test_wan_*.py) share.

    net = wan_net(topology, tmp_path)       # skips the test, with the reason, where the harness cannot run
    model = tiny_model(tmp_path / "model")  # the test swarm's warm-started tiny model
    SETTINGS                                # the swarm of tests/integration/test_swarm.py, shortened

The skip happens when the test runs, not at collection, so the default suite (which leaves the
`slow` WAN tests out) never creates a namespace.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmrl.swarm import SwarmSettings
from tests.wan.netns import Net, available
from tests.wan.topology import Topology

TASKS = {"max_operand": 4}
SETTINGS = SwarmSettings(honest_workers=2, cheaters=0, group_size=4, max_tokens=4, task_options=TASKS,
                         groups_per_step=4, lr=1e-4, eval_every=0, worker_max_tasks=2)


def wan_net(topology: Topology, tmp_path: Path) -> Net:
    ok, why = available()
    if not ok:
        pytest.skip(f"WAN harness unavailable: {why}")
    return Net(topology, workdir=tmp_path / "net")


def tiny_model(directory: Path) -> Path:
    from swarmrl.modelkit import init_tiny_model, warm_start

    init_tiny_model(directory, hidden_size=64, num_layers=2, seed=0)
    warm_start(directory, max_steps=80, seed=0, task_options=TASKS, lr=3e-3)
    return directory


def by_worker(wan, st: dict) -> dict:
    """The coordinator's per-worker stats keyed by the plan's worker names."""
    from protocol.identity import KeyPair

    names = {}
    for n in wan.plan.worker_names + wan.plan.cheater_names:
        key = wan.plan.root / n / "worker.key"
        if key.exists():
            names[KeyPair.load(key).peer_id] = n
    return {names.get(w["worker_id"], w["worker_id"]): w for w in st.get("workers", [])}


def worker_status(wan, name: str) -> dict | None:
    """The worker's own GET /status (asked inside its namespace), or None while it is not up."""
    import httpx

    from tests.wan.netns import InNamespace

    port_file = wan.plan.root / name / "status.port"
    if not port_file.exists():
        return None
    probe = InNamespace(wan.net, wan.site_of[name])
    try:
        r = probe.call(lambda: httpx.get(f"http://127.0.0.1:{port_file.read_text().strip()}/status", timeout=5))
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    finally:
        probe.close()


def spool_counts(wan, name: str) -> dict[str, int]:
    """Files per folder of a worker's submission spool (worker.spool)."""
    root = wan.plan.root / name / "spool"
    if not root.exists():
        return {}
    return {d.name: sum(1 for _ in d.iterdir()) for d in root.iterdir() if d.is_dir()}


def spooled_leases(wan, name: str, folder: str = "pending") -> set[str]:
    """Lease ids of the entries in one folder of a worker's spool (worker.spool: one file per lease)."""
    d = wan.plan.root / name / "spool" / folder
    return {p.name[:-len(".json")] for p in d.glob("*.json")} if d.exists() else set()


def stored_leases(wan, lease_ids: set[str]) -> dict[str, int]:
    """How many submissions the coordinator's database (SQLite, read-only) holds per lease id."""
    import sqlite3

    db = wan.plan.root / "coordinator" / "coordinator.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        rows = dict(conn.execute(
            f"SELECT lease_id, COUNT(*) FROM submissions WHERE lease_id IN ({','.join('?' * len(lease_ids))}) "
            "GROUP BY lease_id", sorted(lease_ids)).fetchall()) if lease_ids else {}
    return {lid: rows.get(lid, 0) for lid in lease_ids}


def dump(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))
