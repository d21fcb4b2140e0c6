"""Every committed demo recipe (`recipes/*/`) loads, and its role files are valid configs once
merged over the demo's (the same check `swarmrl demo --recipe NAME` makes before it starts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.config import load_config
from protocol.errors import MessageError
from protocol.tasks import get_source
from swarmrl.demo import DemoOptions, recipe_settings
from swarmrl.recipes import load_recipe, recipes_root, task_options, write_dataset
from swarmrl.swarm import plan_swarm

RECIPES = sorted(p.parent.name for p in recipes_root().glob("*/recipe.toml"))


def test_there_is_a_tasks_recipe():
    assert "tasks" in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_plans_a_swarm_with_valid_configs(name, tmp_path):
    from coordinator.config import CoordinatorConfig

    recipe = load_recipe(name)
    options = task_options(recipe, write_dataset(recipe, tmp_path / "data", 0))
    source = get_source(recipe.task.get("kind", "jsonl"), seed=0, options=options)
    assert source.size("train") > 0 and source.size("eval") > 0
    row = json.loads(Path(options["path"]).read_text().splitlines()[0])
    assert set(row) == {"prompt", "answer", "metadata"}
    settings = recipe_settings(DemoOptions(), recipe, recipe.task.get("kind", "jsonl"), options)
    plan = plan_swarm(tmp_path / "run", tmp_path / "model", settings)
    coord = load_config(CoordinatorConfig, plan.configs["coordinator"])
    assert coord.tasks.kind == settings.task_kind and coord.chat_template == recipe.chat
    assert coord.sampling.max_tokens == recipe.max_tokens


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(MessageError, match="tasks"):
        load_recipe("no-such-recipe")
