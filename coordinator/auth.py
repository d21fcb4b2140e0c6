"""Turning request bytes into a verified, typed message, or a clear refusal.

Order (the cheapest refusals first, and nothing is written before all of them pass):
body size (413) -> JSON and envelope shape (400/422) -> the kind and signer rules
(403 when the key may not send this kind) -> the run and audience the envelope is signed
for (422 `wrong_scope`: another run, or a message for another role) -> signature (401) ->
clock skew (400) -> the body against its schema (422). Replay protection (the nonce) is checked by the service inside the
same transaction as the state change, so a refused request leaves no nonce behind and an
accepted one can never be replayed, even across a restart.

`open_signed` is `protocol.envelope.open_envelope` with its errors turned into HTTP answers.
The opened envelope keeps the canonical bytes of the body that the signature covers
(`Opened.canonical_body`): intake takes the submission's training payload from them
(`group_json`) instead of encoding 4,000 token ids a second time.
"""

from __future__ import annotations

import json
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from coordinator.errors import BadRequest, Forbidden, Invalid, Unauthorized
from protocol.envelope import Envelope, Opened, open_envelope
from protocol.errors import MessageError, ScopeError, SignatureError, StaleMessageError

B = TypeVar("B", bound=BaseModel)


def parse_envelope(raw: bytes) -> Envelope:
    return parse_body(raw, Envelope, "envelope", "a signed envelope")


def parse_body(raw: bytes, model: type[B], what: str, expected: str) -> B:
    """A request body as `model`; BadRequest when it is not JSON of that shape at all,
    Invalid (`bad_<what>`) naming the first wrong field otherwise."""
    if not raw:
        raise BadRequest("malformed", f"empty request body; send {expected} as JSON")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid" or first.get("type") == "model_type":
            raise BadRequest("malformed", f"request body is not a JSON {what}: {first.get('msg', exc)}") from None
        loc = ".".join(str(p) for p in first.get("loc", ())) or what
        raise Invalid(f"bad_{what}", f"invalid {what}: {loc}: {first.get('msg')}") from None


def open_signed(env: Envelope, kind: str, body_type: type[B], *, now: float | None, max_skew_s: float | None,
                run_id: str, audience: str, allowed_signers: set[str] | frozenset[str] | None = None,
                role: str = "") -> Opened[B]:
    """Verify `env` as a `kind` message of run `run_id` addressed to `audience`;
    `allowed_signers` (hex keys) restricts who may send it."""
    if env.kind != kind:
        raise Invalid("wrong_kind", f"expected a {kind!r} envelope, got {env.kind!r}")
    if allowed_signers is not None and env.signer not in allowed_signers:
        who = role or "an authorised key"
        raise Forbidden("unauthorised_key", f"{kind} must be signed by {who}; key {env.signer[:16]}… is not one")
    try:
        return open_envelope(env, kind, body_type, now=now, max_skew_s=max_skew_s, run_id=run_id, audience=audience)
    except ScopeError as exc:
        raise Invalid("wrong_scope", str(exc)) from None
    except SignatureError as exc:
        raise Unauthorized("bad_signature", str(exc)) from None
    except StaleMessageError as exc:
        raise BadRequest("stale", str(exc)) from None
    except MessageError as exc:
        raise Invalid("bad_body", str(exc)) from None


# In canonical JSON a completion is {"finish_reason":"...","proof":"<base64>","token_ids":[...]}.
_COMPLETION = re.compile(rb'\{"finish_reason":"(eos|length)","proof":"[A-Za-z0-9+/=]*","token_ids":(\[[0-9,]*\])\}')


def group_json(canonical_body: bytes, n_completions: int) -> str | None:
    """The compact training payload {"completions": [[ids]...], "finish_reasons": [...]} cut out
    of a submission's canonical body, or None if it does not have the expected shape."""
    start = canonical_body.find(b'"completions":[')
    if start < 0:
        return None
    found = _COMPLETION.findall(canonical_body, start)
    if len(found) != n_completions:
        return None
    return ('{"completions":[' + ",".join(ids.decode() for _, ids in found) + '],"finish_reasons":['
            + ",".join('"' + r.decode() + '"' for r, _ in found) + "]}")


def json_detail(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()
