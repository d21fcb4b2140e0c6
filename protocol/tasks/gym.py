"""Tasks from reasoning-gym (the optional `tasks` extra): `reasoning_gym:<dataset>`.

Each task carries its entry's `metadata` (made JSON: what the sandbox can carry), and its kind
is the scorer reference `reasoning_gym:<dataset>[?extract=...&tag=...]`: the gym scorer is
given the answer extracted from the completion (`protocol.tasks.extract`; default: the last
`<answer>` pair, else the whole text, the convention of reasoning-gym's own prompts) and the
entry `{"answer": answer, "metadata": metadata}`, as reasoning-gym's `score_answer` expects.
Without extraction or metadata, most gym scorers give a constant reward (issue 21: chain_sum
scored `<answer>214</answer>` 0.07; countdown scored its own reference 0.01).

Several reasoning-gym scorers `eval` or `sympy.parse_expr` the answer text (spiral_matrix,
string_insertion, binary_matrix, n_queens, polynomial_multiplication, puzzle24, countdown,
...), so every one of them is impure (`protocol.tasks.describe`): `gym_scorer` is only ever
called inside `protocol.sandbox`, one batch per process.

Options: `size`, `eval_size`, `extract` (list or comma string), `answer_tag`, and anything else
goes to the dataset's config (`reasoning_gym.create_dataset`).
"""

from __future__ import annotations

import json
from functools import lru_cache

from protocol.errors import MessageError
from protocol.tasks import Scorer, Task
from protocol.tasks.extract import check_order, extract

GYM_EXTRACT = ("tags", "all")


def _rg():
    try:
        import reasoning_gym
    except ImportError as exc:
        raise MessageError("reasoning_gym tasks need the extra: pip install 'swarmrl[tasks]'") from exc
    return reasoning_gym


def parse_gym_ref(ref: str) -> tuple[str, tuple[str, ...], str]:
    """(dataset, extractors, tag) of `reasoning_gym:<dataset>[?extract=a,b&tag=t]`."""
    body = ref.split(":", 1)[1]
    dataset, _, query = body.partition("?")
    order, tag = GYM_EXTRACT, "answer"
    for part in query.split("&") if query else []:
        key, _, value = part.partition("=")
        if key == "extract":
            order = tuple(v for v in value.split(",") if v)
        elif key == "tag":
            tag = value
        else:
            raise MessageError(f"unknown parameter {key!r} in {ref!r}; use extract or tag")
    try:
        check_order(order)
        extract("", order, tag)
    except ValueError as exc:
        raise MessageError(f"{ref}: {exc}") from None
    return dataset, order, tag


def gym_ref(dataset: str, order: tuple[str, ...] = GYM_EXTRACT, tag: str = "answer") -> str:
    params = ([f"extract={','.join(order)}"] if order != GYM_EXTRACT else []) + ([f"tag={tag}"] if tag != "answer" else [])
    return f"reasoning_gym:{dataset}" + ("?" + "&".join(params) if params else "")


def _json(value) -> dict:
    """Metadata as JSON values (tuples become lists, anything else its str)."""
    out = json.loads(json.dumps(value or {}, default=str))
    return out if isinstance(out, dict) else {"value": out}


class ReasoningGymTasks:
    def __init__(self, dataset: str, seed: int = 0, size: int = 10_000, eval_size: int = 500,
                 extract: list | str | tuple = GYM_EXTRACT, answer_tag: str = "answer", **options):
        order = tuple(e.strip() for e in extract.split(",")) if isinstance(extract, str) else tuple(extract)
        self.kind = gym_ref(dataset, order, answer_tag)
        parse_gym_ref(self.kind)
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
        return Task(id=f"rg-{self.dataset}-{split}-{i}", prompt=entry["question"], answer=str(entry["answer"]),
                    kind=self.kind, metadata=_json(entry.get("metadata")))


@lru_cache(maxsize=32)
def gym_scorer(ref_body: str) -> Scorer:
    """The scorer of `reasoning_gym:<ref_body>` (dataset plus its extraction parameters)."""
    dataset, order, tag = parse_gym_ref(f"reasoning_gym:{ref_body}")
    try:
        fn = _rg().get_score_answer_fn(dataset)
    except (KeyError, ValueError) as exc:
        raise MessageError(f"reasoning-gym has no dataset {dataset!r}: {exc}") from None

    def scorer(completion: str, answer: str, metadata: dict) -> float:
        got = extract(completion, order, tag)
        if got is None:
            return 0.0
        return float(fn(got, {"answer": answer, "metadata": metadata}))

    return scorer
