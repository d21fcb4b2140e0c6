"""One rollout as an auditor reads it: prompt and completions decoded, rewards, every check.

Both places that show a single rollout build it here, so they show the same thing: the
coordinator's dashboard (from its database) and `swarmrl audit show` (from the Parquet
archive). The input is what both hold: the coordinator-signed lease, the worker-signed
submission and, once decided, the verifier-signed verdict (each an `Envelope` or its JSON),
plus the coordinator's rewards and advantages.

This is a display: it reads the envelopes' bodies without checking their signatures (the
dashboard serves what the coordinator already verified; `swarmrl audit reverify` checks
every signature again). It never raises on a malformed body it can still partly show;
fields it cannot read are None.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

from protocol.envelope import Envelope
from protocol.errors import ProtocolError
from protocol.identity import PublicKey


def _as_dict(env: Envelope | dict | str | None) -> dict | None:
    if env is None or env == "":
        return None
    if isinstance(env, Envelope):
        return env.model_dump(mode="json")
    if isinstance(env, str):
        return json.loads(env)
    return env


def peer_id_of(signer_hex: str | None) -> str | None:
    """The peer id of a hex public key (None if it is not one)."""
    if not signer_hex:
        return None
    try:
        return PublicKey.from_hex(signer_hex).peer_id
    except ProtocolError:
        return None


def _proof_bytes(b64: Any) -> int | None:
    if not isinstance(b64, str):
        return None
    try:
        return len(base64.b64decode(b64, validate=True))
    except ValueError:
        return None


def _decode(decode: Callable[[list[int]], str] | None, ids: Any) -> str | None:
    if decode is None or not isinstance(ids, list):
        return None
    try:
        return decode(ids)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError):
        return None


def _at(seq: Any, i: int) -> Any:
    return seq[i] if isinstance(seq, list) and i < len(seq) else None


def rollout_view(submission: Envelope | dict | str, lease: Envelope | dict | str | None,
                 verdict: Envelope | dict | str | None = None, *, rewards: list[float] | None = None,
                 advantages: list[float] | None = None,
                 decode: Callable[[list[int]], str] | None = None) -> dict[str, Any]:
    """A JSON-ready description of one rollout (see the module docstring)."""
    sub_env = _as_dict(submission) or {}
    lease_env = _as_dict(lease) or {}
    verdict_env = _as_dict(verdict)
    sub = sub_env.get("body") or {}
    lb = lease_env.get("body") or {}
    seeds = lb.get("seeds") or []
    claimed = sub.get("claimed_rewards")
    completions = []
    for i, c in enumerate(sub.get("completions") or []):
        ids = c.get("token_ids") if isinstance(c, dict) else None
        completions.append({
            "index": i, "seed": _at(seeds, i), "finish_reason": c.get("finish_reason") if isinstance(c, dict) else None,
            "n_tokens": len(ids) if isinstance(ids, list) else None, "token_ids": ids, "text": _decode(decode, ids),
            "reward": _at(rewards, i), "advantage": _at(advantages, i), "claimed_reward": _at(claimed, i),
            "proof_bytes": _proof_bytes(c.get("proof")) if isinstance(c, dict) else None,
        })
    prompt_ids = lb.get("prompt_token_ids")
    view: dict[str, Any] = {
        "worker_id": peer_id_of(sub_env.get("signer")),
        "lease_id": sub.get("lease_id"),
        "task_id": lb.get("task_id"),
        "policy_version": sub.get("policy_version"),
        "submitted_at": sub_env.get("timestamp"),
        "engine": sub.get("engine"),
        "lease": {k: lb.get(k) for k in ("run_id", "lease_id", "worker_id", "min_policy_version",
                                         "max_policy_version", "sampling", "eos_token_id", "issued_at",
                                         "expires_at")} | {"seeds": seeds},
        "prompt": {"token_ids": prompt_ids, "text": _decode(decode, prompt_ids)},
        "completions": completions,
        "mean_reward": (sum(rewards) / len(rewards)) if rewards else None,
        "verdict": None,
    }
    if verdict_env is not None:
        vb = verdict_env.get("body") or {}
        view["verdict"] = {
            "accepted": vb.get("accepted"), "full_check": vb.get("full_check"), "reason": vb.get("reason", ""),
            "checks": [{"name": c.get("name"), "passed": c.get("passed"), "stats": c.get("stats") or {},
                        "detail": c.get("detail", "")} for c in vb.get("checks") or [] if isinstance(c, dict)],
            "verifier": peer_id_of(verdict_env.get("signer")), "signed_at": verdict_env.get("timestamp"),
        }
    return view
