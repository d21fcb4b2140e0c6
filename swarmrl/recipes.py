"""Demo recipes: complete config sets under `recipes/<name>/` that `swarmrl demo --recipe NAME` runs.

A recipe folder holds `recipe.toml` (the model to build, the dataset to generate, the task
source, the supervised warm start, the swarm's settings and the goal) and one optional file per
role (`coordinator.toml`, `trainer.toml`, `verifier.toml`, `relay.toml`) merged
over the configs the demo writes for that role (`swarmrl.swarm.SwarmSettings.overrides`,
checked like any config file: unknown keys are errors). `arithmetic` is the built-in demo
(`swarmrl.modelkit.DEMO_RECIPE`) and needs no folder. `--recipe` also takes a folder path.

What a recipe builds is all local: `init_model` (character or BPE tokenizer, no download),
`write_dataset` (JSONL files generated from a built-in source), `warm_start`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import MessageError

ROLE_FILES = ("coordinator", "trainer", "verifier", "relay")
BUILTIN = "arithmetic"


@dataclass
class Recipe:
    name: str
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)
    warm_start: dict = field(default_factory=dict)
    swarm: dict = field(default_factory=dict)
    goal: dict = field(default_factory=dict)
    roles: dict = field(default_factory=dict)

    @property
    def chat(self) -> bool:
        return bool(self.task.get("chat_template", False))

    @property
    def max_tokens(self) -> int:
        return int(self.swarm.get("max_tokens", 8))


def recipes_root() -> Path:
    return Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str) -> Recipe:
    folder = Path(name) if Path(name).is_dir() else recipes_root() / name
    if not (folder / "recipe.toml").is_file():
        known = sorted(p.parent.name for p in recipes_root().glob("*/recipe.toml"))
        raise MessageError(f"no recipe {name!r}: use {BUILTIN!r}, one of {known} (folders under {recipes_root()}), "
                           "or a folder holding recipe.toml")
    doc = tomllib.loads((folder / "recipe.toml").read_text())
    unknown = set(doc) - {"model", "data", "task", "warm_start", "swarm", "goal"}
    if unknown:
        raise MessageError(f"{folder / 'recipe.toml'}: unknown sections {sorted(unknown)}")
    roles = {r: tomllib.loads((folder / f"{r}.toml").read_text()) for r in ROLE_FILES if (folder / f"{r}.toml").is_file()}
    return Recipe(name=folder.name, roles=roles, **doc)


def write_dataset(recipe: Recipe, data_dir: Path, seed: int) -> dict:
    """Generate the recipe's JSONL files; the task options naming them (`path`, `eval_path`)."""
    from protocol.tasks import get_source

    data = recipe.data
    source = get_source(data.get("generator", "arithmetic"), seed=seed, options=dict(data.get("options", {})))
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, name, n in (("train", "train.jsonl", source.size("train")),
                           ("eval", "eval.jsonl", min(int(data.get("eval_size", 500)), source.size("eval")))):
        path = data_dir / name
        with open(path, "w", encoding="utf-8") as fh:
            for i in range(n):
                t = source.task(split, i)
                fh.write(json.dumps({"prompt": t.prompt, "answer": t.answer, "metadata": t.metadata}) + "\n")
        paths[split] = str(path)
    return {"path": paths["train"], "eval_path": paths["eval"]}


def task_options(recipe: Recipe, files: dict) -> dict:
    return {**dict(recipe.task.get("options", {})), **files}


def build_model(recipe: Recipe, model_dir: Path, kind: str, options: dict, seed: int) -> dict:
    """init_model + warm start on the recipe's task (prompts through the chat template when set)."""
    from swarmrl.modelkit import init_model, warm_start

    info = init_model(model_dir, seed=seed, **recipe.model)
    ws = dict(recipe.warm_start)
    seconds = float(ws.pop("seconds", 120))
    stats = warm_start(model_dir, seconds=seconds, seed=seed, task_kind=kind, task_seed=seed, task_options=options,
                       chat=recipe.chat, max_new_tokens=recipe.max_tokens, **ws)
    return {**info, "warm_start": stats}
