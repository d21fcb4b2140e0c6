"""The rollout archive's layout and schemas: the contract between the coordinator, which writes
it (`coordinator.archive`: the Parquet rows; `coordinator.checkpoints`: run.json and the kept
checkpoints), and every reader (`verifier.audit`; pandas or DuckDB users, for whom
docs/archive.md describes every column).

    <archive>/
      run.json                                 `RunDescription`: run id, keys, task source, ...
      submissions/v000012/part-<ms>-<id>.parquet   `SUBMISSIONS_SCHEMA`, one row per submission
      verdicts/v000012/part-<ms>-<id>.parquet      `VERDICTS_SCHEMA`, one row per verdict
      checkpoints/v000012/                     version 12's files and MANIFEST_NAME, the
                                               operator-signed manifest (complete only with it)
      checkpoints/.fetch/                      downloads in progress (never read)

Folders are zero-padded version numbers (`version_folder`: a listing sorts), never
`key=value`, so a reader never mistakes a folder for a column. Files are written atomically
and rows at least once (`submission_id` is unique: readers de-duplicate on it). Which
checkpoints are kept (retention, the evidence budget of rejected submissions) is the
coordinator's policy (`coordinator.checkpoints`), not part of the layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.errors import MessageError
from protocol.manifest import MANIFEST_NAME
from protocol.messages import TaskSpec

SUBMISSIONS = "submissions"
VERDICTS = "verdicts"
CHECKPOINTS = "checkpoints"
FETCH_DIR = ".fetch"
RUN_FILE = "run.json"
RUN_FORMAT = 1

SUBMISSIONS_SCHEMA = pa.schema([
    ("submission_id", pa.string()), ("lease_id", pa.string()), ("worker_id", pa.string()),
    ("task_id", pa.string()), ("task_index", pa.int64()), ("policy_version", pa.int64()),
    ("n_tokens", pa.int64()), ("received_at", pa.float64()), ("full_check", pa.bool_()),
    ("rewards", pa.list_(pa.float64())), ("advantages", pa.list_(pa.float64())),
    ("submission_envelope", pa.string()), ("lease_envelope", pa.string()),
])
VERDICTS_SCHEMA = pa.schema([
    ("submission_id", pa.string()), ("worker_id", pa.string()), ("policy_version", pa.int64()),
    ("status", pa.string()), ("reason", pa.string()), ("full_check", pa.bool_()),
    ("decided_at", pa.float64()), ("verdict_envelope", pa.string()),
])


def version_folder(version: int) -> str:
    """`v000012` for version 12."""
    return f"v{version:06d}"


def version_of(name: str) -> int | None:
    """The version a folder name stands for, or None when it names none."""
    return int(name[1:]) if name.startswith("v") and name[1:].isdigit() else None


def table_folder(root: Path, table: str, version: int) -> Path:
    """`<archive>/submissions/v000012` (table: SUBMISSIONS or VERDICTS)."""
    return Path(root) / table / version_folder(version)


def part_name(first_at_s: float, first_id: str) -> str:
    """The name of a Parquet part: the first row's time (ms) and id, so names sort by time."""
    return f"part-{int(first_at_s * 1000)}-{first_id}.parquet"


def parts(root: Path, table: str, lo: int | None = None, hi: int | None = None) -> list[Path]:
    """The Parquet parts of `table` for versions in [lo, hi] (None: unbounded), version by version."""
    base = Path(root) / table
    if not base.is_dir():
        return []
    out = []
    for folder in sorted(base.iterdir()):
        v = version_of(folder.name)
        if v is None or not folder.is_dir() or (lo is not None and v < lo) or (hi is not None and v > hi):
            continue
        out.extend(sorted(p for p in folder.glob("part-*.parquet") if p.is_file()))
    return out


def checkpoint_dir(root: Path, version: int) -> Path:
    """`<archive>/checkpoints/v000012` for version 12 (complete only when it holds MANIFEST_NAME)."""
    return Path(root) / CHECKPOINTS / version_folder(version)


def checkpoint_versions(root: Path) -> list[int]:
    """Versions complete in `<archive>/checkpoints/` (a folder holding its signed manifest)."""
    folder = Path(root) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(v for p in folder.iterdir()
                  if (v := version_of(p.name)) is not None and (p / MANIFEST_NAME).is_file())


class RunDescription(BaseModel):
    """`run.json`: what an auditor needs besides the rows, rewritten at every coordinator start
    (keys may be rotated). Fields a newer writer adds are ignored by older readers."""

    model_config = ConfigDict(extra="ignore")

    format: int = RUN_FORMAT
    run_id: str
    coordinator_key: str = Field(description="hex: signs leases")
    operator_key: str = Field(description="hex: signs policy manifests and eval reports")
    verifier_keys: list[str] = Field(default_factory=list, description="hex: whose verdicts count")
    model: str = Field("", description="the model whose tokenizer encodes prompts")
    chat_template: bool = False
    tasks: TaskSpec = Field(default_factory=lambda: TaskSpec(kind="", seed=0))
    sampling: dict[str, Any] = Field(default_factory=dict)
    group_size: int = 0
    async_window: int = 0
    written_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> "RunDescription":
        """Read `run.json`; FileNotFoundError when it is missing, MessageError when unreadable."""
        try:
            return cls.model_validate_json(Path(path).read_bytes())
        except FileNotFoundError:
            raise
        except (OSError, ValidationError) as exc:
            raise MessageError(f"{path} is not a readable run description: {exc}") from None
