"""Benchmark: what activation proofs cost, next to the generation they prove.

    python bench/proofs.py                       # tiny (1.1M) and ~55M models, 16 x 128 tokens
    python bench/proofs.py --models tiny --reps 5

For each model (built locally with swarmrl.modelkit.init_tiny_model: no download):
- generation: `TransformersEngine.generate` (the worker's engine: KV-cache decode, seeded
  Gumbel-max sampling, final hidden states kept) of B sequences of exactly T tokens;
- build: `protocol.proof.build_proofs` over those B completions (what a worker adds);
- verify: `protocol.proof.verify_proof` of each completion against the same hidden states
  (the codec's share of the verifier's work; the prefill is in bench/verification.py).
Printed: proof bytes per 32 tokens, build and verify time, and their ratio to generation
(goal: build < 1% of generation). Also the codec alone over a grid of hidden sizes.

Timings are taken as the best of --reps runs (CPU time of this process for the codec, wall
time for generation) because this 2-core machine is shared with other jobs: expect noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MODELS = {"tiny": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2),
          "55M": dict(hidden_size=512, num_layers=14, num_heads=8, num_kv_heads=4)}


def best(fn, reps: int, clock=time.perf_counter) -> tuple[float, object]:
    out, t_best = None, float("inf")
    for _ in range(reps):
        t0 = clock()
        out = fn()
        t_best = min(t_best, clock() - t0)
    return t_best, out


def codec_grid(reps: int) -> list[dict]:
    from protocol.proof import build_proofs, verify_proof

    rows = []
    for H in (64, 128, 512, 2048):
        for B, T in ((16, 128), (1, 32)):
            hs = [torch.randn(T, H) for _ in range(B)]
            tb, blobs = best(lambda: build_proofs(hs), reps, time.thread_time)
            tv, _ = best(lambda: [verify_proof(h, b) for h, b in zip(hs, blobs)], reps, time.thread_time)
            chunks = B * -(-T // 32)
            rows.append({"H": H, "B": B, "T": T, "build_ms": tb * 1e3, "verify_ms": tv * 1e3,
                         "build_us_per_chunk": tb / chunks * 1e6, "verify_us_per_chunk": tv / chunks * 1e6})
    return rows


def model_rows(names: list[str], B: int, T: int, reps: int, threads: int) -> list[dict]:
    from protocol.proof import build_proofs, verify_proof
    from swarmrl.modelkit import init_tiny_model
    from worker.engines.base import GenerationRequest
    from worker.engines.transformers_engine import TransformersEngine

    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            d = Path(tmp) / name
            info = init_tiny_model(d, **MODELS[name])
            engine = TransformersEngine(device="cpu", dtype="float32", threads=threads)
            engine.load(d, 0)
            reqs = [GenerationRequest(prompt_ids=[5, 6, 7, 8, 9, 10], seed=i, temperature=1.0, max_tokens=T,
                                      eos_token_id=10**9) for i in range(B)]
            engine.generate(reqs[:2])  # warm up
            tg, results = best(lambda: engine.generate(reqs), reps)
            tg_cpu, _ = best(lambda: engine.generate(reqs), reps, time.process_time)
            hs = [r.hidden for r in results]
            tb, blobs = best(lambda: build_proofs(hs), reps, time.thread_time)
            tv, _ = best(lambda: [verify_proof(h, b) for h, b in zip(hs, blobs)], reps, time.thread_time)
            tokens = sum(len(r.token_ids) for r in results)
            rows.append({"model": name, "params": info["parameters"], "B": B, "T": T, "tokens": tokens,
                         "generate_s": tg, "generate_cpu_s": tg_cpu, "tok_per_s": tokens / tg,
                         "build_ms": tb * 1e3, "verify_ms": tv * 1e3,
                         "build_pct": 100 * tb / tg, "verify_pct": 100 * tv / tg,
                         "build_pct_cpu": 100 * tb / tg_cpu, "verify_pct_cpu": 100 * tv / tg_cpu,
                         "bytes_per_32_tokens": sum(len(b) for b in blobs) / tokens * 32})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the engine (the demo runs workers with 1)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "proofs.json")
    args = ap.parse_args()

    grid = codec_grid(args.reps)
    print("codec alone (CPU ms, best of %d; one thread)" % args.reps)
    print(f"{'H':>6} {'B x T':>9} {'build ms':>9} {'verify ms':>10} {'build us/chunk':>15} {'verify us/chunk':>16}")
    for r in grid:
        print(f"{r['H']:>6} {str(r['B']) + ' x ' + str(r['T']):>9} {r['build_ms']:>9.2f} {r['verify_ms']:>10.2f} "
              f"{r['build_us_per_chunk']:>15.0f} {r['verify_us_per_chunk']:>16.0f}")
    rows = model_rows(args.models, args.batch, args.tokens, args.reps, args.threads)
    print(f"\nproofs next to generation (TransformersEngine, fp32, {args.threads} threads, "
          f"{args.batch} x {args.tokens} tokens; best of {args.reps})")
    print(f"{'model':>6} {'params':>8} {'gen s':>7} {'gen CPU s':>10} {'tok/s':>7} {'build ms':>9} "
          f"{'build/gen':>10} {'build/gen CPU':>14} {'verify ms':>10} {'verify/gen CPU':>15} {'bytes/32 tok':>13}")
    for r in rows:
        print(f"{r['model']:>6} {r['params'] / 1e6:>7.1f}M {r['generate_s']:>7.2f} {r['generate_cpu_s']:>10.2f} "
              f"{r['tok_per_s']:>7.0f} {r['build_ms']:>9.1f} {r['build_pct']:>9.2f}% {r['build_pct_cpu']:>13.2f}% "
              f"{r['verify_ms']:>10.1f} {r['verify_pct_cpu']:>14.2f}% {r['bytes_per_32_tokens']:>13.1f}")
    print("\nnote: shared 2-core machine. Generation: wall time and CPU time of the process (both threads);")
    print("the codec: CPU time of its one thread. The CPU ratio is the fair cost ratio under load.")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"codec": grid, "models": rows}, indent=1))


if __name__ == "__main__":
    main()
