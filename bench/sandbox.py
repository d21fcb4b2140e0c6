"""What scoring in the sandbox costs: one batch (one submission) in-process vs through `protocol.sandbox`.

    python bench/sandbox.py                  # arithmetic (pure: pre-forked children are reused)
    python bench/sandbox.py --gym spiral_matrix --batches 50   # an impure scorer: one child per batch

Printed per group size: the median and p90 wall time of one batch scored in-process and in the
sandbox, the difference (the round trip a submission pays at the coordinator and at the verifier),
and the sandbox's CPU per batch (host + zygote + children, from /proc). Completions are 256
characters of digits, like the load test's (bench/coordinator.py). Numbers on a shared 2-core
machine are noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tree_cpu_s(pid: int) -> float:
    """user + system CPU seconds of `pid`, its live descendants and the children it reaped."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def measure(kind: str, group: int, batches: int, sandbox) -> dict:
    from protocol.sandbox import ScoreItem
    from protocol.tasks import load_scorer

    rng = random.Random(group)
    answer = "".join(rng.choice("0123456789") for _ in range(256))
    items = [ScoreItem(answer if i % 2 else answer[::-1], answer) for i in range(group)]
    fn, _ = load_scorer(kind)
    inproc = []
    for _ in range(batches):
        t = time.perf_counter()
        [fn(i.completion, i.answer, i.metadata) for i in items]
        inproc.append(time.perf_counter() - t)
    sandbox.score(kind, items)  # warm
    cpu0 = _tree_cpu_s(os.getpid())
    boxed = []
    for _ in range(batches):
        t = time.perf_counter()
        sandbox.score(kind, items)
        boxed.append(time.perf_counter() - t)
    cpu = (_tree_cpu_s(os.getpid()) - cpu0) / batches
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1e3  # noqa: E731
    return {"group": group, "in_p50": q(inproc, 0.5), "box_p50": q(boxed, 0.5), "box_p90": q(boxed, 0.9),
            "extra": statistics.median(boxed) * 1e3 - statistics.median(inproc) * 1e3, "cpu": cpu * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gym", default="", help="a reasoning-gym dataset instead of the arithmetic scorer")
    ap.add_argument("--groups", default="1,8,16,64", help="batch sizes (completions per submission)")
    ap.add_argument("--batches", type=int, default=300)
    args = ap.parse_args()
    from protocol.sandbox import Sandbox

    kind = f"reasoning_gym:{args.gym}" if args.gym else "arithmetic"
    sb = Sandbox().start(warm=(kind,))
    try:
        rows = [measure(kind, int(g), args.batches, sb) for g in args.groups.split(",")]
    finally:
        enforced = sb.enforced
        sb.close()
    print(f"\n== scoring one batch of `{kind}` ({args.batches} batches per row; times in ms)")
    print("   group   in-process p50   sandbox p50   sandbox p90   round trip   sandbox CPU/batch")
    for r in rows:
        print(f"   {r['group']:5d}   {r['in_p50']:14.3f}   {r['box_p50']:11.3f}   {r['box_p90']:11.3f}"
              f"   {r['extra']:10.3f}   {r['cpu']:17.3f}")
    held = (f"{k}={v if isinstance(v, str) else bool(v)}" for k, v in (enforced or {}).items())
    print(f"   enforced: {', '.join(held)}")


if __name__ == "__main__":
    main()
