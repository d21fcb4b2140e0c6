"""`protocol.rawjson`: answers assembled from stored JSON parts are exactly what their wire types
parse, and a type's field list decides what may be assembled (the coordinator's claim and batch
answers run through it end to end in tests/unit/coordinator)."""

from __future__ import annotations

import json

import pytest

from protocol.errors import MessageError
from protocol.messages import (
    BatchResponse,
    ClaimResponse,
    Completion,
    EngineInfo,
    Submission,
    TrainingGroup,
)
from protocol.rawjson import TrainingPayload, batch_response, claim_response, splice, training_group

SUB = Submission(lease_id="l-1", policy_version=3, engine=EngineInfo(name="t"),
                 completions=[Completion(token_ids=[5, 6, 1], finish_reason="eos", proof="AA=="),
                              Completion(token_ids=[7] * 4, finish_reason="length", proof="AA==")])
SMALL = {"submission_id": "s-1", "task_id": "t-1", "worker_id": "w", "policy_version": 3,
         "prompt_token_ids": [2, 3], "temperature": 0.9}


def test_a_training_group_from_its_stored_parts_is_the_typed_group():
    payload = TrainingPayload.of(SUB).model_dump_json()
    assert json.loads(payload) == {"completions": [[5, 6, 1], [7, 7, 7, 7]], "finish_reasons": ["eos", "length"]}
    group = training_group(SMALL, rewards="[1.0,0.0]", advantages="[1.0,-1.0]", payload=payload)
    want = TrainingGroup(**SMALL, completions=[[5, 6, 1], [7] * 4], finish_reasons=["eos", "length"],
                         rewards=[1.0, 0.0], advantages=[1.0, -1.0])
    assert TrainingGroup.model_validate_json(group) == want
    batch = BatchResponse.model_validate_json(batch_response([group, group], 4))
    assert batch.groups == [want, want] and batch.dropped_stale == 4
    assert ClaimResponse.model_validate_json(claim_response([])).jobs == []


def test_the_type_refuses_a_part_it_does_not_have_or_a_field_left_out():
    with pytest.raises(MessageError, match=r"unknown \['rewardz'\]"):
        splice(TrainingGroup, SMALL, {"rewardz": "[]", "advantages": "[]"}, members=(TrainingPayload, "{}"))
    with pytest.raises(MessageError, match=r"missing \['advantages'\]"):
        splice(TrainingGroup, SMALL, {"rewards": "[]"}, members=(TrainingPayload, "{}"))
    with pytest.raises(MessageError, match="not a JSON object"):
        training_group(SMALL, rewards="[]", advantages="[]", payload="[1]")
