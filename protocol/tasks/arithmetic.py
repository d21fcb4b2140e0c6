"""The demo's task: sums and differences of two small numbers, answered in digits.

Prompt "37+45=", answer "82"; "12-30=" gives "-18". Reward 1.0 for the exact answer
(surrounding whitespace ignored), else 0.0. All (a, op, b) triples are shuffled once by
the seed; the first `eval_size` form the held-out split, the rest the training split.

Operands are zero-padded to the width of `max_operand` by default ("07+45="; `pad=False`
gives "7+45="): with every digit at a fixed position a ~0.1M-parameter model learns the
carry within a few hundred supervised steps instead of thousands, which is what lets the
demo warm-start in seconds and then improve visibly by RL (measured by bench/learning.py).
"""

from __future__ import annotations

import random

from protocol.tasks import Task, register


class ArithmeticTasks:
    kind = "arithmetic"

    def __init__(self, seed: int = 0, max_operand: int = 99, ops: str = "+-", eval_size: int = 500,
                 pad: bool = True):
        if max_operand < 1 or not ops or set(ops) - set("+-"):
            raise ValueError("max_operand must be >= 1 and ops a subset of '+-'")
        triples = [(a, op, b) for op in ops for a in range(max_operand + 1) for b in range(max_operand + 1)]
        random.Random(seed).shuffle(triples)
        eval_size = min(eval_size, len(triples) // 5)
        self._splits = {"eval": triples[:eval_size], "train": triples[eval_size:]}
        self.seed = seed
        self.width = len(str(max_operand)) if pad else 0

    def size(self, split: str) -> int:
        return len(self._splits[split])

    def task(self, split: str, index: int) -> Task:
        items = self._splits[split]
        a, op, b = items[index % len(items)]
        answer = a + b if op == "+" else a - b
        return Task(id=f"arith-{self.seed}-{split}-{index % len(items)}", prompt=f"{a:0{self.width}d}{op}{b:0{self.width}d}=" if self.width else f"{a}{op}{b}=",
                    answer=str(answer), kind=self.kind)


def score_exact(answer: str, completion_text: str) -> float:
    return 1.0 if completion_text.strip() == answer.strip() else 0.0


register("arithmetic", ArithmeticTasks, score_exact, pure=True)
