"""Benchmark: a GPU worker judged by the verifier on another device (needs CUDA).

    python bench/cross_hardware.py                      # ~1,000 honest completions per judge, attacks
    python bench/cross_hardware.py --completions 200 --per-attack 10
    python bench/cross_hardware.py --engine vllm        # the workers run the vLLM engine (CUDA graphs on)

The verifier's thresholds were calibrated by bench/verification.py with workers and verifier on
the same CPU. Real contributors generate on GPUs (other kernels, TF32, fused attention, bf16
tensor cores) while the verifier may prefill on a CPU or on another GPU. This bench measures
that gap on the same tiny models bench/verification.py uses:

1. honest: rollouts from `TransformersEngine(device="cuda")` computing in fp32 and in bf16 (the
   GPU default), batch 1 and 16, on the warm-started demo model (8-token completions) and on
   the untrained model (64-token, multi-chunk proofs), each judged twice with a full check:
   by a CPU verifier (the demo's and the default config's) and by a CUDA verifier. Printed
   per variation: completions, false rejections, and the largest value of every statistic a
   threshold applies to, next to the thresholds (bench/verification.py's table).
2. shortfalls: many more honest GPU completions (batch 64), judged by a CPU prefill in the
   worker's dtype; for every position where the chosen token is not the verifier's perturbed
   argmax, the shortfall in logit/temperature units and relative to the larger |logit| of the
   two tokens: the measurement behind `sampling_rel_tolerance` (verifier.thresholds).
3. attacks by a CUDA worker, judged by the CPU verifier: other weights, weights + 10% noise,
   the previous version claimed as current, another temperature (0.7 and 1.5), in fp32 and
   bf16; printed: submissions, effective ones, rejected, rate and the checks that caught them.

Every judgement goes through `verifier.pipeline.verify_job` exactly as the service judges
(tests/adversarial/harness.py builds the leases, jobs and signatures).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.verification import STATS, judge, print_header, print_row, summarise  # noqa: E402
from protocol.identity import KeyPair  # noqa: E402
from protocol.lm import load_model  # noqa: E402
from tests.adversarial import harness as H  # noqa: E402
from worker.engines.transformers_engine import TransformersEngine  # noqa: E402


SHORT = {"float32": "fp32", "bfloat16": "bf16"}


class DeviceModels(H.DictModels):
    """The verifier's models on `device` (DictModels loads them on the CPU)."""

    def __init__(self, versions, device: str):
        super().__init__(versions)
        self.device = device

    def model(self, version, dtype=None):
        key = (version, dtype or self.dtype)
        if key not in self._cache:
            self._cache[key] = load_model(str(self.paths[version]), device=self.device, dtype=key[1])
        return self._cache[key]


ENGINE = {"name": "transformers"}   # --engine: the workers' engine
DEVICE = {"name": "cuda"}           # --device: the workers' and the second judge's device (cpu: a smoke run)


def cuda_engine(path: Path, version: int, dtype: str) -> TransformersEngine:
    if ENGINE["name"] == "vllm":   # several engines live at once here: a small share of the GPU each
        from worker.config import VllmSettings
        from worker.engines.vllm_engine import VllmEngine

        e = VllmEngine(device=DEVICE["name"], dtype=dtype, settings=VllmSettings(gpu_memory_utilization=0.08))
    else:
        e = TransformersEngine(device=DEVICE["name"], dtype=dtype)
    e.load(path, version)
    return e


