"""Tasks with verifiable rewards: where prompts come from and how completions are scored.

A task is (id, prompt, answer, kind); `score(kind, answer, completion_text)` turns a
completion into a reward. The coordinator draws tasks from a source and computes every
reward itself; the verifier recomputes them; the trainer evaluates on the held-out split.
A worker's claim about its reward is never used.

Sources are looked up by name (`get_source`): `arithmetic` is built in (the demo's task);
`reasoning_gym:<dataset>` uses the optional `tasks` extra. A source is deterministic in
(seed, split, index), and its `train` and `eval` splits never share a task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from protocol.errors import MessageError


@dataclass(frozen=True)
class Task:
    id: str
    prompt: str
    answer: str
    kind: str


class TaskSource(Protocol):
    kind: str

    def task(self, split: str, index: int) -> Task:
        """The index-th task of `split` ('train' or 'eval'); deterministic."""

    def size(self, split: str) -> int:
        """Number of distinct tasks in `split` (indices wrap around)."""


_SCORERS: dict[str, Callable[[str, str], float]] = {}
_SOURCES: dict[str, Callable[..., TaskSource]] = {}


def register(kind: str, factory: Callable[..., TaskSource], scorer: Callable[[str, str], float]) -> None:
    _SOURCES[kind] = factory
    _SCORERS[kind] = scorer


def get_source(kind: str, seed: int = 0, options: dict | None = None) -> TaskSource:
    _load_builtin()
    if kind.startswith("reasoning_gym:"):
        from protocol.tasks.gym import ReasoningGymTasks

        return ReasoningGymTasks(kind.split(":", 1)[1], seed=seed, **(options or {}))
    if kind not in _SOURCES:
        raise MessageError(f"unknown task kind {kind!r}; known: {sorted(_SOURCES)} or reasoning_gym:<name>")
    try:
        return _SOURCES[kind](seed=seed, **(options or {}))
    except TypeError as exc:
        raise MessageError(f"bad options for task kind {kind!r}: {exc}") from exc


def score(kind: str, answer: str, completion_text: str) -> float:
    """Reward of a completion: computed by the coordinator and the verifier, never taken from a worker."""
    _load_builtin()
    if kind.startswith("reasoning_gym:"):
        from protocol.tasks.gym import score_gym

        return score_gym(kind.split(":", 1)[1], answer, completion_text)
    try:
        return _SCORERS[kind](answer, completion_text)
    except KeyError:
        raise MessageError(f"no scorer for task kind {kind!r}") from None


def _load_builtin() -> None:
    if "arithmetic" not in _SOURCES:
        from protocol.tasks import arithmetic  # noqa: F401  (registers itself)
