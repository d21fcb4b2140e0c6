"""The whole swarm as real processes on loopback: the spine of `swarmrl demo`, shortened.

Coordinator, trainer (with its shardcast origin), relay, verifier, two honest workers and one
dishonest worker run as separate processes configured by the same files the demo writes.
The test watches only public interfaces (the coordinator's stats, the relay) and checks the
state transitions of issue 2: versions advance, honest rollouts are accepted, the cheater's
are rejected and it is banned, and every honest worker picks up new versions.
"""

from __future__ import annotations

import httpx

from swarmrl.modelkit import init_tiny_model, warm_start
from swarmrl.procs import ProcessGroup
from swarmrl.swarm import SwarmSettings, plan_swarm, start_swarm
from tests.waiting import wait_until

TASKS = {"max_operand": 4}  # small answers: a few SFT steps give a model that is sometimes right


def _stats(url: str) -> dict:
    try:
        r = httpx.get(url + "/v1/stats", timeout=5)
        return r.json() if r.status_code == 200 else {}
    except httpx.HTTPError:
        return {}


def test_short_swarm_advances_versions_accepts_honest_work_and_bans_the_cheater(tmp_path):
    model = tmp_path / "model"
    init_tiny_model(model, hidden_size=64, num_layers=2, seed=0)
    warm_start(model, max_steps=80, seed=0, task_options=TASKS, lr=3e-3)
    settings = SwarmSettings(honest_workers=2, cheaters=1, group_size=4, max_tokens=4, task_options=TASKS,
                             groups_per_step=4, lr=1e-4, eval_every=0, worker_max_tasks=2)
    plan = plan_swarm(tmp_path / "run", model, settings)
    names = {}
    with ProcessGroup(plan.logs) as group:
        start_swarm(plan, group)

        def peer_names() -> dict:
            from protocol.identity import KeyPair

            for n in plan.worker_names + plan.cheater_names:
                key = plan.root / n / "worker.key"
                if key.exists():
                    names[KeyPair.load(key).peer_id] = n
            return names

        def by_name(st: dict) -> dict:
            peer_names()
            return {names.get(w["worker_id"], w["worker_id"]): w for w in st.get("workers", [])}

        def advanced():
            st = _stats(plan.coordinator_url)
            w = by_name(st)
            version = (st.get("policy") or {}).get("current_version") or 0
            honest = [w.get(n, {}) for n in plan.worker_names]
            cheater = w.get(plan.cheater_names[0], {})
            ok = (version >= 4 and all(h.get("accepted", 0) > 0 and (h.get("policy_version") or 0) >= 3
                                       for h in honest) and cheater.get("status") == "banned")
            return st if ok else None

        st = wait_until(advanced, 420, "versions >= 4, honest workers on version >= 3, cheater banned", every=1.0,
                        group=group, may_exit=lambda name: name.startswith("cheater"))
        workers = by_name(st)
        for n in plan.worker_names:
            assert workers[n]["status"] == "active" and workers[n]["rejected"] == 0
            assert workers[n]["accepted"] > 0
        cheat = workers[plan.cheater_names[0]]
        # Only accepted groups enter the training buffer, so none of the cheater's did.
        assert cheat["rejected"] >= 1 and cheat["accepted"] == 0
        assert cheat["ban_reason"]
        # Versions kept coming from the trainer through the relay: the relay holds the newest.
        relay_versions = httpx.get(plan.relay_url + "/v1/versions", timeout=5).json()["versions"]
        assert max(relay_versions) >= 4
