"""Task sources read from local files: JSONL, Parquet, and datasets saved by `datasets`.

| kind | `path` option |
|---|---|
| `jsonl` | a JSON-lines file, one object per line |
| `dataset` | a Parquet file, an Arrow file, or a folder written by `datasets`' `save_to_disk` (a `Dataset`, or a `DatasetDict` whose splits are subfolders), read with pyarrow: no `datasets` import, no network |

Each row gives `prompt_field` (default `prompt`), `answer_field` (default `answer`; numbers are
turned into text) and, when present, `metadata_field` (default `metadata`: a JSON object the
scorer receives). Splits, one of:
- by file: `eval_path` names the held-out file (or, for a `DatasetDict`, `eval_split`, default
  the first of `test`/`validation`/`eval` that exists; `train_split` default `train`);
- seeded: the rows are shuffled by the run's seed and the first `eval_size` (default 500, at
  most a fifth of the rows) are held out.
The train split is shuffled by the seed too; a source is deterministic in (files, seed, options).

Scoring options (`compare`, `extract`, `answer_tag`, `format_reward`) choose the `answer:`
scorer the tasks carry as their kind (`protocol.tasks.answers`; default `answer:exact`).

Files come from the operator, not from workers: a malformed row is a start-up error naming
the file and row, not a skipped row; so is a row whose answer and metadata are over the bound
on task data (`protocol.messages.MAX_TASK_DATA_BYTES`, `protocol.tasks.task_data_problem`). Every role that builds this source (coordinator, trainer)
reads the same files; `protocol.tasks.digest` hashes them so a role with other bytes refuses
to start.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from protocol.errors import MessageError
from protocol.tasks import Task, task_data_problem
from protocol.tasks.answers import spec_from_options

_SPLIT_NAMES = ("test", "validation", "eval")


def data_files(path: str | Path) -> list[Path]:
    """The files a `path` option stands for (a folder: every data and metadata file in it)."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file())
    return [p]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise MessageError(f"{path}:{n}: not a JSON object ({exc.msg}); fix or remove that line") from None
                if not isinstance(row, dict):
                    raise MessageError(f"{path}:{n}: each line must be a JSON object, not {type(row).__name__}")
                rows.append(row)
    except OSError as exc:
        raise MessageError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    return rows


def _read_arrow_table(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        return pq.read_table(path)
    with pa.memory_map(str(path)) as src:  # datasets writes the Arrow streaming format
        try:
            return pa.ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            src.seek(0)
            return pa.ipc.open_file(src).read_all()


def _read_saved_dataset(folder: Path) -> list[dict]:
    """A `Dataset.save_to_disk` folder: state.json lists its Arrow files in order."""
    import pyarrow as pa

    state = json.loads((folder / "state.json").read_text())
    files = [folder / f["filename"] for f in state.get("_data_files", [])]
    if not files:
        raise MessageError(f"{folder}/state.json lists no data files")
    return pa.concat_tables([_read_arrow_table(f) for f in files]).to_pylist()


def read_rows(path: str | Path, split: str | None = None) -> list[dict]:
    """The rows of a task file or saved dataset (for a DatasetDict folder: split `split`)."""
    p = Path(path)
    try:
        if p.is_dir():
            if (p / "dataset_dict.json").exists():
                splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
                if split not in splits:
                    raise MessageError(f"{p} has splits {splits}, not {split!r}; set train_split/eval_split")
                return _read_saved_dataset(p / split)
            if (p / "state.json").exists():
                return _read_saved_dataset(p)
            raise MessageError(f"{p} is a folder but not one written by datasets' save_to_disk "
                               "(no state.json or dataset_dict.json)")
        if p.suffix == ".jsonl" or p.suffix == ".json":
            return _read_jsonl(p)
        if p.suffix in (".parquet", ".arrow"):
            return _read_arrow_table(p).to_pylist()
    except OSError as exc:
        raise MessageError(f"cannot read task data {p}: {exc.strerror or exc}") from None
    raise MessageError(f"task data {p}: use a .jsonl, .parquet or .arrow file, or a save_to_disk folder")


def _dict_splits(path: Path) -> list[str]:
    f = path / "dataset_dict.json"
    return json.loads(f.read_text()).get("splits", []) if path.is_dir() and f.exists() else []


class FileTasks:
    """Tasks from rows of local files (see the module docstring for the options)."""

    def __init__(self, path: str, seed: int = 0, *, eval_path: str = "", eval_size: int = 500,
                 train_split: str = "train", eval_split: str = "", prompt_field: str = "prompt",
                 answer_field: str = "answer", metadata_field: str = "metadata", name: str = "", **scoring):
        self.spec = spec_from_options(scoring)
        if scoring:
            raise MessageError(f"unknown task options {sorted(scoring)}; see protocol.tasks.files")
        self.kind = self.spec.ref
        self.name = name or Path(path).stem.replace("_", "-")[:32] or "data"
        self.fields = (prompt_field, answer_field, metadata_field)
        p = Path(path)
        splits = _dict_splits(p)
        if splits:
            held = eval_split or next((s for s in _SPLIT_NAMES if s in splits), "")
            if not held:
                raise MessageError(f"{p} has splits {splits}; set eval_split to the held-out one")
            train, evals = self._rows(p, train_split), self._rows(p, held)
        elif eval_path:
            train, evals = self._rows(p), self._rows(Path(eval_path))
        else:
            rows = self._rows(p)
            random.Random(seed).shuffle(rows)
            k = min(eval_size, len(rows) // 5)
            evals, train = rows[:k], rows[k:]
        random.Random(seed + 1).shuffle(train)
        if not train or not evals:
            raise MessageError(f"task data {p} gives {len(train)} training and {len(evals)} held-out tasks; "
                               "both splits need at least one (add rows, or set eval_path / eval_size)")
        self._splits = {"train": train, "eval": evals}

    def _rows(self, path: Path, split: str | None = None) -> list[Task]:
        prompt_f, answer_f, meta_f = self.fields
        out = []
        for n, row in enumerate(read_rows(path, split)):
            prompt, answer, meta = row.get(prompt_f), row.get(answer_f), row.get(meta_f) or {}
            if not isinstance(prompt, str) or not prompt:
                raise MessageError(f"{path} row {n}: field {prompt_f!r} must be a non-empty string")
            if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
                raise MessageError(f"{path} row {n}: field {answer_f!r} must be a string or a number")
            if not isinstance(meta, dict):
                raise MessageError(f"{path} row {n}: field {meta_f!r} must be a JSON object")
            problem = task_data_problem(str(answer), self.kind, meta)
            if problem:
                raise MessageError(f"{path} row {n}: {problem}; fix that row or leave it out")
            out.append(Task(id="", prompt=prompt, answer=str(answer), kind=self.kind, metadata=meta))
        return out

    def size(self, split: str) -> int:
        return len(self._splits[split])

    def task(self, split: str, index: int) -> Task:
        items = self._splits[split]
        i = index % len(items)
        t = items[i]
        return Task(id=f"{self.name}-{split}-{i}", prompt=t.prompt, answer=t.answer, kind=self.kind,
                    metadata=t.metadata)


def jsonl_source(seed: int = 0, **options) -> FileTasks:
    if "path" not in options:
        raise MessageError("task kind 'jsonl' needs the option path = '<file.jsonl>'")
    return FileTasks(seed=seed, **options)


def dataset_source(seed: int = 0, **options) -> FileTasks:
    if "path" not in options:
        raise MessageError("task kind 'dataset' needs the option path = '<file.parquet or save_to_disk folder>'")
    return FileTasks(seed=seed, **options)
