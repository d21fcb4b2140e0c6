"""Text output of `swarmrl audit` (rich tables); `--json` prints the same data as JSON instead.

Pure presentation: every function takes what `verifier.audit.views` / `reverify` computed and a
`rich.console.Console`. Times are shown in UTC.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # the re-verifier imports torch; listing an archive must not
    from verifier.audit.reverify import Reverification

STATUS_STYLE = {"accepted": "green", "rejected": "red", "undecided": "yellow"}


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe(x: Any) -> str:
    """Archived data (much of it written by workers: decoded completions, engine details, and
    reasons or details that quote them) as text to print: rich markup escaped, so that `[/]`
    or `[green]passed[/]` shows as typed, and control characters written as `\\xNN`, so that
    no escape sequence reaches the terminal."""
    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(x)))


def utc(t: float | None) -> str:
    return "–" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def short(s: str | None, n: int = 14) -> str:
    return "–" if not s else safe(s if len(s) <= n else s[: n - 5] + "…" + s[-4:])


def _num(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _status(s: str) -> str:
    return f"[{STATUS_STYLE.get(s, 'white')}]{safe(s)}[/]"


def _numbers(stats: dict) -> str:
    parts = []
    for k, v in (stats or {}).items():
        if isinstance(v, float):
            v = round(v, 4)
        text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
        parts.append(f"{k}={text if len(text) <= 60 else text[:57] + '...'}")
    return safe(" ".join(parts))


MAX_LISTED = 200
LIST_COLUMNS = ["submission_id", "worker_id", "policy_version", "status", "mean_reward", "n_tokens", "received_at",
                "reason"]


def rollout_list(table: pa.Table, console: Console, total: int, matched: int | None = None) -> None:
    """`table`: the rows to show, oldest first (the newest MAX_LISTED are shown); `matched`: how
    many rows the selection has when `table` holds only those shown (None: table's rows)."""
    matched = table.num_rows if matched is None else matched
    shown = table if table.num_rows <= MAX_LISTED else table.slice(table.num_rows - MAX_LISTED)
    more = f" (the newest {MAX_LISTED} shown; --json or export for all)" if shown.num_rows < matched else ""
    t = Table(title=f"{matched} of {total} archived submissions{more}", title_justify="left")
    for col, kw in (("submission", {}), ("worker", {}), ("version", {"justify": "right"}), ("verdict", {}),
                    ("mean reward", {"justify": "right"}), ("tokens", {"justify": "right"}), ("received", {}),
                    ("reason", {"overflow": "fold", "max_width": 60})):
        t.add_column(col, **kw)
    for r in shown.select(LIST_COLUMNS).to_pylist():
        t.add_row(safe(r["submission_id"]), short(r["worker_id"]), str(r["policy_version"]), _status(r["status"]),
                  _num(r["mean_reward"]), str(r["n_tokens"]), utc(r["received_at"]), safe((r["reason"] or "")[:200]))
    console.print(t)


def rollout(view: dict, console: Console) -> None:
    console.print(f"[bold]submission {safe(view['submission_id'])}[/]  {_status(view['status'])}")
    facts = [("worker", view["worker_id"]), ("policy version", view["policy_version"]),
             ("task", f"{view['task_id']} (index {view['task_index']})"), ("received", utc(view["received_at"])),
             ("decided", utc(view.get("decided_at"))), ("full check drawn", view["full_check"]),
             ("engine", " ".join(str(x) for x in (view.get("engine") or {}).values() if x)),
             ("checkpoint archived", view["checkpoint_archived"])]
    if view.get("reason"):
        facts.append(("reason", view["reason"]))
    for k, v in facts:
        console.print(f"  [dim]{k:>19}[/]  {safe(v)}", highlight=False)
    p = view["prompt"]
    console.print(f"\n[bold]prompt[/] {safe(json.dumps(p['text'])) if p['text'] is not None else '(not decoded)'}"
                  f"  [dim]{safe(p['token_ids'])}[/]", highlight=False)
    t = Table(title="completions", title_justify="left")
    for col in ("#", "seed", "text", "tokens", "finish", "reward", "advantage"):
        t.add_column(col, overflow="fold")
    for c in view["completions"]:
        t.add_row(safe(c["index"]), safe(c["seed"]),
                  safe(json.dumps(c["text"]) if c["text"] is not None else c["token_ids"]),
                  safe(c["n_tokens"]), safe(c["finish_reason"]), _num(c["reward"]), _num(c["advantage"]))
    console.print(t)
    v = view.get("verdict")
    if not v:
        console.print("[yellow]no verdict archived[/] (still queued, or dropped when its worker was banned)")
        return
    console.print(f"[bold]verdict[/] {'accepted' if v['accepted'] else 'rejected'} by {safe(v['verifier'])} at "
                  f"{utc(v['signed_at'])} ({'full' if v['full_check'] else 'cheap'} check)", highlight=False)
    checks(v["checks"], console)


def checks(items: list[dict], console: Console, title: str = "checks") -> None:
    t = Table(title=title, title_justify="left")
    for col, kw in (("check", {}), ("result", {}), ("detail", {"overflow": "fold", "max_width": 60}),
                    ("numbers", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for c in items:
        t.add_row(safe(c.get("name", "?")), "[green]passed[/]" if c.get("passed") else "[red]failed[/]",
                  safe(c.get("detail", "")), _numbers(c.get("stats") or {}))
    console.print(t)


def summary(rows: list[dict], console: Console) -> None:
    t = Table(title="per worker", title_justify="left")
    for col, kw in (("worker", {}), ("submissions", {"justify": "right"}), ("accepted", {"justify": "right"}),
                    ("rejected", {"justify": "right"}), ("undecided", {"justify": "right"}),
                    ("tokens", {"justify": "right"}), ("mean reward", {"justify": "right"}), ("versions", {}),
                    ("rejection reasons", {"overflow": "fold", "max_width": 50})):
        t.add_column(col, **kw)
    for w in rows:
        reasons = safe(", ".join(f"{k} ×{n}" for k, n in w["reasons"].items()) or "–")
        t.add_row(safe(w["worker_id"]), str(w["submissions"]), str(w["accepted"]), str(w["rejected"]),
                  str(w["undecided"]), str(w["tokens"]), _num(w["mean_reward"]),
                  f"{w['min_version']}–{w['max_version']}", reasons)
    console.print(t)


def reverification(rv: "Reverification", console: Console) -> None:
    console.print(f"[bold]submission {safe(rv.submission_id)}[/] of {safe(rv.worker_id)}, policy version "
                  f"{safe(rv.policy_version)}", highlight=False)
    console.print(f"  [dim]checkpoint[/]  {safe(rv.checkpoint)}", highlight=False)
    kind = {True: "full", False: "cheap", None: "unknown"}[rv.recorded_full_check]
    console.print(f"  [dim]recorded[/]    {_status(rv.recorded_status)}"
                  + (f" ({kind} check; verdict signature {safe(rv.recorded_signature)})"
                     if rv.recorded_status != "undecided" else ""), highlight=False)
    recorded = {c.get("name"): c for c in rv.recorded_checks}
    t = Table(title="re-run (full check)", title_justify="left")
    for col, kw in (("check", {}), ("recorded", {}), ("now", {}), ("detail", {"overflow": "fold", "max_width": 60}),
                    ("numbers", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for c in rv.checks:
        r = recorded.get(c["name"])
        was = "–" if r is None else ("[green]passed[/]" if r.get("passed") else "[red]failed[/]")
        t.add_row(safe(c["name"]), was, "[green]passed[/]" if c["passed"] else "[red]failed[/]", safe(c.get("detail", "")),
                  _numbers(c.get("stats") or {}))
    console.print(t)
    for n in rv.notes:
        console.print(f"  [yellow]note[/] {safe(n)}", highlight=False)
    now = "accepts" if rv.accepted else "rejects"
    if rv.holds is None:
        console.print(f"[bold]no recorded verdict[/]; re-verification {now} it", highlight=False)
    elif rv.holds:
        console.print(f"[bold green]VERDICT HOLDS[/]: recorded {rv.recorded_status}, re-verification {now} it",
                      highlight=False)
    else:
        console.print(f"[bold red]VERDICT DOES NOT HOLD[/]: recorded {rv.recorded_status}, re-verification {now} it"
                      + (f" ({safe(rv.reason)})" if rv.reason else ""), highlight=False)
