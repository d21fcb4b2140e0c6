"""The one bound on a task's data (`protocol.messages.MAX_TASK_DATA_BYTES`: its answer, kind and
metadata as the coordinator's claim answer carries them to a verifier, `task_data_bytes`),
held by every task source and by the wire types.

A task over it would make every claim that carries it too large for the verifier's claim cap
(`verifier.service.claim_answer_cap`) and the claim `Unavailable` for ever
(tests/unit/coordinator/test_verifier_claim_cap.py). So a task file row over it is a load error
naming the file and row, a generated or plugin task over it is refused when it is asked for,
and a verification job or task spec over it does not validate."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from protocol.errors import MessageError
from protocol.messages import MAX_TASK_DATA_BYTES, TaskSpec, VerificationJob, task_data_bytes
from protocol.tasks import get_source

KIND = "answer:exact"   # what a jsonl source's tasks carry by default


def _rows(n=20, **extra):
    return [{"prompt": f"{i}+1=", "answer": str(i + 1), "metadata": {"i": i}} for i in range(n)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pad_to(total: int, answer: str, kind: str) -> dict:
    """Metadata {"tests": "x..."} that makes the task's data exactly `total` bytes."""
    base = task_data_bytes(answer, kind, {"tests": ""})
    return {"tests": "x" * (total - base)}


def test_the_measure_is_the_bytes_of_the_json_the_claim_answer_carries():
    assert task_data_bytes("7", "answer:exact", {"a": [1, 2.5]}) == len('"7"') + len('"answer:exact"') + len('{"a":[1,2.5]}')
    assert task_data_bytes("é", "k", {}) == len('"\\u00e9"') + len('"k"') + 2   # ASCII JSON, as the coordinator writes it
    with pytest.raises(ValueError):
        task_data_bytes("1", "k", {"x": float("nan")})


def test_a_task_file_row_at_the_bound_loads_and_one_over_it_is_refused_naming_file_and_row(tmp_path):
    rows = _rows()
    rows[7] = {"prompt": "big", "answer": "1", "metadata": _pad_to(MAX_TASK_DATA_BYTES, "1", KIND)}
    src = get_source("jsonl", options={"path": str(_jsonl(tmp_path / "ok.jsonl", rows)), "eval_size": 2})
    big = [t for s in ("train", "eval") for t in (src.task(s, i) for i in range(src.size(s))) if t.prompt == "big"]
    assert task_data_bytes(big[0].answer, big[0].kind, big[0].metadata) == MAX_TASK_DATA_BYTES
    rows[7]["metadata"]["tests"] += "x"
    f = _jsonl(tmp_path / "code.jsonl", rows)
    with pytest.raises(MessageError, match=rf"code\.jsonl row 7: .*{MAX_TASK_DATA_BYTES + 1} bytes.*MAX_TASK_DATA_BYTES"):
        get_source("jsonl", options={"path": str(f), "eval_size": 2})


def test_a_task_file_row_whose_metadata_is_not_strict_json_is_refused_at_load(tmp_path):
    rows = _rows()
    f = tmp_path / "nan.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + '{"prompt": "p", "answer": "1", "metadata": {"x": NaN}}\n'
                 + "".join(json.dumps(r) + "\n" for r in rows[3:]))
    with pytest.raises(MessageError, match=r"nan\.jsonl row 3: .*JSON values only"):
        get_source("jsonl", options={"path": str(f), "eval_size": 2})


def test_a_plugin_task_over_the_bound_is_refused_when_asked_for():
    ok = get_source("tests.taskplugin:make_source", options={"pad": 1000})
    assert len(ok.task("train", 0).metadata["pad"]) == 1000
    big = get_source("tests.taskplugin:make_source", options={"pad": MAX_TASK_DATA_BYTES})
    with pytest.raises(MessageError, match=r"task cd-train-3 .* over the protocol's bound .*MAX_TASK_DATA_BYTES"):
        big.task("train", 3)


def test_a_rescored_and_prompted_source_is_held_to_the_bound_too():
    big = get_source("tests.taskplugin:make_source", options={"pad": MAX_TASK_DATA_BYTES, "system_prompt": "be brief",
                                                              "scorer": "answer:exact"})
    with pytest.raises(MessageError, match="MAX_TASK_DATA_BYTES"):
        big.task("eval", 0)


def _job(answer: str, kind: str, metadata: dict) -> dict:
    from protocol.envelope import Envelope

    env = Envelope.model_construct()
    return dict(submission_id="s-1", worker_id="w-1", lease=env, submission=env, rewards=[1.0],
                task_answer=answer, task_kind=kind, task_metadata=metadata, full_check=False)


def test_a_verification_job_over_the_bound_does_not_validate():
    VerificationJob.model_validate(_job("1", KIND, _pad_to(MAX_TASK_DATA_BYTES, "1", KIND)))
    with pytest.raises(ValidationError, match="MAX_TASK_DATA_BYTES"):
        VerificationJob.model_validate(_job("1", KIND, _pad_to(MAX_TASK_DATA_BYTES + 1, "1", KIND)))


def test_task_options_over_the_bound_do_not_validate():
    TaskSpec(kind="jsonl", seed=0, options={"path": "x.jsonl", "system_prompt": "x" * 1000})
    with pytest.raises(ValidationError, match="MAX_TASK_DATA_BYTES"):
        TaskSpec(kind="jsonl", seed=0, options={"path": "x.jsonl", "system_prompt": "x" * MAX_TASK_DATA_BYTES})


def test_a_group_of_the_largest_size_whose_task_data_is_at_the_bound_is_scored_in_the_sandbox():
    """A group of MAX_GROUP_SIZE at the bound must pass through the scorer sandbox at the
    protocol's limits (DEFAULT_LIMITS), or an honest group at the bound scores 0 at the
    coordinator and the verifier alike. When the sandbox carried a task's metadata once per
    completion, at 1 MiB a group of 192 failed (every reward 0, after the 20 s batch timeout);
    it now sends it once per batch (tests/unit/protocol/test_sandbox_task_once.py)."""
    from protocol.messages import MAX_GROUP_SIZE
    from protocol.sandbox import Sandbox, ScoreItem

    meta = _pad_to(MAX_TASK_DATA_BYTES, "7", KIND)
    sb = Sandbox().start(warm=(KIND,))
    try:
        out = sb.score(KIND, [ScoreItem("7", "7", meta) for _ in range(MAX_GROUP_SIZE)])
    finally:
        sb.close()
    assert [r.reward for r in out] == [1.0] * MAX_GROUP_SIZE, {r.reason for r in out}
