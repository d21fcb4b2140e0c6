"""Task sources: JSONL, Parquet/Arrow and `datasets` save_to_disk folders, splits, prompt options,
plugins (module:object and `swarmrl.tasks` entry points), reasoning-gym with metadata, digests."""

from __future__ import annotations

import json
from importlib import metadata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protocol.errors import MessageError
from protocol.tasks import get_source, load_scorer
from protocol.tasks.digest import SCORER_PARTS, check_parts, digest_parts

ROWS = [{"prompt": f"{i}+1=", "answer": str(i + 1), "metadata": {"i": i}} for i in range(50)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _all(src, split):
    return [src.task(split, i) for i in range(src.size(split))]


def test_jsonl_seeded_split_is_deterministic_and_disjoint(tmp_path):
    f = _jsonl(tmp_path / "math.jsonl", ROWS)
    a = get_source("jsonl", seed=3, options={"path": str(f), "eval_size": 10})
    b = get_source("jsonl", seed=3, options={"path": str(f), "eval_size": 10})
    c = get_source("jsonl", seed=4, options={"path": str(f), "eval_size": 10})
    assert (a.size("train"), a.size("eval")) == (40, 10)
    assert _all(a, "eval") == _all(b, "eval") and _all(a, "eval") != _all(c, "eval")
    assert not {t.prompt for t in _all(a, "eval")} & {t.prompt for t in _all(a, "train")}
    t = a.task("train", 41)  # indices wrap
    assert t == a.task("train", 1) and t.id == "math-train-1" and t.kind == "answer:exact"
    assert t.metadata == {"i": int(t.prompt.split("+")[0])}


def test_jsonl_split_by_file(tmp_path):
    train, held = _jsonl(tmp_path / "train.jsonl", ROWS[:40]), _jsonl(tmp_path / "eval.jsonl", ROWS[40:])
    src = get_source("jsonl", options={"path": str(train), "eval_path": str(held), "prompt_field": "prompt"})
    assert [t.prompt for t in _all(src, "eval")] == [r["prompt"] for r in ROWS[40:]]  # file order
    assert sorted(t.prompt for t in _all(src, "train")) == sorted(r["prompt"] for r in ROWS[:40])


@pytest.mark.parametrize("line,problem", [
    ("not json", "not a JSON object"), ("[1, 2]", "must be a JSON object"),
    ('{"prompt": "", "answer": "1"}', "non-empty string"), ('{"prompt": "q", "answer": [1]}', "string or a number"),
    ('{"prompt": "q", "answer": "1", "metadata": 3}', "must be a JSON object"),
])
def test_a_malformed_row_is_a_startup_error_naming_the_row(tmp_path, line, problem):
    f = tmp_path / "bad.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:10]) + line + "\n")
    with pytest.raises(MessageError, match=problem):
        get_source("jsonl", options={"path": str(f)})


def test_missing_file_too_few_rows_and_unknown_options(tmp_path):
    with pytest.raises(MessageError, match="cannot read"):
        get_source("jsonl", options={"path": str(tmp_path / "nope.jsonl")})
    with pytest.raises(MessageError, match="both splits"):
        get_source("jsonl", options={"path": str(_jsonl(tmp_path / "one.jsonl", ROWS[:3]))})
    with pytest.raises(MessageError, match="unknown task options"):
        get_source("jsonl", options={"path": str(_jsonl(tmp_path / "x.jsonl", ROWS)), "colour": "red"})
    with pytest.raises(MessageError, match="needs the option path"):
        get_source("jsonl")


def test_parquet_file(tmp_path):
    f = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": r["prompt"], "solution": int(r["answer"])} for r in ROWS]), f)
    src = get_source("dataset", options={"path": str(f), "prompt_field": "question", "answer_field": "solution",
                                         "compare": "numeric"})
    t = src.task("eval", 0)
    assert t.answer == str(int(t.prompt.split("+")[0]) + 1) and src.kind == "answer:numeric"


def _save_to_disk_layout(folder, rows):
    """The files datasets' Dataset.save_to_disk writes: Arrow stream shards, state.json, dataset_info.json."""
    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    names = []
    for k, part in enumerate((table.slice(0, len(rows) // 2), table.slice(len(rows) // 2))):
        names.append(f"data-{k:05d}-of-00002.arrow")
        with pa.OSFile(str(folder / names[-1]), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(part)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
    (folder / "dataset_info.json").write_text("{}")


def test_a_saved_dataset_dict_splits_by_its_own_splits(tmp_path):
    root = tmp_path / "ds"
    _save_to_disk_layout(root / "train", ROWS[:40])
    _save_to_disk_layout(root / "test", ROWS[40:])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    src = get_source("dataset", options={"path": str(root)})
    assert src.size("train") == 40 and sorted(t.prompt for t in _all(src, "eval")) == sorted(r["prompt"] for r in ROWS[40:])
    assert src.task("eval", 0).metadata == {"i": 40}


def test_a_real_datasets_save_to_disk_folder_loads_without_datasets(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets library is not installed (not a dependency)")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "real"))
    src = get_source("dataset", options={"path": str(tmp_path / "real"), "eval_size": 5})
    assert src.size("eval") == 5 and src.size("train") == 45


def test_prompt_options_apply_to_any_source(tmp_path):
    src = get_source("arithmetic", options={"system_prompt": "Reply in <answer> tags.",
                                            "prompt_template": "Compute {prompt} {not a field}"})
    t, plain = src.task("eval", 0), get_source("arithmetic").task("eval", 0)
    assert t.prompt == f"Compute {plain.prompt} {{not a field}}" and t.system == "Reply in <answer> tags."
    with pytest.raises(MessageError, match="must contain"):
        get_source("arithmetic", options={"prompt_template": "no placeholder"})


PLUGIN = "tests.taskplugin:make_source"


def test_a_plugin_source_by_module_reference():
    src = get_source(PLUGIN, options={"start": 5})
    t = src.task("eval", 1)
    assert (t.prompt, t.answer, t.metadata) == ("before 106:", "105", {"n": 106})
    fn, pure = load_scorer(t.kind)
    assert not pure and fn("it is 105", t.answer, t.metadata) == 1.0


def test_a_plugin_source_by_entry_point(monkeypatch):
    eps = metadata.EntryPoints([metadata.EntryPoint("countdown", PLUGIN, "swarmrl.tasks"),
                                metadata.EntryPoint("lastword", "tests.taskplugin:last_word_scorer", "swarmrl.tasks")])
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: eps.select(group=group))
    assert get_source("countdown").task("train", 0).prompt == "before 10:"
    assert get_source("arithmetic", options={"scorer": "lastword"}).kind == "tests.taskplugin:last_word_scorer"


@pytest.mark.parametrize("kind,problem", [
    ("nosuchplugin", "unknown task kind"), ("tests.no_such_module:make", "cannot import"),
    ("tests.taskplugin:nothing", "has no attribute"),
])
def test_unknown_plugins_are_clear_errors(kind, problem):
    with pytest.raises(MessageError, match=problem):
        get_source(kind)


def test_digests_change_with_data_spec_and_plugin_code(tmp_path, monkeypatch):
    f = _jsonl(tmp_path / "d.jsonl", ROWS)
    opts = {"path": str(f)}
    base = digest_parts("jsonl", 0, opts, False, "answer:exact")
    assert base == digest_parts("jsonl", 0, dict(opts), False, "answer:exact")
    _jsonl(f, ROWS[:-1])
    changed = digest_parts("jsonl", 0, opts, False, "answer:exact")
    assert [p for p in base if base[p] != changed[p]] == ["data"]
    with pytest.raises(MessageError, match="differs from the run's in data"):
        check_parts("trainer", base, changed)
    check_parts("verifier", base, changed, SCORER_PARTS)  # the verifier needs no data files
    assert digest_parts("jsonl", 0, opts, True, "answer:exact")["spec"] != changed["spec"]
    plugin = digest_parts(PLUGIN, 0, {}, False, "tests.taskplugin:last_word_scorer")
    monkeypatch.setattr("protocol.tasks.digest.module_code", lambda m: "other code")
    other = digest_parts(PLUGIN, 0, {}, False, "tests.taskplugin:last_word_scorer")
    assert plugin["scorer"] != other["scorer"] and plugin["source"] != other["source"]
    with pytest.raises(MessageError, match="scorer"):
        check_parts("verifier", plugin, other, SCORER_PARTS)


def test_reasoning_gym_tasks_carry_metadata_and_score_extracted_answers():
    pytest.importorskip("reasoning_gym", reason="reasoning-gym is the optional tasks extra (pip install '.[tasks]')")
    chain = get_source("reasoning_gym:chain_sum", seed=1, options={"size": 20, "eval_size": 5})
    t = chain.task("train", 0)
    assert t.metadata["expression"] and t.kind == "reasoning_gym:chain_sum"
    fn, pure = load_scorer(t.kind)
    assert not pure
    assert fn(f"thinking... <answer>{t.answer}</answer>", t.answer, t.metadata) == 1.0
    assert fn("<answer>99999</answer>", t.answer, t.metadata) == 0.0
    countdown = get_source("reasoning_gym:countdown", seed=1, options={"size": 20, "eval_size": 5})
    c = countdown.task("train", 0)
    fn, _ = load_scorer(c.kind)
    assert fn(f"<answer>{c.answer}</answer>", c.answer, c.metadata) == 1.0  # its own reference: 1, not 0.01
    last = get_source("reasoning_gym:chain_sum", seed=1, options={"size": 20, "eval_size": 5,
                                                                  "extract": "tags,last_number"})
    assert last.kind == "reasoning_gym:chain_sum?extract=tags,last_number"
    fn, _ = load_scorer(last.kind)
    assert fn(f"The answer is {t.answer}.", t.answer, t.metadata) == 1.0
