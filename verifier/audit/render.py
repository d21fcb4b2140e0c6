"""Text output of `swarmrl audit` (rich tables); `--json` prints the same data as JSON instead.

Pure presentation: every function takes what `verifier.audit.views` / `reverify` computed and a
`rich.console.Console`. Times are shown in UTC.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the re-verifier imports torch; listing an archive must not
    from verifier.audit.reverify import Reverification

STATUS_STYLE = {"accepted": "green", "rejected": "red", "undecided": "yellow"}


def utc(t: float | None) -> str:
    return "–" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def short(s: str | None, n: int = 14) -> str:
    return "–" if not s else (s if len(s) <= n else s[: n - 5] + "…" + s[-4:])


def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _status(s: str) -> str:
    return f"[{STATUS_STYLE.get(s, 'white')}]{s}[/]"


def _numbers(stats: dict) -> str:
    parts = []
    for k, v in (stats or {}).items():
        if isinstance(v, float):
            v = round(v, 4)
        text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        parts.append(f"{k}={text if len(text) <= 60 else text[:57] + '...'}")
    return " ".join(parts)


MAX_LISTED = 200


def rollout_list(table: pa.Table, console: Console, total: int) -> None:
    shown = table if table.num_rows <= MAX_LISTED else table.slice(table.num_rows - MAX_LISTED)
    more = f" (the newest {MAX_LISTED} shown; --json or export for all)" if shown is not table else ""
    t = Table(title=f"{table.num_rows} of {total} archived submissions{more}", title_justify="left")
    for col, kw in (("submission", {}), ("worker", {}), ("version", {"justify": "right"}), ("verdict", {}),
                    ("mean reward", {"justify": "right"}), ("tokens", {"justify": "right"}), ("received", {}),
                    ("reason", {"overflow": "fold", "max_width": 60})):
        t.add_column(col, **kw)
    for r in shown.select(["submission_id", "worker_id", "policy_version", "status", "mean_reward", "n_tokens",
                           "received_at", "reason"]).to_pylist():
        t.add_row(r["submission_id"], short(r["worker_id"]), str(r["policy_version"]), _status(r["status"]),
                  _num(r["mean_reward"]), str(r["n_tokens"]), utc(r["received_at"]), (r["reason"] or "")[:200])
    console.print(t)


def rollout(view: dict, console: Console) -> None:
    console.print(f"[bold]submission {view['submission_id']}[/]  {_status(view['status'])}")
    facts = [("worker", view["worker_id"]), ("policy version", view["policy_version"]),
             ("task", f"{view['task_id']} (index {view['task_index']})"), ("received", utc(view["received_at"])),
             ("decided", utc(view.get("decided_at"))), ("full check drawn", view["full_check"]),
             ("engine", " ".join(str(x) for x in (view.get("engine") or {}).values() if x)),
             ("checkpoint archived", view["checkpoint_archived"])]
    if view.get("reason"):
        facts.append(("reason", view["reason"]))
    for k, v in facts:
        console.print(f"  [dim]{k:>19}[/]  {v}", highlight=False)
    p = view["prompt"]
    console.print(f"\n[bold]prompt[/] {json.dumps(p['text']) if p['text'] is not None else '(not decoded)'}"
                  f"  [dim]{p['token_ids']}[/]", highlight=False)
    t = Table(title="completions", title_justify="left")
    for col in ("#", "seed", "text", "tokens", "finish", "reward", "advantage"):
        t.add_column(col, overflow="fold")
    for c in view["completions"]:
        t.add_row(str(c["index"]), str(c["seed"]), json.dumps(c["text"]) if c["text"] is not None else str(c["token_ids"]),
                  str(c["n_tokens"]), str(c["finish_reason"]), _num(c["reward"]), _num(c["advantage"]))
    console.print(t)
    v = view.get("verdict")
    if not v:
        console.print("[yellow]no verdict archived[/] (still queued, or dropped when its worker was banned)")
        return
    console.print(f"[bold]verdict[/] {'accepted' if v['accepted'] else 'rejected'} by {v['verifier']} at "
                  f"{utc(v['signed_at'])} ({'full' if v['full_check'] else 'cheap'} check)", highlight=False)
    checks(v["checks"], console)


def checks(items: list[dict], console: Console, title: str = "checks") -> None:
    t = Table(title=title, title_justify="left")
    for col, kw in (("check", {}), ("result", {}), ("detail", {"overflow": "fold", "max_width": 60}),
                    ("numbers", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for c in items:
        t.add_row(c.get("name", "?"), "[green]passed[/]" if c.get("passed") else "[red]failed[/]",
                  c.get("detail", ""), _numbers(c.get("stats") or {}))
    console.print(t)


def summary(rows: list[dict], console: Console) -> None:
    t = Table(title="per worker", title_justify="left")
    for col, kw in (("worker", {}), ("submissions", {"justify": "right"}), ("accepted", {"justify": "right"}),
                    ("rejected", {"justify": "right"}), ("undecided", {"justify": "right"}),
                    ("tokens", {"justify": "right"}), ("mean reward", {"justify": "right"}), ("versions", {}),
                    ("rejection reasons", {"overflow": "fold", "max_width": 50})):
        t.add_column(col, **kw)
    for w in rows:
        reasons = ", ".join(f"{k} ×{n}" for k, n in w["reasons"].items()) or "–"
        t.add_row(w["worker_id"], str(w["submissions"]), str(w["accepted"]), str(w["rejected"]),
                  str(w["undecided"]), str(w["tokens"]), _num(w["mean_reward"]),
                  f"{w['min_version']}–{w['max_version']}", reasons)
    console.print(t)


def reverification(rv: "Reverification", console: Console) -> None:
    console.print(f"[bold]submission {rv.submission_id}[/] of {rv.worker_id}, policy version {rv.policy_version}",
                  highlight=False)
    console.print(f"  [dim]checkpoint[/]  {rv.checkpoint}", highlight=False)
    kind = {True: "full", False: "cheap", None: "unknown"}[rv.recorded_full_check]
    console.print(f"  [dim]recorded[/]    {_status(rv.recorded_status)}"
                  + (f" ({kind} check; verdict signature {rv.recorded_signature})"
                     if rv.recorded_status != "undecided" else ""), highlight=False)
    recorded = {c.get("name"): c for c in rv.recorded_checks}
    t = Table(title="re-run (full check)", title_justify="left")
    for col, kw in (("check", {}), ("recorded", {}), ("now", {}), ("detail", {"overflow": "fold", "max_width": 60}),
                    ("numbers", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for c in rv.checks:
        r = recorded.get(c["name"])
        was = "–" if r is None else ("[green]passed[/]" if r.get("passed") else "[red]failed[/]")
        t.add_row(c["name"], was, "[green]passed[/]" if c["passed"] else "[red]failed[/]", c.get("detail", ""),
                  _numbers(c.get("stats") or {}))
    console.print(t)
    for n in rv.notes:
        console.print(f"  [yellow]note[/] {n}", highlight=False)
    now = "accepts" if rv.accepted else "rejects"
    if rv.holds is None:
        console.print(f"[bold]no recorded verdict[/]; re-verification {now} it", highlight=False)
    elif rv.holds:
        console.print(f"[bold green]VERDICT HOLDS[/]: recorded {rv.recorded_status}, re-verification {now} it",
                      highlight=False)
    else:
        console.print(f"[bold red]VERDICT DOES NOT HOLD[/]: recorded {rv.recorded_status}, re-verification {now} it"
                      + (f" ({rv.reason})" if rv.reason else ""), highlight=False)
