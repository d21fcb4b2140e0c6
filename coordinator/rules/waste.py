"""Waste: the share of accepted (verified) groups that never reached a training step, by cause,
and what they cost the workers that made them (issue 23). A pure function of the rows
`coordinator.store.submissions.waste` and `worker_spans` return; GET /v1/stats serves its
result as `waste`, the dashboard and `swarmrl demo`'s summary show it, bench/learning.py prints it.

| cause | where it is decided |
|---|---|
| stale | the buffer's floor passed the group before the trainer took it (`protocol.window.buffer_floor`) |
| stale_held | the same, while the group was held for its worker's next clean full check |
| ban | its worker was banned before the trainer took it (`submissions.drop_unconsumed`) |
| zero_advantage, pass_rate, trainer_stale | the trainer acknowledged it and said it will not train it (`BatchAck.unused`) |
| in_buffer | still in the buffer (held, ready, or handed out and not acknowledged): waste if the run ends now |

Taken = acknowledged by the trainer with no cause: trained, or in its inbox for the next step.

Worker-seconds: a group's tokens divided by its worker's measured rate (tokens it submitted
over the span from its first lease to its last submission, both on the coordinator's clock;
nothing the worker reports). A share of a worker's busy time, not the lease's wall time:
leases held side by side would count the same seconds several times.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CAUSES = ("stale", "stale_held", "ban", "zero_advantage", "pass_rate", "trainer_stale", "in_buffer")
STALE_CAUSES = ("stale", "stale_held", "trainer_stale")
WAITING = ("held", "ready", "handed")


def seconds_per_token(spans: Iterable[Any]) -> dict[str, float]:
    """worker id -> seconds of its time per submitted token (rows: worker_id, tokens, first, last)."""
    out = {}
    for r in spans:
        tokens, span = int(r.tokens or 0), float((r.last or 0.0) - (r.first or 0.0))
        if tokens > 0 and span > 0:
            out[r.worker_id] = span / tokens
    return out


def report(rows: Iterable[Any], spans: Iterable[Any]) -> dict[str, Any]:
    """The waste split: accepted groups, taken, and per cause groups / tokens / worker-seconds,
    with the shares of accepted groups unused and unused for staleness."""
    per_token = seconds_per_token(spans)
    causes = {k: {"groups": 0, "tokens": 0, "worker_s": 0.0} for k in CAUSES}
    accepted = taken = 0
    for r in rows:
        n, tokens = int(r.groups), int(r.tokens or 0)
        accepted += n
        cause = r.cause or ("in_buffer" if r.buffer in WAITING else None)
        if cause is None:
            taken += n
            continue
        c = causes.setdefault(cause, {"groups": 0, "tokens": 0, "worker_s": 0.0})
        c["groups"] += n
        c["tokens"] += tokens
        c["worker_s"] += tokens * per_token.get(r.worker_id, 0.0)
    unused = sum(c["groups"] for c in causes.values())
    stale = sum(causes[k]["groups"] for k in STALE_CAUSES)
    for c in causes.values():
        c["worker_s"] = round(c["worker_s"], 2)
    return {"accepted": accepted, "taken": taken, "causes": causes,
            "unused_share": unused / accepted if accepted else 0.0,
            "stale_share": stale / accepted if accepted else 0.0,
            "worker_s": round(sum(c["worker_s"] for c in causes.values()), 2)}


def summary_line(w: dict[str, Any]) -> str:
    """One line for people: 'accepted groups never trained: 12.3% (stale 2.0%, ...); 41 worker-s'."""
    acc = w.get("accepted") or 0
    if not acc:
        return "accepted groups never trained: none accepted"
    parts = [f"{name.replace('_', ' ')} {c['groups'] / acc:.1%} ({c['worker_s']:.0f} worker-s)"
             for name, c in w["causes"].items() if c["groups"]]
    return (f"accepted groups never trained: {w['unused_share']:.1%} of {acc} (stale {w['stale_share']:.1%})"
            + (": " + ", ".join(parts) if parts else ""))
