"""Tasks with verifiable rewards: where prompts come from and how completions are scored.

A task is (id, prompt, answer, kind, metadata, system); a **scorer** turns a completion into a
reward in [0, 1]. The coordinator draws tasks from a source and computes every reward itself;
the verifier recomputes them; the trainer evaluates on the held-out split. A worker's claim
about its reward is never used.

**Sources** are looked up by name (`get_source(kind, seed, options)`, the coordinator's
`tasks` config, served to every role as `RunInfo.tasks`):

| kind | what |
|---|---|
| `arithmetic` | built in: the demo's sums and differences (`protocol.tasks.arithmetic`) |
| `jsonl`, `dataset` | local files: JSONL, Parquet/Arrow, `datasets` save_to_disk folders (`protocol.tasks.files`) |
| `reasoning_gym:<dataset>` | reasoning-gym with per-item metadata (the optional `tasks` extra; `protocol.tasks.gym`) |
| `<module>:<object>` or a `swarmrl.tasks` entry point name | a plugin: `object(seed=..., **options)` returns a source (`protocol.tasks.plugins`) |

A source is deterministic in (seed, split, index), and its `train` and `eval` splits never
share a task. Every source takes the prompt options `system_prompt` and `prompt_template`
(`protocol.tasks.prompts`); the one function that turns a task into token ids is
`protocol.lm.encode_task`.

**Scorers** are named by a reference string, the task's kind: a registered kind
(`arithmetic`), `answer:<exact|numeric|math>[?...]` (answer extraction, comparison, format
reward: `protocol.tasks.answers`), `reasoning_gym:<dataset>[?extract=...]`, or
`<module>:<function>` (called as `function(completion, answer, metadata)`; only where the
sandbox was told to allow that module: `SWARMRL_SCORER_MODULES`, see
`protocol.sandbox.shared`). The task option `scorer` scores a source's tasks with another
scorer (`options = {"scorer": "mypkg.rewards:judge"}`, or a `swarmrl.tasks` entry point name
whose value is such a function): its tasks then carry that reference as their kind, so the
coordinator's intake, the verifier and `swarmrl audit reverify` all score with it. A module
named `answer` cannot be a plugin (the prefix is taken).

Completion text comes from workers and is hostile: scorers of public task suites `eval` or
`sympy.parse_expr` it. So every reward that counts is computed in `protocol.sandbox` (a
confined process pool); this module only names scorers (`describe`, in the host) and loads
them (`load_scorer`, inside the sandbox). A scorer is **pure** when it never runs its input
as code (exact and numeric comparison); a sandbox process may then serve another batch. Every
reasoning-gym scorer, math comparison and module reference is treated as impure: its process
scores one batch and is thrown away.

**Task data is bounded**: a task's answer, kind and metadata take at most
`protocol.messages.MAX_TASK_DATA_BYTES` as JSON (`protocol.messages.task_data_bytes`), the room
a verifier's claim answer gives a job's task. `get_source` holds every source to it
(`Bounded`: a task over it, or with metadata that is not strict JSON, is a MessageError when
asked for, never handed out); `protocol.tasks.files` checks each row at load, so a task file
with such a row does not start.

`score(kind, answer, text, metadata)` is the one-completion convenience for trusted text (the
trainer's evaluation of its own model, the demo's warm-start): pure scorers run in-process,
the others in the process-wide sandbox (`protocol.sandbox.shared`). Every role checks at start
that it builds the same tasks and scorers as the coordinator: `protocol.tasks.digest`.

"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from protocol.errors import MessageError


@dataclass(frozen=True)
class Task:
    id: str
    prompt: str
    answer: str
    kind: str
    metadata: dict = field(default_factory=dict, hash=False)  # JSON values; the scorer receives them
    system: str = ""  # the system prompt (protocol.tasks.prompts), used by protocol.lm.encode_task


class TaskSource(Protocol):
    kind: str

    def task(self, split: str, index: int) -> Task:
        """The index-th task of `split` ('train' or 'eval'); deterministic."""

    def size(self, split: str) -> int:
        """Number of distinct tasks in `split` (indices wrap around)."""


Scorer = Callable[[str, str, dict], float]  # (completion, answer, metadata) -> reward

_SCORERS: dict[str, tuple[Callable[[str, str], float], bool]] = {}
_SOURCES: dict[str, Callable[..., TaskSource]] = {}
_GYM = re.compile(r"reasoning_gym:[a-z0-9_]{1,64}(\?[A-Za-z0-9_.,=&]{1,200})?")
_MODULE_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
PROMPT_OPTIONS = ("system_prompt", "prompt_template")


def register(kind: str, factory: Callable[..., TaskSource] | None, scorer: Callable[[str, str], float] | None, *,
             pure: bool = False) -> None:
    """A task source and/or its scorer `scorer(answer, completion_text)`; `pure=True` only for a
    scorer that never evaluates its input (plain string work)."""
    if factory is not None:
        _SOURCES[kind] = factory
    if scorer is not None:
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


def task_data_problem(answer: str, kind: str, metadata: dict) -> str:
    """Why a task's data may not travel (over MAX_TASK_DATA_BYTES, or metadata that is not
    strict JSON), or "" when it may."""
    from protocol.messages import MAX_TASK_DATA_BYTES, task_data_bytes

    try:
        n = task_data_bytes(answer, kind, metadata)
    except ValueError:
        return "the metadata must hold JSON values only (no NaN, Infinity or other objects)"
    if n > MAX_TASK_DATA_BYTES:
        return (f"the answer, kind and metadata take {n} bytes as JSON, over the protocol's bound of "
                f"{MAX_TASK_DATA_BYTES} (protocol.messages.MAX_TASK_DATA_BYTES: what a verifier's claim gives a task)")
    return ""


def check_task(task: Task) -> Task:
    """`task`, or a MessageError that names it when its data may not travel (`task_data_problem`)."""
    problem = task_data_problem(task.answer, task.kind, task.metadata)
    if problem:
        raise MessageError(f"task {task.id} is refused: {problem}; shorten its answer or metadata")
    return task


@dataclass(frozen=True)
class Bounded:
    """A source whose every task is checked against the bound on task data (`check_task`)."""

    source: TaskSource

    @property
    def kind(self) -> str:
        return self.source.kind

    def task(self, split: str, index: int) -> Task:
        return check_task(self.source.task(split, index))

    def size(self, split: str) -> int:
        return self.source.size(split)


def get_source(kind: str, seed: int = 0, options: dict | None = None) -> TaskSource:
    """The task source `kind` with `options`; the option `scorer` (a scorer reference) rescores it,
    the prompt options (`system_prompt`, `prompt_template`) shape its prompts; every task it gives
    is held to the bound on task data (`Bounded`)."""
    from protocol.tasks.prompts import Prompted, prompt_format

    options = dict(options or {})
    scorer = options.pop("scorer", None)
    fmt = prompt_format({k: options.pop(k) for k in PROMPT_OPTIONS if k in options})
    source = _source(kind, seed, options)
    if fmt is not None:
        source = Prompted(source, fmt)
    if scorer is None:
        return Bounded(source)
    if not isinstance(scorer, str):
        raise MessageError(f"task option 'scorer' must be a scorer reference string, not {scorer!r}")
    from protocol.tasks.plugins import resolve_scorer

    scorer = resolve_scorer(scorer)
    describe(scorer)  # MessageError when it names no scorer
    return Bounded(Rescored(source, scorer))


def _source(kind: str, seed: int, options: dict) -> TaskSource:
    _load_builtin()
    if kind.startswith("reasoning_gym:"):
        from protocol.tasks.gym import ReasoningGymTasks

        return ReasoningGymTasks(kind.split(":", 1)[1], seed=seed, **options)
    if kind in _SOURCES:
        factory = _SOURCES[kind]
    else:
        from protocol.tasks.plugins import source_factory

        factory = source_factory(kind, known=sorted(_SOURCES))
    try:
        return factory(seed=seed, **options)
    except TypeError as exc:
        raise MessageError(f"bad options for task kind {kind!r}: {exc}") from exc
    except ValueError as exc:
        raise MessageError(f"bad options for task kind {kind!r}: {exc}") from exc


def describe(ref: str) -> bool:
    """Whether the scorer `ref` is pure; MessageError when `ref` names no scorer. Cheap: it
    imports no task suite (the host calls it before sending work to the sandbox)."""
    _load_builtin()
    if ref in _SCORERS:
        return _SCORERS[ref][1]
    from protocol.tasks.answers import is_answer_ref, parse_ref

    if is_answer_ref(ref):
        try:
            return parse_ref(ref).pure
        except ValueError as exc:
            raise MessageError(str(exc)) from None
    if _GYM.fullmatch(ref):
        from protocol.tasks.gym import parse_gym_ref

        parse_gym_ref(ref)
        return False
    if _MODULE_REF.fullmatch(ref):
        return False
    raise MessageError(f"no scorer for task kind {ref!r}; known: {sorted(_SCORERS)}, answer:<exact|numeric|math>, "
                       "reasoning_gym:<dataset> or <module>:<function>")


def plugin_module(ref: str) -> str | None:
    """The module a `<module>:<function>` scorer reference imports (None for the built-in kinds,
    `answer:` and `reasoning_gym:`): what a sandbox must be allowed to import for it."""
    if ref in _SCORERS or ref.startswith(("answer:", "reasoning_gym:")) or not _MODULE_REF.fullmatch(ref):
        return None
    return ref.split(":")[0]


def load_scorer(ref: str) -> tuple[Scorer, bool]:
    """(scorer, pure) for `ref`, importing what it needs (inside the sandbox, or the zygote)."""
    pure = describe(ref)
    if ref in _SCORERS:
        fn = _SCORERS[ref][0]
        return (lambda completion, answer, metadata: fn(answer, completion)), pure
    if ref.startswith("answer:"):
        from protocol.tasks.answers import answer_scorer

        return answer_scorer(ref), pure
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
    for text in ("0", "[1, 2]", "x", "<answer>x+1</answer>", "\\boxed{\\frac{1}{2}}"):
        try:
            fn(text, "0", {})
            fn(text, "x", {})
        except Exception:  # noqa: BLE001,S112  (only the imports matter here)
            continue


def score(kind: str, answer: str, completion_text: str, metadata: dict | None = None) -> float:
    """Reward of one trusted completion (see the module docstring); impure scorers run sandboxed."""
    if describe(kind):
        fn, _ = load_scorer(kind)
        return float(fn(completion_text, answer, dict(metadata or {})))
    from protocol.sandbox import ScoreItem, shared

    return shared().score(kind, [ScoreItem(completion_text, answer, dict(metadata or {}))])[0].reward


def score_many(items: list[tuple[Task, str]]) -> list[float]:
    """Rewards of trusted completions `(task, text)`, one sandbox round trip per scorer kind."""
    by_kind: dict[str, list[int]] = {}
    for i, (task, _) in enumerate(items):
        by_kind.setdefault(task.kind, []).append(i)
    out = [0.0] * len(items)
    for kind, idx in by_kind.items():
        if describe(kind):
            fn, _ = load_scorer(kind)
            for i in idx:
                task, text = items[i]
                out[i] = float(fn(text, task.answer, dict(task.metadata)))
            continue
        from protocol.sandbox import ScoreItem, shared

        scored = shared().score(kind, [ScoreItem(items[i][1], items[i][0].answer, dict(items[i][0].metadata)) for i in idx])
        for i, r in zip(idx, scored):
            out[i] = r.reward
    return out


def _load_builtin() -> None:
    if "arithmetic" not in _SOURCES:
        from protocol.tasks import arithmetic  # noqa: F401  (registers itself)
        from protocol.tasks.files import dataset_source, jsonl_source

        register("jsonl", jsonl_source, None)
        register("dataset", dataset_source, None)
