"""Hard bounds on what the coordinator's answers may hold (`protocol.messages`), and the
coordinator's config held to the same bounds, so that a coordinator never produces a message
its own schema refuses.

Each receiver parses the coordinator's answers with these types: a list without a bound (1e6
relays, leases, verifier keys), a reason of megabytes, a run id no signed message may carry, a
proof-of-work difficulty of 200 bits were all valid `RunInfo`/`LeaseResponse`/... before, and
each receiver had to notice on its own (the worker did, for some).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from coordinator.config import CoordinatorConfig
from protocol.identity import KeyPair
from protocol.messages import (
    MAX_GROUP_SIZE,
    MAX_LEASES_PER_REQUEST,
    MAX_REASON_TEXT,
    MAX_RELAYS,
    MAX_TASK_DATA_BYTES,
    MAX_VERIFIER_KEYS,
    LeaseResponse,
    RunInfo,
    SubmissionResponse,
    SubmissionStatus,
    TrainingGroup,
    WorkerInfo,
)

HEX = "ab" * 32


def _run(**kw) -> dict:
    base = dict(run_id="run", coordinator_key=HEX, operator_key=HEX, verifier_keys=[HEX], relays=[],
                current_policy_version=None, async_window=2)
    return {**base, **kw}


@pytest.mark.parametrize("field,value", [
    ("run_id", "has space"), ("run_id", "r" * 129), ("run_id", ""), ("run_id", "run/../x"),
    ("relays", ["http://r"] * (MAX_RELAYS + 1)), ("relays", ["http://" + "r" * 5000]),
    ("verifier_keys", [HEX] * (MAX_VERIFIER_KEYS + 1)),
    ("pow_difficulty", 33), ("pow_difficulty", -1), ("pow_challenge", "c" * 257),
    ("tokenizer_ref", "t" * 5000), ("current_policy_version", -1), ("async_window", -1),
    ("p2p_bootstrap", ["/ip4/1.2.3.4/tcp/1/p2p/" + "x" * 5000]),
])
def test_run_info_refuses_what_no_coordinator_serves(field, value):
    RunInfo.model_validate(_run())  # the base is valid
    with pytest.raises(ValidationError):
        RunInfo.model_validate(_run(**{field: value}))


def test_answers_refuse_unbounded_lists_and_text():
    env = {"kind": "lease"}  # never reached: the list's length is checked first
    with pytest.raises(ValidationError, match="at most"):
        LeaseResponse.model_validate({"leases": [env] * (MAX_LEASES_PER_REQUEST + 1)})
    long = "x" * (MAX_REASON_TEXT + 1)
    with pytest.raises(ValidationError):
        SubmissionResponse(submission_id="s", status="queued", message=long)
    with pytest.raises(ValidationError):
        SubmissionStatus(submission_id="s", worker_id="w", status="rejected", reason=long)
    with pytest.raises(ValidationError):
        WorkerInfo(worker_id="w", status="banned", accepted=0, rejected=0, accepted_tokens=0, ban_reason=long)
    for bad_id in ("a b", "x" * 129, ""):  # ids are the protocol's Ident, as in every signed message
        with pytest.raises(ValidationError):
            SubmissionResponse(submission_id=bad_id, status="queued")
        with pytest.raises(ValidationError):
            SubmissionStatus(submission_id="s", worker_id=bad_id, status="queued")
    group = dict(submission_id="s", task_id="t", worker_id="w", policy_version=0, prompt_token_ids=[1],
                 completions=[[1]] * 2, finish_reasons=["eos"] * 2, rewards=[0.0, 1.0], advantages=[-1.0, 1.0],
                 temperature=1.0)
    TrainingGroup.model_validate(group)
    for field, value in (("completions", [[1]] * (MAX_GROUP_SIZE + 1)), ("worker_id", "w w"), ("policy_version", -1)):
        with pytest.raises(ValidationError):
            TrainingGroup.model_validate({**group, field: value})


@pytest.mark.parametrize("field,value", [
    ("run_id", "has space"), ("run_id", "r" * 129), ("relays", ["http://r"] * (MAX_RELAYS + 1)),
    ("relays", ["http://" + "r" * 5000]), ("model", "m" * 5000), ("async_window", 2**31),
    ("verifier_keys", [HEX] * (MAX_VERIFIER_KEYS + 1)), ("p2p", {"bootstrap": ["/ip4/1.2.3.4/" + "x" * 5000]}),
    ("tasks", {"kind": "k" * 201}),  # RunInfo.tasks.kind (TaskSpec) carries at most 200
    ("tasks", {"options": {"system_prompt": "x" * MAX_TASK_DATA_BYTES}}),  # TaskSpec.options: MAX_TASK_DATA_BYTES
])
def test_the_coordinators_config_refuses_what_its_answers_could_not_carry(tmp_path, field, value):
    base = dict(operator_key=HEX, model=str(tmp_path), data_dir=tmp_path)
    CoordinatorConfig.model_validate(base)
    with pytest.raises(ValidationError):
        CoordinatorConfig.model_validate({**base, field: value})


def test_a_coordinator_at_its_configs_limits_serves_a_valid_run_info(make_swarm):
    """The longest run id, the most and longest relays and verifier keys, the hardest proof of
    work its config accepts: GET /v1/run still parses as RunInfo (and the leases of that run are
    signed and valid)."""
    keys = [KeyPair.from_seed(bytes([i]) * 32).public.hex for i in range(MAX_VERIFIER_KEYS)]
    s = make_swarm(run_id="r" * 120 + "-._:AZ09", relays=[f"http://relay{i}.example/" + "p" * 1900
                                                           for i in range(MAX_RELAYS)],
                   verifier_keys=keys, join={"pow_difficulty": 32})
    r = s.http.get("/v1/run")
    assert r.status_code == 200, r.text
    info = RunInfo.model_validate_json(r.content)
    assert info.run_id == s.cfg.run_id and len(info.relays) == MAX_RELAYS and info.pow_difficulty == 32


def test_a_coordinator_whose_task_source_gives_a_task_over_the_bound_does_not_start(make_swarm):
    """A plugin (or reasoning-gym) task over MAX_TASK_DATA_BYTES is found by the start-up check of
    the first tasks of each split (`coordinator.taskbook`) and named: no claim could carry it."""
    from protocol.errors import MessageError

    with pytest.raises(MessageError, match=r"task cd-train-0 is refused: .* over the protocol's bound"):
        make_swarm(tasks={"kind": "tests.taskplugin:make_source",
                          "options": {"pad": MAX_TASK_DATA_BYTES, "scorer": "answer:exact"}})
