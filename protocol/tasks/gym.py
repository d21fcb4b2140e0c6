"""Tasks from reasoning-gym (the optional `tasks` extra): `reasoning_gym:<dataset>`.

Several reasoning-gym scorers `eval` or `sympy.parse_expr` the answer text (spiral_matrix,
string_insertion, binary_matrix, n_queens, polynomial_multiplication, puzzle24, countdown,
...), so every one of them is impure (`protocol.tasks.describe`): `gym_scorer` is only ever
called inside `protocol.sandbox`, one batch per process. The scorer gets the completion text
stripped, and the entry `{"answer": answer, "metadata": metadata}`.
"""

from __future__ import annotations

from functools import lru_cache

from protocol.errors import MessageError
from protocol.tasks import Scorer, Task


def _rg():
    try:
        import reasoning_gym
    except ImportError as exc:
        raise MessageError("reasoning_gym tasks need the extra: pip install 'swarmrl[tasks]'") from exc
    return reasoning_gym


class ReasoningGymTasks:
    def __init__(self, dataset: str, seed: int = 0, size: int = 10_000, eval_size: int = 500, **options):
        self.kind = f"reasoning_gym:{dataset}"
        self.dataset = dataset
        rg = _rg()
        self._data = {
            "train": rg.create_dataset(dataset, size=size, seed=seed, **options),
            "eval": rg.create_dataset(dataset, size=eval_size, seed=seed + 1_000_003, **options),
        }

    def size(self, split: str) -> int:
        return len(self._data[split])

    def task(self, split: str, index: int) -> Task:
        data = self._data[split]
        i = index % len(data)
        entry = data[i]
        return Task(id=f"rg-{self.dataset}-{split}-{i}", prompt=entry["question"],
                    answer=str(entry["answer"]), kind=self.kind)


@lru_cache(maxsize=32)
def gym_scorer(dataset: str) -> Scorer:
    try:
        fn = _rg().get_score_answer_fn(dataset)
    except (KeyError, ValueError) as exc:
        raise MessageError(f"reasoning-gym has no dataset {dataset!r}: {exc}") from None

    def scorer(completion: str, answer: str, metadata: dict) -> float:
        return float(fn(completion.strip(), {"answer": answer, "metadata": metadata}))

    return scorer
