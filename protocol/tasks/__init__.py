"""Tasks with verifiable rewards: where prompts come from and how completions are scored.

A task is (id, prompt, answer, kind); a **scorer** turns a completion into a reward in [0, 1].
The coordinator draws tasks from a source and computes every reward itself; the verifier
recomputes them; the trainer evaluates on the held-out split. A worker's claim about its
reward is never used.

Sources are looked up by name (`get_source`): `arithmetic` is built in (the demo's task);
`reasoning_gym:<dataset>` uses the optional `tasks` extra. A source is deterministic in
(seed, split, index), and its `train` and `eval` splits never share a task.

Scorers are named by a reference string, the task kind: a registered kind (`arithmetic`),
`reasoning_gym:<dataset>`, or `<module>:<function>` (called as `function(completion, answer,
metadata)`; only where the sandbox was told to allow that module: `SWARMRL_SCORER_MODULES`,
see `protocol.sandbox.shared`). The task option `scorer` scores a source's tasks with another
scorer (`options = {"scorer": "mypkg.rewards:judge"}`): its tasks then carry that reference as
their kind, so the coordinator's intake, the verifier and `swarmrl audit reverify` all score
with it. Completion text comes from
workers and is hostile: scorers of public task suites `eval` or `sympy.parse_expr` it. So
every reward that counts is computed in `protocol.sandbox` (a confined process pool); this
module only names scorers (`describe`, in the host) and loads them (`load_scorer`, inside
the sandbox). A scorer is **pure** when it never runs its input as code (the built-in exact
match); a sandbox process may then serve another batch. Every reasoning-gym scorer and every
module reference is treated as impure: its process scores one batch and is thrown away.

`score(kind, answer, text)` is the one-completion convenience for trusted text (the trainer's
evaluation of its own model, the demo's warm-start): pure scorers run in-process, the others
in the process-wide sandbox (`protocol.sandbox.shared`).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, replace
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


Scorer = Callable[[str, str, dict], float]  # (completion, answer, metadata) -> reward

_SCORERS: dict[str, tuple[Callable[[str, str], float], bool]] = {}
_SOURCES: dict[str, Callable[..., TaskSource]] = {}
_GYM = re.compile(r"reasoning_gym:[a-z0-9_]{1,64}")
_MODULE_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def register(kind: str, factory: Callable[..., TaskSource], scorer: Callable[[str, str], float], *,
             pure: bool = False) -> None:
    """A task source and its scorer `scorer(answer, completion_text)`; `pure=True` only for a
    scorer that never evaluates its input (plain string work)."""
    _SOURCES[kind] = factory
    _SCORERS[kind] = (scorer, pure)


@dataclass(frozen=True)
class Rescored:
    """A source whose tasks are scored by `kind` (a scorer reference) instead of their own."""

    source: TaskSource
    kind: str

    def task(self, split: str, index: int) -> Task:
        return replace(self.source.task(split, index), kind=self.kind)

    def size(self, split: str) -> int:
        return self.source.size(split)


def get_source(kind: str, seed: int = 0, options: dict | None = None) -> TaskSource:
    """The task source `kind` with `options`; the option `scorer` (a scorer reference) rescores it."""
    options = dict(options or {})
    scorer = options.pop("scorer", None)
    source = _source(kind, seed, options)
    if scorer is None:
        return source
    if not isinstance(scorer, str):
        raise MessageError(f"task option 'scorer' must be a scorer reference string, not {scorer!r}")
    describe(scorer)  # MessageError when it names no scorer
    return Rescored(source, scorer)


def _source(kind: str, seed: int, options: dict) -> TaskSource:
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


def describe(ref: str) -> bool:
    """Whether the scorer `ref` is pure; MessageError when `ref` names no scorer. Cheap: it
    imports no task suite (the host calls it before sending work to the sandbox)."""
    _load_builtin()
    if ref in _SCORERS:
        return _SCORERS[ref][1]
    if _GYM.fullmatch(ref) or _MODULE_REF.fullmatch(ref):
        return False
    raise MessageError(f"no scorer for task kind {ref!r}; known: {sorted(_SCORERS)}, reasoning_gym:<dataset> "
                       "or <module>:<function>")


def load_scorer(ref: str) -> tuple[Scorer, bool]:
    """(scorer, pure) for `ref`, importing what it needs (inside the sandbox, or the zygote)."""
    pure = describe(ref)
    if ref in _SCORERS:
        fn = _SCORERS[ref][0]
        return (lambda completion, answer, metadata: fn(answer, completion)), pure
    if ref.startswith("reasoning_gym:"):
        from protocol.tasks.gym import gym_scorer

        return gym_scorer(ref.split(":", 1)[1]), pure
    module, name = ref.split(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise MessageError(f"{ref}: {module} has no function {name}")
    return fn, pure


def warm_scorer(ref: str, fn: Scorer) -> None:
    """Run a freshly loaded scorer once on harmless text, so that what it imports lazily is
    imported before the sandbox forks (its children may no longer read Python's files)."""
    for text in ("0", "[1, 2]", "x"):
        try:
            fn(text, "0", {})
        except Exception:  # noqa: BLE001,S112  (only the imports matter here)
            continue


def score(kind: str, answer: str, completion_text: str) -> float:
    """Reward of one trusted completion (see the module docstring); impure scorers run sandboxed."""
    if describe(kind):
        return float(_SCORERS[kind][0](answer, completion_text))
    from protocol.sandbox import ScoreItem, shared

    return shared().score(kind, [ScoreItem(completion_text, answer)])[0].reward


def _load_builtin() -> None:
    if "arithmetic" not in _SOURCES:
        from protocol.tasks import arithmetic  # noqa: F401  (registers itself)
