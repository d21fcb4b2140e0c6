"""The scorer sandbox sends a batch's task (answer and metadata) to its child once, not once per
completion (`protocol.sandbox.pool.batch_payload`, `protocol.sandbox.child`).

Every caller scores one submission's completions of one task per call (the coordinator's
intake, the verifier's reward check, `swarmrl audit reverify`). Sent per item, a task with
MAX_TASK_DATA_BYTES (512 KiB) of metadata made a batch of 256 completions a 128 MiB request:
1.1-1.7 s to score on this machine, and at 1 MiB of metadata every completion scored 0 after the
batch timeout (20 s). Now the same batches take 0.01-0.02 s. Items of different tasks still
travel with their own, and each item gets a copy of the metadata of its own: a scorer that
changes it cannot change another completion's reward."""

from __future__ import annotations

import time

import pytest

from protocol.messages import MAX_TASK_DATA_BYTES
from protocol.sandbox import Limits, Sandbox, ScoreItem
from protocol.sandbox.pool import batch_payload
from tests.hostile.scoring import EVAL_SCORER

LIMITS = Limits(item_timeout_s=1.5, batch_timeout_s=6.0, memory_mb=256, spares=1, max_children=2)


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(LIMITS, allow_modules=("tests.hostile.scoring",)).start(warm=(EVAL_SCORER, "arithmetic"))
    yield sb
    sb.close()


@pytest.mark.parametrize("size", [MAX_TASK_DATA_BYTES, 2 * MAX_TASK_DATA_BYTES])
def test_a_batch_of_256_completions_of_a_task_with_large_metadata_is_scored(sandbox, size):
    meta = {"tests": "x" * size}
    items = [ScoreItem("42" if i % 2 else "41", "42", meta) for i in range(256)]
    t0 = time.monotonic()
    got = sandbox.score("arithmetic", items)
    took = time.monotonic() - t0
    assert [r.reward for r in got] == [float(i % 2) for i in range(256)], {r.reason for r in got}
    assert took < LIMITS.batch_timeout_s / 2, took


def test_the_task_is_sent_once_when_the_items_share_it_and_per_item_when_they_do_not():
    meta = {"tests": "x" * 1000}
    task, items = batch_payload([ScoreItem(str(i), "42", meta) for i in range(3)])
    assert task == ["42", meta] and items == ["0", "1", "2"]
    task, items = batch_payload([ScoreItem("a", "42", {"k": [1]}), ScoreItem("b", "42", {"k": [1]})])
    assert task == ["42", {"k": [1]}] and items == ["a", "b"]   # equal, not the same object
    task, items = batch_payload([ScoreItem("a", "42", meta), ScoreItem("b", "43", meta)])
    assert task is None and items == [["a", "42", meta], ["b", "43", meta]]


def test_items_of_different_tasks_are_scored_against_their_own(sandbox):
    got = sandbox.score("arithmetic", [ScoreItem("42", "42"), ScoreItem("42", "43"), ScoreItem("43", "43", {"a": 1})])
    assert [r.reward for r in got] == [1.0, 0.0, 1.0]


def test_a_scorer_that_changes_the_metadata_does_not_change_the_next_items_reward(sandbox):
    """The hostile eval scorer sees `metadata` among its locals: each completion appends to it
    and answers how long the list is. With one dict shared by the batch the second would
    answer 2."""
    text = "metadata.setdefault('seen', []).append(0) or len(metadata['seen'])"
    got = sandbox.score(EVAL_SCORER, [ScoreItem(text, "1", {"seen": []}) for _ in range(3)])
    assert [r.reward for r in got] == [0.1, 0.1, 0.1], [r.reason for r in got]
