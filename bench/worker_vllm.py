"""bench/worker.py, the vLLM part (`python bench/worker.py --engine vllm`): the vLLM engine with
proofs against plain vLLM generation, and the worker's peak memory before and after issue 24.

Per model (built locally, no download) and repetition, interleaved:
- plain vLLM: `vllm.LLM.generate` of the same B prompts, exactly T new tokens each, with vLLM's
  own random sampling at temperature 1, on the engine's own vLLM instance (no second engine
  competing for this machine's cores): without swarmrl's arguments in a request, the sampling
  processor and the capture leave it alone;
- engine + proofs: `VllmEngine.generate` (seeded sampling processor, hidden states captured
  inside vLLM and fetched after the batch) plus `protocol.proof.build_proofs`;
- former prefill: what the engine did before issue 24 on top of generating: one
  transformers prefill of prompt + completion (`protocol.lm.completion_outputs`, in groups of 64
  sequences) with a second copy of the weights.
Printed: median tokens/s, the median paired ratio engine+proofs / plain (goal >= 0.95), the
capture's share (fetching and assembling the rows), and the former prefill's share.

Peak memory: each variant runs once more in a child process that samples the resident memory of
itself and its vLLM processes (and, on a GPU, the device's used memory) every 20 ms while it
loads the model and generates `--reps` batches: "after" = the engine as it is, "before" = the
engine plus the former path's transformers copy and prefill.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PREFILL_BATCH = 64   # the former engine's sequences per prefill pass


def _engine(model_dir: Path, args):
    from worker.config import VllmSettings
    from worker.engines.vllm_engine import VllmEngine

    settings = VllmSettings(enforce_eager=args.eager, gpu_memory_utilization=args.gpu_mem)
    engine = VllmEngine(device=args.device, dtype=args.dtype, threads=args.threads, settings=settings)
    engine.load(model_dir, 0)
    return engine


def _requests(args):
    from worker.engines.base import GenerationRequest

    prompt = [5 + (i % 60) for i in range(args.prompt)]
    return [GenerationRequest(prompt, seed=1000 + i, temperature=1.0, max_tokens=args.tokens, eos_token_id=10**9)
            for i in range(args.batch)]


def _former_prefill(model, reqs, results) -> None:
    from protocol.lm import completion_outputs

    toks = [r.token_ids for r in results]
    for k in range(0, len(toks), PREFILL_BATCH):
        completion_outputs(model, reqs[0].prompt_ids, toks[k: k + PREFILL_BATCH])


def run_model(name: str, model_dir: Path, args) -> dict:
    from vllm import SamplingParams

    from protocol.lm import load_model
    from protocol.proof import build_proofs

    engine = _engine(model_dir, args)
    plain = engine.llm
    hf = load_model(str(model_dir), args.device, args.dtype)
    reqs = _requests(args)
    prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in reqs]
    # no per-request seed: vLLM samples seeded requests one by one (several times slower here)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_tokens=args.tokens, ignore_eos=True,
                            detokenize=False)
    sync = _sync(args.device)
    times: dict[str, list[float]] = {k: [] for k in ("plain", "engine", "proofs", "capture", "prefill")}
    plain.generate(prompts, params, use_tqdm=False)        # warm-up
    engine.generate(reqs[:2])
    for rep in range(args.reps):
        t = time.perf_counter()
        outs = plain.generate(prompts, params, use_tqdm=False)
        times["plain"].append(time.perf_counter() - t)
        assert all(len(o.outputs[0].token_ids) == args.tokens for o in outs)
        t = time.perf_counter()
        res = engine.generate(reqs)
        times["engine"].append(time.perf_counter() - t)
        times["capture"].append(engine.last_capture_s)
        assert all(len(r.token_ids) == args.tokens for r in res)
        t = time.perf_counter()
        build_proofs([r.hidden for r in res])
        times["proofs"].append(time.perf_counter() - t)
        t = time.perf_counter()
        _former_prefill(hf, reqs, res)
        sync()
        times["prefill"].append(time.perf_counter() - t)
        n = args.batch * args.tokens
        print(f"  {name} rep {rep + 1}/{args.reps}: plain vLLM {n / times['plain'][-1]:,.0f} tok/s, engine + proofs "
              f"{n / (times['engine'][-1] + times['proofs'][-1]):,.0f} tok/s", flush=True)
    engine.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    med["ratio"] = statistics.median(p / (e + q) for p, e, q in zip(times["plain"], times["engine"], times["proofs"]))
    med["memory"] = {v: _peak_in_child(name, model_dir, args, v) for v in ("after", "before")}
    return med


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


# -- peak memory, in a child process per variant ----------------------------------------------
def _peak_in_child(name: str, model_dir: Path, args, variant: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "worker.py"), "--engine", "vllm",
           "--memory-child", variant, "--model-dir", str(model_dir), "--batch", str(args.batch),
           "--tokens", str(args.tokens), "--prompt", str(args.prompt), "--reps", str(args.reps),
           "--threads", str(args.threads), "--dtype", args.dtype, "--device", args.device,
           "--gpu-mem", str(args.gpu_mem)] + (["--eager"] if args.eager else [])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK ")]
    if out.returncode or not lines:
        print(f"  {name} memory ({variant}) failed: {out.stderr[-800:]}", flush=True)
        return {}
    return json.loads(lines[-1][5:])


class PeakSampler:
    """The largest resident memory of this process and its children (and the GPU's used memory)
    seen by a thread sampling every 20 ms."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.rss = self.gpu = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil
        import torch

        while not self._stop.is_set():
            total = 0
            for p in [self.proc] + self.proc.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.rss = max(self.rss, total)
            if torch.cuda.is_available():
                free, size = torch.cuda.mem_get_info()
                self.gpu = max(self.gpu, size - free)
            self._stop.wait(0.02)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"rss_mib": self.rss / 2**20, "gpu_mib": self.gpu / 2**20}


