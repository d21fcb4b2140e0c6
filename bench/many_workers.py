"""Benchmark: at least 1,000 simulated workers against the coordinator (issue 22, item 6).

    python bench/many_workers.py                        # 1,000 workers, 30 s per setup
    python bench/many_workers.py --workers 2000 --duration 60 --setups pg2,pg1

Each setup is one run of bench/coordinator.py (a subprocess; its full report is printed too):
its load generator (lightweight asyncio clients in `--client-procs`
processes: each registers, heartbeats every 5 s, polls the policy every 10 s, leases and
submits pre-built valid submissions with real activation proofs, unpaced: as fast as answers
come), with its simulated verifier and trainer, against three setups in turn:

- `sqlite`: one coordinator instance on SQLite;
- `pg1`:    one coordinator instance on PostgreSQL, behind HAProxy;
- `pg2`:    two coordinator instances (replicas) sharing that PostgreSQL, behind HAProxy
            (round-robin per request).

Each instance runs `--server-procs` server processes (default 1, so "two replicas" means two
processes where "one" has one). PostgreSQL is a throwaway cluster (coordinator.store.pgtemp);
HAProxy is Debian's package (installed with apt-get when missing). The archive is off in every
setup (two replicas would each run the archiver over one database).

Printed: sustained submissions/s over the measured window, p50/p99 client-side latency of
submit, lease and heartbeat, errors, groups the simulated trainer took per second and the p50 of
its batch requests (the operator's side under the swarm's load), and the ratio of each setup's submissions/s to `pg1`'s
(the goal: pg2 >= 1.6x pg1). Everything, the clients included, shares this machine's cores:
on the 2-core machine this was written on, the figures are a floor and CPU-bound (the
coordinator CPU per submission is printed by bench/coordinator.py's report above each row).

Figures (2026-12-07, `--warmup 90 --duration 30`, nothing else running, after the event-loop
and gate fixes in the README): sqlite 157.2 submissions/s, pg1 111.1, pg2 154.6: pg2/pg1 = 1.39
(1.51 in an earlier run), the machine out of cores (README: "across the internet").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SETUPS = {"sqlite": ("sqlite", 1, "none"), "pg1": ("postgres", 1, "haproxy"), "pg2": ("postgres", 2, "haproxy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds per setup")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--setups", default="sqlite,pg1,pg2")
    ap.add_argument("--server-procs", type=int, default=1, help="server processes per coordinator instance")
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    rows = {}
    for name in a.setups.split(","):
        db, replicas, balancer = SETUPS[name]
        with tempfile.TemporaryDirectory(prefix="swarmrl-many-") as tmp:
            out = Path(tmp) / "figures.json"
            cmd = [sys.executable, str(BENCH / "coordinator.py"), "--db", db, "--replicas", str(replicas),
                   "--balancer", balancer, "--workers", str(a.workers), "--duration", str(a.duration),
                   "--warmup", str(a.warmup), "--saturate", "--group-size", str(a.group_size), "--tokens",
                   str(a.tokens), "--client-procs", str(a.client_procs), "--server-procs", str(a.server_procs),
                   "--no-archive", "--json", str(out)]
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True)
            rows[name] = json.loads(out.read_text())
    print()
    print(f"{a.workers} simulated workers, unpaced, {a.duration:.0f} s measured after {a.warmup:.0f} s, "
          f"{a.group_size}x{a.tokens} tokens per submission, {a.server_procs} server process(es) per instance")
    print("| setup | submissions/s | vs pg1 (goal pg2 >= 1.6) | submit p50 / p99 ms | lease p50 / p99 ms "
          "| heartbeat p99 ms | errors | groups trained/s | trainer batch p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = rows["pg1"]["ok"].get("submit", 0) / a.duration if "pg1" in rows else 0.0
    for name, res in rows.items():
        subs = res["ok"].get("submit", 0) / a.duration
        ratio = f"{subs / base:.2f}" if base else "-"

        def pct(ep: str, q: str) -> str:
            v = res["pct"].get(ep)
            return f"{1000 * v[q]:.0f}" if v else "-"

        print(f"| {name} ({SETUPS[name][1]} x {SETUPS[name][0]}{', HAProxy' if SETUPS[name][2] == 'haproxy' else ''}) "
              f"| {subs:.1f} | {ratio} | {pct('submit', 'p50')} / {pct('submit', 'p99')} "
              f"| {pct('lease', 'p50')} / {pct('lease', 'p99')} | {pct('heartbeat', 'p99')} "
              f"| {sum(res['errors'].values())} | {res['counts']['groups'] / a.duration:.1f} | {pct('batch', 'p50')} |")


if __name__ == "__main__":
    main()
