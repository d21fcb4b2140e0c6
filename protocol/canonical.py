"""Canonical bytes of a JSON-able value: the exact bytes that get signed.

Rules: UTF-8 JSON, object keys sorted, no insignificant whitespace, no NaN or infinity,
integers as integers, floats with Python's shortest round-trip repr. Every party in swarmrl
is Python and goes through this one function, so signer and verifier always agree.
Binary data never appears here directly: message schemas carry it as base64 or hex strings.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.errors import MessageError


def canonical_bytes(value: Any) -> bytes:
    """Return the canonical encoding of `value` (dicts, lists, str, int, float, bool, None)."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise MessageError(f"value cannot be encoded canonically: {exc}") from exc
