"""What the contributor sees: the live terminal view, JSON log lines, and `worker status`.

- `render(snapshot)` turns a `WorkerState.snapshot()` into a rich table; the live view
  (refreshed twice a second while the daemon runs on a terminal) and `swarmrl worker status`
  (one print, from the local `/status` endpoint) both use it, so they always agree.
- `setup_logging` picks the output: `--json` gives one JSON object per line on stderr (for
  systemd/journald and log shippers); on a terminal, rich log lines scroll above the live
  view; otherwise (a pipe, the demo) plain one-line logs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, plus any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(json_logs: bool, console: Console | None = None, level: int = logging.INFO) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if json_logs:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    elif console is not None:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _ago(ts: float | None) -> str:
    if not ts:
        return ""
    s = int(time.time() - ts)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render(s: dict) -> Table:
    """A two-column table of a status snapshot."""
    t = Table(title="swarmrl worker", show_header=False, box=None, padding=(0, 1), title_justify="left")
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    t.add_row("identity", s.get("peer_id", ""))
    coord = s.get("coordinator_url", "")
    if s.get("coordinator_up", True):
        coord += "  [green]up[/green]"
    else:
        coord += f"  [red]unreachable[/red] {s.get('coordinator_error', '')[:80]}"
    t.add_row("coordinator", coord)
    t.add_row("run", s.get("run_id", ""))
    eng = s.get("engine") or {}
    t.add_row("engine", " ".join(str(eng.get(k, "")) for k in ("name", "dtype", "device")).strip())
    t.add_row("doing", f"{s.get('phase', '')}   (up {_ago(s.get('started_at'))})")
    pv = s.get("policy_version")
    line = "none yet" if pv is None else f"v{pv}"
    newest = s.get("newest_version")
    if newest is not None and newest != pv:
        line += f"  (newest v{newest})"
    dl = s.get("download")
    if dl and dl.get("total_bytes") and dl["done_bytes"] < dl["total_bytes"]:
        pct = 100 * dl["done_bytes"] / dl["total_bytes"]
        line += f"  downloading v{dl['version']}: {_mb(dl['done_bytes'])} / {_mb(dl['total_bytes'])} ({pct:.0f}%)"
    t.add_row("policy", line)
    t.add_row("speed", f"{s.get('tokens_per_s', 0):,.1f} tokens/s   batch {s.get('batch_sequences', 0)} sequences   "
                       f"{s.get('tokens_generated', 0):,} tokens generated")
    t.add_row("rollouts", f"submitted {s.get('submitted', 0)}   [green]accepted {s.get('accepted', 0)}[/green]   "
                          f"[red]rejected {s.get('rejected', 0)}[/red]   dropped {s.get('dropped', 0)}   "
                          f"leases held {s.get('leases_active', 0)}")
    t.add_row("spool", f"{s.get('spool_pending', 0)} to send, {s.get('spool_awaiting', 0)} awaiting verdict, "
                       f"{s.get('spool_rejected', 0)} set aside")
    credit = f"{s.get('credits_tokens', 0):,} accepted tokens this session"
    life = s.get("lifetime")
    if life:
        credit += (f"; lifetime {life.get('accepted_tokens', 0):,} tokens "
                   f"({life.get('accepted', 0)} accepted, {life.get('rejected', 0)} rejected, "
                   f"status {life.get('status', '?')})")
    t.add_row("credits", credit)
    p2p = s.get("p2p")
    if p2p:  # the libp2p swarm layer (worker.p2p)
        t.add_row("p2p", f"{p2p.get('connected', 0)} peers connected   {len(p2p.get('relays', []))} relays advertised   "
                         f"{p2p.get('peers_holding_total', len(p2p.get('peers_holding', {})))} peers holding versions   "
                         f"{(p2p.get('counters') or {}).get('served', 0)} shard requests served")
    if s.get("last_error"):
        t.add_row("last error", f"[yellow]{s['last_error'][:160]}[/yellow]")
    return t


def live_view(get_snapshot, console: Console) -> Live:
    """A Live display that re-renders the snapshot twice a second (caller starts/stops it)."""
    return Live(console=console, refresh_per_second=2, transient=False,
                get_renderable=lambda: render(get_snapshot()))
