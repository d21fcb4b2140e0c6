"""The trainer's held-out evaluation meets a task it cannot evaluate (the source refuses it: its
data over `protocol.messages.MAX_TASK_DATA_BYTES`; or its prompt is empty): the coordinator
checks only the first `CONTEXT_CHECK_TASKS` of the eval split at start-up, and a plugin source
may fail on any one. Before, `trainer.evaluate.accuracy` raised the source's MessageError out of
`TrainerLoop.maybe_evaluate`; now the task is left out, with one error line per evaluation, and
the accuracy is the mean over the tasks evaluated."""

from __future__ import annotations

import logging
from dataclasses import replace

from protocol.messages import MAX_TASK_DATA_BYTES
from protocol.tasks import Bounded, get_source


class Spoiled:
    def __init__(self, source, bad: dict[int, str]):
        self.source, self.bad, self.kind = source, bad, source.kind

    def size(self, split: str) -> int:
        return self.source.size(split)

    def task(self, split: str, index: int):
        t = self.source.task(split, index)
        how = self.bad.get(index) if split == "eval" else None
        if how == "data":
            return replace(t, metadata={"tests": "x" * MAX_TASK_DATA_BYTES})
        if how == "prompt":
            return replace(t, prompt="", system="")
        return t


def test_an_eval_task_that_cannot_be_evaluated_is_left_out_and_logged(tiny_model, tiny_model_dir, caplog):
    from protocol.lm import load_tokenizer
    from trainer.evaluate import accuracy

    tok = load_tokenizer(str(tiny_model_dir))
    good = get_source("arithmetic", seed=0)
    spoiled = Bounded(Spoiled(good, {1: "data", 2: "prompt"}))
    with caplog.at_level(logging.ERROR, logger="trainer.evaluate"):
        got = accuracy(tiny_model, tok, spoiled, num_tasks=4, max_new_tokens=2)
    assert 0.0 <= got <= 1.0
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "2 of the first 4" in line and good.task("eval", 1).id in line, line

    class Good:   # eval tasks 0 and 3 of the same source: what was evaluated
        kind = good.kind

        def size(self, split):
            return 2

        def task(self, split, index):
            return good.task(split, (0, 3)[index])

    assert got == accuracy(tiny_model, tok, Good(), num_tasks=2, max_new_tokens=2)


def test_the_evaluation_counts_the_tasks_it_evaluated(tiny_model, tiny_model_dir):
    """`EvalResult.num_tasks` (the eval CSV, the report to the coordinator, the log line) is the
    number of tasks evaluated; it counted those asked for, bad ones included."""
    from protocol.lm import load_tokenizer
    from trainer.evaluate import evaluate

    tok = load_tokenizer(str(tiny_model_dir))
    spoiled = Bounded(Spoiled(get_source("arithmetic", seed=0), {1: "data", 2: "prompt"}))
    res = evaluate(tiny_model, tok, spoiled, version=3, step=3, wall_s=0.0, num_tasks=4, max_new_tokens=2,
                   sampled=True, temperature=1.0)
    assert res is not None and res.num_tasks == 2


def test_a_version_with_no_task_that_can_be_evaluated_is_not_reported(tiny_model, tiny_model_dir, caplog):
    """Every task asked for refused: no accuracy (an accuracy over nothing would read as 0%, and
    the report to the coordinator, which needs at least one task, raised out of the loop)."""
    from protocol.lm import load_tokenizer
    from trainer.evaluate import evaluate

    tok = load_tokenizer(str(tiny_model_dir))
    spoiled = Bounded(Spoiled(get_source("arithmetic", seed=0), {i: "prompt" for i in range(3)}))
    with caplog.at_level(logging.ERROR, logger="trainer.evaluate"):
        res = evaluate(tiny_model, tok, spoiled, version=3, step=3, wall_s=0.0, num_tasks=3, max_new_tokens=2,
                       sampled=False, temperature=1.0)
    assert res is None
    assert any("version 3 is not evaluated" in r.getMessage() for r in caplog.records)
