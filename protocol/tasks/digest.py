"""The task definition's digest: every role checks at start that it scores and evaluates alike.

The coordinator's config names the run's tasks (`RunInfo.tasks`: kind, seed, options, chat
template); what those produce also depends on code and files each role has locally: the
scorer and source code (`protocol/tasks`, a plugin's module, reasoning-gym and math-verify
versions) and the data files. `digest_parts` hashes each part; the coordinator serves its parts
in `RunInfo.task_digests`, and

- the trainer (which builds the held-out split and scores it) checks every part,
- the verifier (which only scores: the job carries the task's answer and metadata) checks the
  parts that decide a reward, `SCORER_PARTS`,

and refuses to start on a difference, naming the part (`check_parts`). Workers need none of
it: their prompts come as token ids in signed leases, and their rewards are never used.

| part | what it hashes |
|---|---|
| `spec` | the canonical JSON of kind, seed, options, chat template |
| `tasks_code` | the source of `protocol/tasks/*.py` (built-in sources, extraction, comparisons) |
| `scorer` | the scorer reference the tasks carry, a plugin scorer's module source, and the versions of reasoning-gym / math-verify / sympy when the scorer uses them |
| `source` | a plugin source's module source, and reasoning-gym's version for its datasets |
| `data` | the bytes of every file named by the options `path` and `eval_path` |
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib import metadata
from pathlib import Path

from protocol.errors import MessageError

SCORER_PARTS = ("tasks_code", "scorer")
PARTS = ("spec", "tasks_code", "scorer", "source", "data")
_HERE = Path(__file__).resolve().parent


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def module_code(module: str) -> str:
    """sha256 of a module's source file, without importing it ('absent' when not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        return "absent"
    return _sha(Path(spec.origin).read_bytes())


def tasks_code() -> str:
    return _sha(b"".join(_sha(p.read_bytes()).encode() for p in sorted(_HERE.glob("*.py"))))


def scorer_part(ref: str) -> str:
    from protocol.tasks import plugin_module

    items = {"ref": ref}
    module = plugin_module(ref)
    if module is not None:
        items["module"] = module_code(module)
    if ref.startswith("reasoning_gym:"):
        items["reasoning-gym"] = _version("reasoning-gym")
    if ref.startswith("answer:math"):
        items |= {"math-verify": _version("math-verify"), "sympy": _version("sympy")}
    return _sha(json.dumps(items, sort_keys=True).encode())


def source_part(kind: str) -> str:
    from protocol.tasks import _MODULE_REF, _SOURCES, _load_builtin
    from protocol.tasks.plugins import entry_point

    _load_builtin()
    items = {"kind": kind}
    if kind.startswith("reasoning_gym:"):
        items["reasoning-gym"] = _version("reasoning-gym")
    elif kind not in _SOURCES:
        ref = kind if _MODULE_REF.fullmatch(kind) else entry_point(kind) or ""
        items |= {"plugin": ref, "module": module_code(ref.partition(":")[0]) if ref else "absent"}
    return _sha(json.dumps(items, sort_keys=True).encode())


def data_part(options: dict) -> str:
    from protocol.tasks.files import data_files

    h = hashlib.sha256()
    for key in ("path", "eval_path"):
        if isinstance(options.get(key), str) and options[key]:
            for f in data_files(options[key]):
                fh = hashlib.sha256()
                try:
                    with open(f, "rb") as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            fh.update(block)
                except OSError:
                    fh.update(b"absent")
                h.update(f"{key}:{f.name}:{fh.hexdigest()}\n".encode())
    return h.hexdigest()


def digest_parts(kind: str, seed: int, options: dict, chat_template: bool, scorer_ref: str) -> dict[str, str]:
    """The digest of each part of the task definition (see the module docstring)."""
    spec = json.dumps({"kind": kind, "seed": seed, "options": options, "chat_template": chat_template},
                      sort_keys=True, separators=(",", ":"), default=str)
    return {"spec": _sha(spec.encode()), "tasks_code": tasks_code(), "scorer": scorer_part(scorer_ref),
            "source": source_part(kind), "data": data_part(options)}


def check_parts(role: str, served: dict[str, str], mine: dict[str, str], parts: tuple[str, ...] = PARTS) -> None:
    """MessageError naming each part where this role's task definition differs from the run's."""
    if not served:
        return  # a coordinator that serves no digests (older): nothing to compare
    hints = {"spec": "take tasks.* from the coordinator (leave them out of this role's config)",
             "tasks_code": "run the same swarmrl version as the coordinator",
             "scorer": "install the same scorer plugin and reasoning-gym / math-verify versions as the coordinator",
             "source": "install the same task-source plugin and reasoning-gym version as the coordinator",
             "data": "use byte-identical task data files at the configured paths"}
    wrong = [p for p in parts if served.get(p) != mine.get(p)]
    if wrong:
        raise MessageError(f"the {role}'s task definition differs from the run's in {', '.join(wrong)}: "
                           + "; ".join(f"{p}: {hints[p]}" for p in wrong) + ". Refusing to start.")


def check_run(role: str, info, parts: tuple[str, ...] = PARTS) -> None:
    """MessageError when this process's task definition differs from the one `info` (a
    `RunInfo`) serves, in any of `parts`; nothing when the coordinator serves no digests."""
    if info.tasks is None or not info.task_digests:
        return
    t = info.tasks
    if parts == SCORER_PARTS:  # no data files or source plugin needed: only what decides a reward
        mine = {"tasks_code": tasks_code(), "scorer": scorer_part(info.task_scorer)}
    else:
        mine = digest_parts(t.kind, t.seed, dict(t.options), t.chat_template, info.task_scorer)
    check_parts(role, info.task_digests, mine, parts)