def honest_section(worlds: dict[str, H.World], target: int, out: dict) -> None:
    key = KeyPair.generate()
    judges = {"cpu": None, ("cuda" if DEVICE["name"] == "cuda" else "cpu-again"): DeviceModels}
    variations = [(w, dt, b) for w in worlds for dt in ("float32", "bfloat16") for b in (1, 16)]
    per_var = max(2, -(-target // (len(variations) * 8)))
    rows: dict[str, list[dict]] = {j: [] for j in judges}
    print_header()
    for wname, dt, b in variations:
        world = worlds[wname]
        engine = cuda_engine(world.versions[1], 1, dt)
        leases = [world.lease(key) for _ in range(per_var)]
        reqs = [r for ls, _ in leases for r in H._requests(ls)]
        results = [res for i in range(0, len(reqs), b) for res in engine.generate(reqs[i: i + b])]
        from protocol.proof import build_proofs
        from worker.rollout import build_submission

        proofs = build_proofs([r.hidden for r in results])
        subs, k = [], 0
        for ls, _ in leases:
            n = len(ls.seeds)
            subs.append(build_submission(ls, results[k:k + n], proofs[k:k + n], 1, engine.info()))
            k += n
        for jname, models in judges.items():
            saved = world.models
            world.models = models(world.versions, DEVICE["name"]) if models else saved
            world.ledger = H.SeenLedger()  # each judge sees every submission once
            res = [judge(world, env, s, key) for (ls, env), s in zip(leases, subs)]
            world.models = saved
            rows[jname].append(summarise(f"{jname}:{wname} {SHORT[dt]} b{b}", res))
            print_row(rows[jname][-1])
    totals = {}
    for jname, rs in rows.items():
        totals[jname] = {"name": f"ALL ({jname} judge)", "completions": sum(r["completions"] for r in rs),
                         "submissions": sum(r["submissions"] for r in rs),
                         "false_rejections": sum(r["false_rejections"] for r in rs),
                         "false_bans": sum(r["false_bans"] for r in rs),
                         **{s: max(r[s] for r in rs) for s, _ in STATS}}
        print_row(totals[jname])
    out["honest"] = {"rows": rows, "totals": totals}


def shortfall_section(worlds: dict[str, H.World], leases_per_world: int, out: dict) -> None:
    from verifier.thresholds import BFLOAT16, FLOAT32

    key = KeyPair.generate()
    rows = []
    print(f"{'worker (CUDA) -> CPU prefill':<28}{'positions':>10}{'not argmax':>11}{'max gap':>9}"
          f"{'max gap/|logit|':>16}{'p99 gap/|logit|':>16}{'over limits':>12}")
    for wname, world in worlds.items():
        for dt in ("float32", "bfloat16"):
            engine = cuda_engine(world.versions[1], 1, dt)
            leases = [world.lease(key) for _ in range(leases_per_world)]
            subs = []
            for i in range(0, len(leases), 8):
                subs += H.honest_submissions(engine, [ls for ls, _ in leases[i:i + 8]], 1)
            positions, gaps, rel = 0, [], []
            over = 0
            for (ls, env), sub in zip(leases, subs):
                oj, outputs = world.verifier_outputs(world.job(env, sub, key))
                temp = ls.sampling.temperature
                thr = world.settings.for_dtype(outputs.dtype)
                for ps, c in zip(outputs.logits, sub.completions):  # the prefill's PositionScores
                    positions += len(c.token_ids)
                    gap, mag = ps.shortfall, ps.magnitude / temp  # best - chosen score; max |logit| of the two
                    nz = gap > 0
                    gaps += gap[nz].tolist()
                    rel += (gap[nz] / mag[nz]).tolist()
                    over += int((gap - thr.sampling_rel_tolerance * mag > thr.sampling_tolerance).sum())
            q = sorted(rel)
            row = {"world": wname, "dtype": dt, "positions": positions, "not_argmax": len(gaps),
                   "max_gap": max(gaps, default=0.0), "max_rel": max(rel, default=0.0),
                   "p99_rel": q[int(0.99 * (len(q) - 1))] if q else 0.0, "over_limits": over}
            rows.append(row)
            print(f"{wname + ' ' + SHORT[dt]:<28}{positions:>10}{len(gaps):>11}{row['max_gap']:>9.4f}"
                  f"{row['max_rel']:>16.5f}{row['p99_rel']:>16.5f}{over:>12}")
    print(f"limits (bf16 prefill): shortfall <= {BFLOAT16.sampling_tolerance} + "
          f"{BFLOAT16.sampling_rel_tolerance:g} x |logit|/T; fp32 prefill: <= {FLOAT32.sampling_tolerance}")
    out["shortfalls"] = rows


def _differs(a, b) -> bool:
    """Whether a cheat's submission differs from the honest one of the same lease (an attack that
    changed nothing is not counted as effective)."""
    return a.model_dump(exclude={"engine"}) != b.model_dump(exclude={"engine"})


def attack_row(name: str, res: list[tuple[bool, dict]]) -> dict:
    """One attack's row: submissions, the effective ones, how many of those were rejected and
    by which checks (printed as it is made)."""
    eff = [r for e, r in res if e]
    rejected = sum(not r["accepted"] for r in eff)
    caught: dict[str, int] = {}
    for r in eff:
        for name_ in r["failed"] if not r["accepted"] else []:
            caught[name_] = caught.get(name_, 0) + 1
    row = {"attack": name, "submissions": len(res), "effective": len(eff), "rejected": rejected,
           "rate": rejected / len(eff) if eff else None, "caught_by": caught,
           "missed": [r["reason"] or "accepted" for r in eff if r["accepted"]][:2]}
    rate = f"{100 * row['rate']:.0f}%" if eff else "n/a"
    print(f"{name:<40}{len(res):>6}{len(eff):>10}{rejected:>9}{rate:>8}  "
          + ", ".join(f"{k} {v}" for k, v in sorted(caught.items(), key=lambda kv: -kv[1])), flush=True)
    return row


def attack_section(world: H.World, root: Path, n: int, out: dict) -> None:
    key = KeyPair.generate()
    v1 = world.versions[1]
    other = H.build_model(root / "other-seed", seed=12345)
    noisy = H.perturbed_copy(v1, root / "noise-10pct", rel_noise=0.1)
    rows = []
    print(f"{'attack (CUDA worker, CPU judge)':<40}{'subm.':>6}{'effective':>10}{'rejected':>9}{'rate':>8}  caught by")
    for dt in ("float32", "bfloat16"):
        honest = cuda_engine(v1, 1, dt)
        cheats = {"other weights": (cuda_engine(other, 1, dt), {}),
                  "weights + 10% noise": (cuda_engine(noisy, 1, dt), {}),
                  "previous version as current": (cuda_engine(world.versions[0], 0, dt), {}),
                  "temperature 0.7": (honest, {"temperature": 0.7}),
                  "temperature 1.5": (honest, {"temperature": 1.5})}
        for name, (engine, kw) in cheats.items():
            leases = [world.lease(key) for _ in range(n)]
            hs = H.honest_submissions(honest, [ls for ls, _ in leases], 1)
            res = []
            for (ls, env), h in zip(leases, hs):
                c = H.generate_with(engine, ls, 1, **kw)
                res.append((_differs(c, h), judge(world, env, c, key)))
            rows.append(attack_row(f"{SHORT[dt]}: {name}", res))
    out["attacks"] = rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--completions", type=int, default=1000, help="honest completions per judge (at least)")
    ap.add_argument("--per-attack", type=int, default=25)
    ap.add_argument("--warm-seconds", type=float, default=45.0)
    ap.add_argument("--leases", type=int, default=400, help="leases (8 completions each) per world and dtype "
                                                           "in the shortfall section")
    ap.add_argument("--sections", nargs="+", default=["honest", "shortfalls", "attacks"],
                    choices=["honest", "shortfalls", "attacks"])
    ap.add_argument("--engine", default="transformers", choices=["transformers", "vllm"],
                    help="the GPU workers' engine")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="the workers' (and the second judge's) device; cpu only proves the script runs "
                         "(tests/unit/test_bench_scripts.py): its figures say nothing about GPUs")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "cross_hardware.json")
    args = ap.parse_args()
    ENGINE["name"], DEVICE["name"] = args.engine, args.device
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/cross_hardware.py needs a CUDA GPU (--device cpu: a smoke run of the script)")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (--device cpu)"
    print(f"GPU: {gpu}; torch {torch.__version__}; TF32 matmul: {torch.backends.cuda.matmul.allow_tf32}", flush=True)
    out: dict = {"gpu": gpu, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = H.make_world(root / "warm", warm_seconds=args.warm_seconds)
        long = H.make_world(root / "long", max_tokens=64)
        if "honest" in args.sections:
            honest_section({"warm": warm, "long": long}, args.completions, out)
        if "shortfalls" in args.sections:
            shortfall_section({"warm": warm, "long": long}, args.leases, out)
        if "attacks" in args.sections:
            attack_section(warm, root, args.per_attack, out)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
