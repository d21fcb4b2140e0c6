"""A run on real tasks: a JSONL source, a plugin scorer, the BPE test model with its chat template.

Issue 21 and issue 20 item 6, as real processes on loopback (coordinator, trainer with its
origin, relay, verifier, two honest workers, one cheater), configured by the files the demo
writes with the task source swapped for a generated JSONL file and the scorer for
`tests.taskplugin:tagged_sum` (which needs each task's metadata, so a reward of 1 shows the
metadata reached the scorer at intake and in the verifier's reward check):
- versions advance from lease to verified group to trainer step, honest rollouts are accepted
  with rewards above 0, the cheater is banned;
- the trainer's held-out evaluation of version 0 is the chat-template accuracy, the one the
  leases' prompts are built with (`protocol.lm.encode_task`), not the plain-text one;
- a trainer whose data file differs, and a verifier whose scorer plugin differs, from the
  coordinator's refuse to start, naming the part of the task digest that differs.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from swarmrl.demo import _peer_names, _worker_rows
from swarmrl.modelkit import init_model, warm_start
from swarmrl.procs import ProcessGroup, child_env
from swarmrl.swarm import SwarmSettings, plan_swarm, start_swarm
from tests.integration.test_swarm import _stats
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SCORER = "tests.taskplugin:tagged_sum"
MAX_TOKENS = 8


def _write_tasks(folder: Path) -> dict:
    folder.mkdir(parents=True)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "metadata": {"a": a, "b": b}}
            for a in range(5) for b in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[5:]))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]))
    return {"path": str(folder / "train.jsonl"), "eval_path": str(folder / "eval.jsonl"), "scorer": SCORER}


def _eval_accuracy(model_dir: Path, options: dict, chat: bool) -> float:
    from protocol.lm import load_model, load_tokenizer
    from protocol.tasks import get_source
    from trainer.evaluate import accuracy

    source = get_source("jsonl", seed=0, options=options)
    return accuracy(load_model(str(model_dir)), load_tokenizer(str(model_dir)), source, num_tasks=5,
                    max_new_tokens=MAX_TOKENS, chat=chat)


@pytest.mark.slow
def test_jsonl_tasks_with_a_plugin_scorer_on_the_bpe_model_from_lease_to_trainer_step(tmp_path):
    env = {"SWARMRL_SCORER_MODULES": "tests.taskplugin",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    os.environ["SWARMRL_SCORER_MODULES"] = "tests.taskplugin"  # this process scores the evaluation too
    options = _write_tasks(tmp_path / "data")
    model = tmp_path / "model"
    init_model(model, arch="qwen2", tokenizer="bpe", vocab_size=320, hidden_size=64, num_layers=2, num_heads=2,
               num_kv_heads=1)
    warm_start(model, max_steps=150, seed=0, task_kind="jsonl", task_options=options, lr=3e-3, chat=True,
               answer_format="<answer>{answer}</answer>", max_new_tokens=MAX_TOKENS, warmup_steps=10)
    chat_acc, plain_acc = _eval_accuracy(model, options, True), _eval_accuracy(model, options, False)
    settings = SwarmSettings(honest_workers=2, cheaters=1, group_size=4, max_tokens=MAX_TOKENS, task_kind="jsonl",
                             task_options=options, chat_template=True, groups_per_step=4, lr=1e-4, eval_every=0,
                             eval_tasks=5, worker_max_tasks=2, env=env)
    plan = plan_swarm(tmp_path / "run", model, settings)
    with ProcessGroup(plan.logs) as group:
        start_swarm(plan, group)

        def by_name(st: dict) -> dict:
            return dict(_worker_rows(st, _peer_names(plan)))  # the demo's own view of who is who

        def advanced():
            st = _stats(plan.coordinator_url)
            w = by_name(st)
            version = (st.get("policy") or {}).get("current_version") or 0
            honest, cheater = [w.get(n, {}) for n in plan.worker_names], w.get(plan.cheater_names[0], {})
            ok = version >= 3 and all(h.get("accepted", 0) > 0 for h in honest) and cheater.get("status") == "banned"
            return st if ok else None

        st = wait_until(advanced, 600, "versions >= 3, honest work accepted, cheater banned", every=1.0,
                        group=group, may_exit=lambda name: name.startswith("cheater"))
        workers = by_name(st)
        for n in plan.worker_names:
            assert workers[n]["rejected"] == 0 and workers[n]["accepted"] > 0
        assert workers[plan.cheater_names[0]]["accepted"] == 0
        # the plugin scorer, fed each task's metadata, rewarded honest work at intake and in the verifier
        rewards = [r["mean_reward"] for r in st.get("rewards_by_version") or []]
        assert rewards and max(rewards) > 0
        run = httpx.get(plan.coordinator_url + "/v1/run", timeout=5).json()
        assert run["tasks"]["chat_template"] is True and run["task_scorer"] == SCORER
        assert set(run["task_digests"]) == {"spec", "tasks_code", "scorer", "source", "data"}
        # the trainer evaluated version 0 with the run's prompt format (the chat template)
        rows = list(csv.DictReader(open(plan.root / "trainer" / "eval.csv")))
        assert float(rows[0]["greedy_accuracy"]) == pytest.approx(chat_acc, abs=1e-3)
        assert chat_acc > plain_acc

        group.stop("trainer")
        # a trainer with other data bytes, and a verifier with another scorer plugin, refuse to start
        data = Path(options["path"])
        data.write_text(data.read_text() + json.dumps({"prompt": "9+9=", "answer": "18",
                                                       "metadata": {"a": 9, "b": 9}}) + "\n")
        cenv = child_env(extra=env)
        out = subprocess.run([sys.executable, "-m", "swarmrl", "trainer", "--config", str(plan.configs["trainer"]),
                              "--set", f"data_dir={tmp_path / 'trainer2'}"], cwd=ROOT, env=cenv,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode != 0 and "differs from the run's in data" in out.stderr, out.stderr[-2000:]
        other = tmp_path / "other" / "tests"
        other.mkdir(parents=True)
        (other / "__init__.py").write_text("")
        (other / "taskplugin.py").write_text((ROOT / "tests" / "taskplugin.py").read_text() + "\n# another version\n")
        venv = dict(cenv, PYTHONPATH=os.pathsep.join([str(tmp_path / "other"), str(ROOT)]))
        out = subprocess.run([sys.executable, "-m", "swarmrl", "verifier", "--config", str(plan.configs["verifier"]),
                              "--set", f"data_dir={tmp_path / 'verifier2'}", "--set", "port=0"],
                             cwd=tmp_path, env=venv, capture_output=True, text=True, timeout=180)
        assert out.returncode != 0 and "differs from the run's in scorer" in out.stderr, out.stderr[-2000:]
