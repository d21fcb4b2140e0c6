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