def memory_child(args) -> int:
    """One variant's load + `--reps` batches under the sampler; prints `PEAK {json}`."""
    from protocol.lm import load_model
    from protocol.proof import build_proofs

    sampler = PeakSampler()
    model_dir = Path(args.model_dir)
    engine = _engine(model_dir, args)
    hf = load_model(str(model_dir), args.device, args.dtype) if args.memory_child == "before" else None
    reqs = _requests(args)
    for _ in range(args.reps):
        res = engine.generate(reqs)
        build_proofs([r.hidden for r in res])
        if hf is not None:
            _former_prefill(hf, reqs, res)
    peak = sampler.stop()
    engine.close()
    print("PEAK " + json.dumps(peak), flush=True)
    return 0


def print_table(rows: list[tuple[str, dict]], args) -> None:
    n = args.batch * args.tokens
    mode = "eager" if args.eager else "torch.compile" if args.device == "cpu" else "CUDA graphs + torch.compile"
    print(f"\nvLLM engine: batch {args.batch} x {args.tokens} new tokens, prompt {args.prompt}, {args.dtype} on "
          f"{args.device} ({mode}), {args.threads} threads, median of {args.reps}\n")
    head = ("model", "plain vLLM tok/s", "engine+proofs", "ratio", "capture", "former prefill", "peak before",
            "peak after")
    print(" | ".join(f"{h:>16}" for h in head))
    for name, m in rows:
        mem = m["memory"]
        cells = [name, f"{n / m['plain']:,.0f}", f"{n / (m['engine'] + m['proofs']):,.0f}", f"{m['ratio']:.2f}",
                 f"{100 * m['capture'] / m['engine']:.1f}%", f"+{100 * m['prefill'] / m['engine']:.1f}%",
                 _mem(mem.get("before")), _mem(mem.get("after"))]
        print(" | ".join(f"{c:>16}" for c in cells))
    print("\nratio = median over repetitions of plain vLLM time / (engine + proofs) time, each pair run back to back "
          "(goal >= 0.95); capture = fetching and assembling the captured rows, share of the engine's time; former "
          "prefill = what the engine's separate transformers prefill added before issue 24; peak = resident memory "
          "of the worker and its vLLM processes (GPU: device memory used), before = with the former transformers "
          "copy and prefill, after = as it is now.")


def _mem(m: dict | None) -> str:
    if not m:
        return "n/a"
    return f"{m['gpu_mib']:,.0f} MiB GPU" if m.get("gpu_mib") else f"{m['rss_mib']:,.0f} MiB"
