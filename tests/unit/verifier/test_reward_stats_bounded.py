"""The reward check's statistics stay small whatever the scorer says: a verdict must fit the
coordinator's verdict route (64 KiB, `coordinator.admission.VERDICT`), or it is refused (413)
and the job, never decided, is claimed and prefilled again and again."""

import json
from types import SimpleNamespace

from protocol.sandbox import ScoreResult
from verifier.checks.reward import check_reward


class EchoingSandbox:
    """A scorer whose every failure quotes the worker's text (cut to the sandbox's 160 characters)."""

    def score(self, kind, items):
        return [ScoreResult(0.0, ("ValueError: " + "\x01" * 200)[:160]) for _ in items]


def test_scoring_failure_reasons_are_bounded_for_a_large_group():
    G = 256  # protocol.messages.MAX_GROUP_SIZE
    job = SimpleNamespace(rewards=[0.0] * G, task_kind="arithmetic", task_answer="4", task_metadata={},
                          submission_id="S1")
    oj = SimpleNamespace(job=job, submission=SimpleNamespace(claimed_rewards=None))
    r = check_reward(oj, ["x"] * G, sandbox=EchoingSandbox())
    assert r.passed  # every completion scored 0 on both sides
    size = len(r.model_dump_json())
    assert size < 16 * 1024, size  # was 234 KB: 256 reasons of 160 control characters, \u-escaped
    assert r.stats["scoring_failure_count"] == G
    assert len(r.stats["scoring_failures"]) < G
    json.loads(r.model_dump_json())
