"""Replay the proof-drift test on checks bench/verification.py already ran, with other settings.

bench/verification.py keeps, for every honest worker and every attack cell, the proof-drift
statistics of each full check ([pooled error, worst completion's error], `drift_errors` in its
JSON). The drift test is a pure function of that series (`coordinator.rules.proof_drift`), so
the allowances and limits can be chosen on measured data without re-running a single check:

    python bench/verification_drift.py bench/out/honest.json bench/out/attacks.json \\
        --dtype bfloat16 --pooled 0.5 1.5 --worst 2.0 3.0

prints each honest worker's highest score (a ban at 1) and, per attack computed and declared
in that dtype, the full checks until the drift test alone bans it ('-': not within the checks
run). Rejections and the near-tie test ban too; bench/verification.py prints the whole picture.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.rules import proof_drift  # noqa: E402


def replay(errors: list, pooled: tuple[float, float], worst: tuple[float, float]) -> tuple[float, int | None]:
    """(highest score reached, full checks until the ban or None) for one worker's series."""
    s_pool = s_worst = peak = 0.0
    for i, (e_pool, e_worst) in enumerate(errors, 1):
        if e_pool is not None:
            s_pool = proof_drift.update(s_pool, e_pool, allowance=pooled[0], limit=pooled[1])
        if e_worst is not None:
            s_worst = proof_drift.update(s_worst, e_worst, allowance=worst[0], limit=worst[1])
        peak = max(peak, s_pool, s_worst)
        if proof_drift.banned(s_pool) or proof_drift.banned(s_worst):
            return peak, i
    return peak, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="JSON files written by bench/verification.py")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--pooled", nargs=2, type=float, required=True, metavar=("ALLOWANCE", "LIMIT"))
    ap.add_argument("--worst", nargs=2, type=float, required=True, metavar=("ALLOWANCE", "LIMIT"))
    args = ap.parse_args()
    short = {"float32": "fp32", "bfloat16": "bf16"}[args.dtype]
    honest, attacks = [], []
    for f in args.files:
        d = json.loads(f.read_text())
        honest += [r for r in d.get("honest", {}).get("rows", []) if f" {short} " in r["name"] and "drift_errors" in r]
        for row in d.get("attacks", {}).get("rows", []):
            cell = row["cells"].get(args.dtype) if row["computed"] == args.dtype else None
            if cell and "drift_errors" in cell:
                attacks.append((row["attack"], cell))
    checks = sum(len(r["drift_errors"]) for r in honest)
    print(f"{args.dtype}: pooled allowance/limit {args.pooled}, worst {args.worst}")
    print(f"{'honest worker':<28}{'checks':>8}{'peak score':>12}{'banned after':>14}")
    bans = 0
    for r in honest:
        peak, ban = replay(r["drift_errors"], tuple(args.pooled), tuple(args.worst))
        bans += ban is not None
        print(f"{r['name']:<28}{len(r['drift_errors']):>8}{peak:>12.3f}{ban or '-':>14}")
    print(f"honest: {len(honest)} workers, {checks} full checks, {bans} banned by the drift test")
    print(f"\n{'attack (computed = declared)':<48}{'checks':>8}{'banned after':>14}")
    for name, cell in attacks:
        _, ban = replay(cell["drift_errors"], tuple(args.pooled), tuple(args.worst))
        print(f"{name:<48}{len(cell['drift_errors']):>8}{ban or '-':>14}")


if __name__ == "__main__":
    main()
