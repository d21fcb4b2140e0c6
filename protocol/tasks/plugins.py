"""Task plugins: a task source or a scorer from another installed package, named in config.

A plugin is named either as `<module>:<object>` or by the name of an entry point in the
`swarmrl.tasks` group, which an installed package declares in its metadata:

    [project.entry-points."swarmrl.tasks"]
    mytask = "mypkg.tasks:make_source"       # tasks.kind = "mytask"
    myjudge = "mypkg.rewards:judge"          # tasks.options.scorer = "myjudge"

A source plugin is called as `object(seed=..., **options)` and returns a `TaskSource`; a scorer
plugin is a function `(completion, answer, metadata) -> reward` and runs in the scorer sandbox
like any `<module>:<function>` scorer (the module must be allowed there:
`SWARMRL_SCORER_MODULES`). The coordinator, the trainer and the verifier all resolve names
here, the same way; a name that resolves to nothing is a start-up error that says what to
install or write, and `protocol.tasks.digest` covers the plugin's code, so roles that have
different versions of it installed refuse to start.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable

from protocol.errors import MessageError

GROUP = "swarmrl.tasks"


def entry_point(name: str) -> str | None:
    """The `module:object` an installed `swarmrl.tasks` entry point called `name` names, or None."""
    for ep in metadata.entry_points(group=GROUP):
        if ep.name == name:
            return ep.value.strip()
    return None


def import_object(ref: str) -> Any:
    module, _, name = ref.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MessageError(f"task plugin {ref!r}: cannot import {module} ({exc}); install the package that "
                           "provides it in every role's environment") from None
    obj = getattr(mod, name, None)
    if obj is None:
        raise MessageError(f"task plugin {ref!r}: {module} has no attribute {name}")
    return obj


def source_factory(kind: str, known: list[str]) -> Callable[..., Any]:
    """The factory a plugin kind names (`module:object` or an entry point name)."""
    from protocol.tasks import _MODULE_REF

    ref = kind if _MODULE_REF.fullmatch(kind) else entry_point(kind)
    if ref is None:
        raise MessageError(f"unknown task kind {kind!r}; known: {known}, reasoning_gym:<name>, <module>:<object>, "
                           f"or the name of an installed {GROUP!r} entry point")
    obj = import_object(ref)
    if not callable(obj):
        raise MessageError(f"task plugin {ref!r} is not callable; it must return a task source")
    return obj


def resolve_scorer(ref: str) -> str:
    """A scorer reference with an entry point name replaced by the `module:function` it names."""
    from protocol.tasks import _SCORERS, _load_builtin

    _load_builtin()
    if ":" in ref or ref in _SCORERS:
        return ref
    found = entry_point(ref)
    return found if found is not None else ref
