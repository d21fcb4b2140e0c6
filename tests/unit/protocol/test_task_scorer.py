"""An operator's own scorer: the task option `scorer` and the modules a process allows.

`get_source(kind, options={"scorer": ref})` gives tasks that carry `ref` as their kind, so the
coordinator, the verifier and the audit all score with it; `SWARMRL_SCORER_MODULES` is what
lets a process's shared sandbox run a `<module>:<function>` scorer at all (a real process here:
the shared sandbox is one per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.errors import MessageError
from protocol.sandbox import SCORER_MODULES_ENV, scorer_modules
from protocol.tasks import get_source
from tests.hostile.scoring import EVAL_SCORER

ROOT = Path(__file__).resolve().parents[3]


def test_the_scorer_option_makes_every_task_carry_that_scorer():
    plain = get_source("arithmetic", seed=3, options={"max_operand": 9})
    rescored = get_source("arithmetic", seed=3, options={"max_operand": 9, "scorer": EVAL_SCORER})
    for split in ("train", "eval"):
        assert rescored.size(split) == plain.size(split)
        for i in (0, 1, 17):
            a, b = plain.task(split, i), rescored.task(split, i)
            assert (b.id, b.prompt, b.answer) == (a.id, a.prompt, a.answer)
            assert a.kind == "arithmetic" and b.kind == EVAL_SCORER
    assert rescored.kind == EVAL_SCORER


@pytest.mark.parametrize("scorer", ["no such scorer", 3, "reasoning gym:x"])
def test_a_scorer_option_that_names_no_scorer_is_a_config_error(scorer):
    with pytest.raises(MessageError, match="scorer"):
        get_source("arithmetic", options={"scorer": scorer})


def test_scorer_modules_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(SCORER_MODULES_ENV, " tests.hostile.scoring, mypkg.rewards ,,")
    assert scorer_modules() == ("tests.hostile.scoring", "mypkg.rewards")
    monkeypatch.delenv(SCORER_MODULES_ENV)
    assert scorer_modules() == ()


SCORE = f"""
import json
from protocol.errors import MessageError
from protocol.sandbox import ScoreItem, shared
try:
    print(json.dumps([r.reward for r in shared().score({EVAL_SCORER!r}, [ScoreItem("42", "42"), ScoreItem("6*7", "42")])]))
except MessageError as exc:
    print(json.dumps(str(exc)))
"""


@pytest.mark.parametrize("allowed", [True, False])
def test_a_process_runs_a_module_scorer_only_where_its_module_is_allowed(allowed):
    env = {k: v for k, v in os.environ.items() if k != SCORER_MODULES_ENV}
    if allowed:
        env[SCORER_MODULES_ENV] = "tests.hostile.scoring"
    out = subprocess.run([sys.executable, "-c", SCORE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if allowed:
        assert got == [1.0, 0.1]
    else:
        assert "was not told to allow" in got
