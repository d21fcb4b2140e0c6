"""JSON of wire types assembled from parts that are JSON already.

The coordinator answers a verifier's claim with the signed envelopes it stored (large: token
ids and base64 proofs) and a trainer's batch request with the token ids it stored at intake.
Decoding those parts only to encode them again would cost more than the rest of the request,
so they are spliced in as text. What may be spliced, and where, is decided by the wire type
the answer is (`VerificationJob`, `ClaimResponse`, `TrainingGroup`, `BatchResponse` in
`protocol.messages`): `splice` takes the type, encodes the small values itself and places
the JSON parts under the type's own field names, refusing a name the type does not have or a
required field left out, so the type stays the one owner of its JSON. The parts are JSON this
process wrote or validated before it stored them; tests parse every assembled answer back
with its type.

`TrainingPayload` is the part of a `TrainingGroup` that comes from the worker's submission
(token ids and finish reasons): intake encodes it once, with the type's serializer, and stores
it; a batch splices it into each group.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from protocol.errors import MessageError
from protocol.messages import (
    BatchResponse,
    ClaimResponse,
    Strict,
    Submission,
    TrainingGroup,
    VerificationJob,
)


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def splice(model: type[BaseModel], values: dict[str, Any], raw: dict[str, str], *,
           members: tuple[type[BaseModel], str] | None = None) -> str:
    """The JSON object of a `model`: `values` encoded here, `raw` (name -> JSON text) placed as
    they are, and `members` (a model whose fields are some of `model`'s, and the JSON object of
    one) merged in. MessageError for a name `model` lacks or a required field none of them gives."""
    given = set(values) | set(raw) | (set(members[0].model_fields) if members else set())
    fields = model.model_fields
    unknown = sorted(given - set(fields))
    missing = sorted(n for n, f in fields.items() if f.is_required() and n not in given)
    if unknown or missing:
        raise MessageError(f"cannot assemble a {model.__name__}: unknown {unknown}, missing {missing}")
    parts = [f"{_encode(name)}:{raw[name] if name in raw else _encode(values[name])}"
             for name in fields if name in raw or name in values]
    if members is not None:
        inner = members[1].strip()
        if not (inner.startswith("{") and inner.endswith("}")):
            raise MessageError(f"a stored {members[0].__name__} is not a JSON object")
        if inner != "{}":
            parts.append(inner[1:-1])
    return "{" + ",".join(parts) + "}"


def json_list(items: list[str]) -> str:
    """A JSON array of items that are JSON already."""
    return "[" + ",".join(items) + "]"


class TrainingPayload(Strict):
    """The fields of a `TrainingGroup` that come from the worker's submission, stored at intake."""

    completions: list[list[int]]
    finish_reasons: list[str]

    @classmethod
    def of(cls, sub: Submission) -> "TrainingPayload":
        """From a validated submission (no second validation of its token ids)."""
        return cls.model_construct(completions=[c.token_ids for c in sub.completions],
                                   finish_reasons=[c.finish_reason for c in sub.completions])


def training_group(values: dict[str, Any], *, rewards: str, advantages: str, payload: str) -> str:
    """A `TrainingGroup`: `values` are its small fields, `rewards` and `advantages` the stored JSON
    lists, `payload` the stored `TrainingPayload`."""
    return splice(TrainingGroup, values, {"rewards": rewards, "advantages": advantages},
                  members=(TrainingPayload, payload))


def batch_response(groups: list[str], dropped_stale: int) -> str:
    return splice(BatchResponse, {"dropped_stale": int(dropped_stale)}, {"groups": json_list(groups)})


def verification_job(values: dict[str, Any], *, lease: str, submission: str) -> str:
    """A `VerificationJob`: `values` are its small fields, `lease` and `submission` the stored envelopes."""
    return splice(VerificationJob, values, {"lease": lease, "submission": submission})


def claim_response(jobs: list[str]) -> str:
    return splice(ClaimResponse, {}, {"jobs": json_list(jobs)})
