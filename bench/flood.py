"""How /health answers while unsigned 4 MB bodies flood the coordinator (issue 18: cheap checks first).

    python bench/flood.py                                  # this tree
    python bench/flood.py --code /tmp/before --label before  # another checkout, e.g. `git archive <rev>`

A real coordinator process (`python -m swarmrl coordinator`, run from `--code`) on 127.0.0.1.
One client asks GET /health every `--health-every` s from 127.0.0.1 and records each answer's
latency, first with nothing else going on (`idle`, `--idle-s`), then while `--flood` requests
of `--size` bytes of envelope-shaped JSON that nobody signed (tests/hostile/flood.py) arrive in
parallel from as many loopback addresses (127.0.0.2, ...: per-address limits see each as its
own client), until every flood request is answered. Two runs:

- `run caps`: the coordinator's defaults (group_size 8, max_tokens 8): the flood goes to
  /v1/workers/heartbeat, whose cap is a few KB;
- `4 MB run`: group_size 256, max_tokens 4096, so a 4 MB submission is within its route's cap:
  the flood goes to /v1/submissions and has to be verified.

Printed: health p50/p99/max (ms) and errors, what the flood was answered, and how long it took to
answer it all. The config uses only fields older checkouts know, so the same command measures
before and after a change; say which tree and which machine gave which numbers. Timings on a
shared 2-core machine are noisy: compare rows of one invocation.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {
    "run caps": {"group_size": 8, "max_tokens": 8, "route": "/v1/workers/heartbeat"},
    "4 MB run": {"group_size": 256, "max_tokens": 4096, "route": "/v1/submissions"},
}


def write_config(path: Path, tmp: Path, model: Path, operator_hex: str, group_size: int, max_tokens: int) -> Path:
    path.write_text(f'''run_id = "flood-bench"
host = "127.0.0.1"
port = 0
data_dir = "{tmp / 'coordinator'}"
key_file = "{tmp / 'coordinator.key'}"
operator_key = "{operator_hex}"
model = "{model}"
group_size = {group_size}
archive = false
log_level = "warning"

[sampling]
max_tokens = {max_tokens}
''')
    return path


def start(code: Path, cfg: Path, tmp: Path) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(code), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    log = open(tmp / "coordinator.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "swarmrl", "coordinator", "--config", str(cfg)], cwd=code,
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    port_file = tmp / "coordinator" / "coordinator.port"
    deadline = time.time() + 120
    while not port_file.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("coordinator did not start:\n" + (tmp / "coordinator.log").read_text()[-2000:])
        time.sleep(0.1)
    return proc, int(port_file.read_text())


def measure(code: Path, label: str, run: str, args, tmp: Path, model: Path, operator_hex: str) -> list[list[str]]:
    from tests.hostile.flood import BigBodies
    from tests.hostile.watch import HealthProbe, summary

    spec = RUNS[run]
    cfg = write_config(tmp / "coordinator.toml", tmp, model, operator_hex, spec["group_size"], spec["max_tokens"])
    proc, port = start(code, cfg, tmp)
    rows = []
    try:
        with HealthProbe(port, args.health_every) as idle:
            time.sleep(args.idle_s)
        rows.append([label, run, "idle", str(len(idle.latencies)), *summary(idle.latencies), str(idle.errors),
                     "", ""])
        sources = [f"127.0.0.{2 + i % 250}" for i in range(args.flood)]
        t0 = time.monotonic()
        with HealthProbe(port, args.health_every) as probe:
            with BigBodies("127.0.0.1", port, spec["route"], n=args.flood, size=args.size, sources=sources,
                           answer_timeout_s=args.timeout) as flood:
                flood.wait(args.timeout)
        took = time.monotonic() - t0
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(flood.statuses().items(), key=str))
        rows.append([label, run, f"{args.flood} x {args.size / 1e6:g} MB -> {spec['route']}",
                     str(len(probe.latencies)), *summary(probe.latencies), str(probe.errors), answers,
                     f"{took:.1f}"])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, default=ROOT, help="source tree the coordinator runs from")
    ap.add_argument("--label", default="this tree", help="name of --code in the table")
    ap.add_argument("--flood", type=int, default=24, help="parallel flood requests")
    ap.add_argument("--size", type=int, default=4_000_000, help="bytes per flood request")
    ap.add_argument("--health-every", type=float, default=0.02, help="seconds between /health requests")
    ap.add_argument("--idle-s", type=float, default=3.0, help="seconds of idle measurement")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up on the flood after this long")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of: {', '.join(RUNS)}")
    args = ap.parse_args()

    from protocol.identity import KeyPair
    from swarmrl.modelkit import init_tiny_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="flood-bench-") as d:
        model = Path(d) / "model"
        init_tiny_model(model, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1)
        operator = KeyPair.generate().public.hex
        for i, run in enumerate(r.strip() for r in args.runs.split(",")):
            tmp = Path(d) / f"run{i}"
            tmp.mkdir()
            rows += measure(args.code.resolve(), args.label, run, args, tmp, model, operator)
    head = ["code", "run", "while", "health n", "p50 ms", "p99 ms", "max ms", "errors", "flood answered",
            "flood s"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
