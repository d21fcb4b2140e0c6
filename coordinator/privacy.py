"""What anonymous readers, and workers, may learn: the public form of every read-only answer.

The attacker reads every public endpoint (docs/design.md, trust model). Without the operator
token (`coordinator.auth.is_operator`) a reader of GET /v1/stats and /v1/dashboard/* gets:

| field | anonymous | why |
|---|---|---|
| a worker's `address` | removed | contributors' IP addresses are theirs |
| `full_check`, a worker's `full_checked`, `full_check_share`, `clean_checks` | removed | a worker that learns which of its submissions were fully checked (directly, or by diffing counters after each verdict) learns when cheating would have passed |
| a worker's `check_rate` | removed (GET /v1/workers/{id}: null) | it halves at every `halve_every`-th clean full check: read after each verdict, it says which submission was fully checked, and when the rate reached its floor |
| the buffer's `by_state` (held, ready, handed); `depth` counts held and ready together | removed | a worker watching the number of ready groups right after its own verdict learned whether its submission was fully checked (ready at once) or not (held) |
| a rollout's `buffer` | removed | a group accepted without a full check is `held` until its worker's next clean full check, one accepted by a full check is `ready` |
| paths on the coordinator's machine (the archive's, in `/overview` and the audit commands) | removed (`<archive>` in the commands) | the layout of the operator's machine is not the public's |
| a verdict's checks | only the failed checks' names | the statistics say how far a submission was from each threshold, and which checks ran says whether it was a full check |
| `reason`, `ban_reason` | `public_reason`: the failed checks' names, any other number replaced by `#` | the verifier's reasons quote the numbers the thresholds were compared with |
| an undecided submission | refused (403) | its state (and whether it is queued for a full check) is the verifier's business until it decides |
| GET /metrics | not served by the deployments' TLS proxy (deploy/proxy/coordinator.conf: 404); Prometheus scrapes the coordinator's own port inside the deployment | its counters by outcome (verdicts, groups unused by cause, `stale_held` among them), read around one's own verdicts, tell what the rows above hide |

The submission statuses a worker polls (GET /v1/submissions/{id}, /v1/submission-statuses)
carry `public_reason` whoever asks: a worker learns that it failed, and which check, never by
how much. The answers to a worker's own signed requests carry no standing either: a
registration's `check_rate` is null, a heartbeat's answer has none
(`coordinator.service.join`). The operator token unlocks everything; the Parquet archive and `swarmrl audit` keep
the full record for auditors.
"""

from __future__ import annotations

import re
from typing import Any

from coordinator.errors import Forbidden
from protocol.envelope import IDENT_CHARS

# the prefixes the coordinator and the verifier put before a verdict's checks (`verifier.judge.make_verdict`
# marks a rejection that is no doing of the worker): kept, as they say what the rejection means to it
_PREFIX = re.compile(rf"^(worker banned: )?(submission [{IDENT_CHARS}]+ rejected: )?(not counted against the worker: )?")
_CHECK = re.compile(r"(?:^|; )([a-z_]{1,64}): ")
_NAMES_ONLY = re.compile(r"^failed [a-z_]+(, [a-z_]+)*$|^rejected by the verifier$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
HIDDEN_WORKER_FIELDS = ("address", "full_checked", "full_check_share", "clean_checks", "check_rate")
HIDDEN_ROLLOUT_FIELDS = ("full_check", "buffer")
ARCHIVE_PLACEHOLDER = "<archive>"


def public_reason(reason: str | None) -> str:
    """A reason without its numbers: 'proof: 40/128 exponents differ; sampling: ...' becomes
    'failed proof, sampling'; the prefixes the coordinator adds ('worker banned: ', 'submission
    S rejected: ') stay; any other text keeps its words with every number replaced by '#'."""
    if not reason:
        return ""
    prefix = _PREFIX.match(reason)
    head, rest = reason[:prefix.end()], reason[prefix.end():]
    if _NAMES_ONLY.match(rest):
        return head + rest
    if _CHECK.match(rest):
        return head + "failed " + ", ".join(dict.fromkeys(_CHECK.findall(rest)))
    return head + _NUMBER.sub("#", rest)


def failed_check_names(checks: list[dict[str, Any]] | None) -> list[str]:
    return [str(c.get("name", "?")) for c in checks or [] if isinstance(c, dict) and not c.get("passed")]


def worker_row(row: dict[str, Any], full: bool) -> dict[str, Any]:
    if full:
        return row
    out = {k: v for k, v in row.items() if k not in HIDDEN_WORKER_FIELDS}
    if "ban_reason" in out:
        out["ban_reason"] = public_reason(out["ban_reason"])
    return out


def stats(data: dict[str, Any], full: bool) -> dict[str, Any]:
    """GET /v1/stats."""
    if full:
        return data
    buffer = {k: v for k, v in (data.get("buffer") or {}).items() if k != "by_state"}
    return {**data, "buffer": buffer, "workers": [worker_row(w, False) for w in data.get("workers", [])]}


def audit_command(command: str) -> str:
    """An audit command (`swarmrl audit ... --archive <path>`) without the server's path."""
    head, sep, _path = command.partition(" --archive ")
    return head + sep + ARCHIVE_PLACEHOLDER if sep else command


def overview(data: dict[str, Any], full: bool) -> dict[str, Any]:
    """/v1/dashboard/overview: the archive without its path."""
    if full or "archive" not in data:
        return data
    return {**data, "archive": {k: v for k, v in data["archive"].items() if k != "path"}}


def rejection(row: dict[str, Any], full: bool) -> dict[str, Any]:
    """A row of /v1/dashboard/rejections."""
    if full:
        return row
    out = {k: v for k, v in row.items() if k != "full_check"}
    out["reason"] = public_reason(out.get("reason"))
    if "audit_command" in out:
        out["audit_command"] = audit_command(out["audit_command"])
    return out


def rollout(view: dict[str, Any], full: bool) -> dict[str, Any]:
    """/v1/dashboard/rollouts/{id}: refused while undecided; then outcome and failed checks' names."""
    if full:
        return view
    if view.get("status") == "queued":
        raise Forbidden("undecided", f"submission {view.get('submission_id')} is not decided yet; its view is public "
                                     "once the verifier has decided (the operator token shows it now)")
    out = {k: v for k, v in view.items() if k not in HIDDEN_ROLLOUT_FIELDS}
    out["reason"] = public_reason(out.get("reason"))
    out["audit_commands"] = [audit_command(c) for c in view.get("audit_commands") or []]
    v = view.get("verdict")
    if v is not None:
        failed = failed_check_names(v.get("checks"))
        out["verdict"] = {"accepted": v.get("accepted"), "reason": public_reason(v.get("reason")),
                          "checks": [{"name": n, "passed": False} for n in failed], "failed_checks": failed,
                          "verifier": v.get("verifier"), "signed_at": v.get("signed_at")}
    return out
