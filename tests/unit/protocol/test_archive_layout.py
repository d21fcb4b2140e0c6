"""`protocol.archive`: the one declaration of the archive's layout that the coordinator writes and
`swarmrl audit` reads (both sides run end to end in tests/unit/audit and tests/integration/test_audit_cli.py)."""

from __future__ import annotations

import json

import pytest

from protocol.archive import (
    RunDescription,
    checkpoint_dir,
    checkpoint_versions,
    part_name,
    parts,
    table_folder,
    version_of,
)
from protocol.errors import MessageError

# a run.json as the coordinator wrote it before protocol.archive declared it (docs/archive.md)
OLD_RUN_JSON = {"format": 1, "run_id": "demo-0", "coordinator_key": "aa", "operator_key": "bb", "verifier_keys": ["cc"],
                "model": "/m", "chat_template": False, "tasks": {"kind": "arithmetic", "seed": 0, "options": {}},
                "sampling": {"temperature": 1.0, "max_tokens": 8}, "group_size": 4, "async_window": 2,
                "written_at": 1795323737.86}


def test_folders_sort_by_version_and_only_complete_checkpoints_count(tmp_path):
    assert table_folder(tmp_path, "verdicts", 12) == tmp_path / "verdicts" / "v000012"
    assert version_of("v000012") == 12 and version_of(".fetch") is None and version_of("v12a") is None
    for v in (3, 12):
        folder = table_folder(tmp_path, "submissions", v)
        folder.mkdir(parents=True)
        (folder / part_name(1.5, f"s-{v}")).write_bytes(b"")
        checkpoint_dir(tmp_path, v).mkdir(parents=True)
    (checkpoint_dir(tmp_path, 12) / ".manifest.json").write_text("{}")
    assert [p.name for p in parts(tmp_path, "submissions")] == ["part-1500-s-3.parquet", "part-1500-s-12.parquet"]
    assert [p.parent.name for p in parts(tmp_path, "submissions", lo=4)] == ["v000012"]
    assert checkpoint_versions(tmp_path) == [12]


def test_run_json_round_trips_and_reads_what_older_and_newer_writers_wrote(tmp_path):
    p = tmp_path / "run.json"
    p.write_text(json.dumps({**OLD_RUN_JSON, "added_later": 1}))
    run = RunDescription.load(p)
    assert (run.run_id, run.tasks.kind, run.verifier_keys, run.async_window) == ("demo-0", "arithmetic", ["cc"], 2)
    p.write_text(run.to_json())
    assert RunDescription.load(p) == run
    p.write_text('{"run_id": 1}')
    with pytest.raises(MessageError, match="not a readable run description"):
        RunDescription.load(p)
