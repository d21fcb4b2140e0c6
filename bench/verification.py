"""Benchmark: the verifier's calibration, its red-team detection rates, the damage a cheater
can do before its ban, and the verifier's cost.

    python bench/verification.py                  # everything (10,000+ honest full checks; ~1 h here)
    python bench/verification.py --quick          # a small sample of everything (minutes)
    python bench/verification.py --sections honest attacks damage cost

Every judgement goes through `verifier.pipeline.verify_job` with a full check (check rate
100%) and the default limits (`verifier.thresholds`), exactly as the service judges; what a
sequence of verdicts does to a worker (bans by rejection, by the near-tie test, by the
proof-drift test) is the coordinator's own rule, `coordinator.rules.verdicts.consequences`,
with the default configuration. Rollouts come from tests/adversarial/harness.py: honest ones
from the worker's own code (`worker.rollout.generate_batch`, TransformersEngine), cheats from
the functions there.

1. honest (`honest`): two tiny models — the demo's (Qwen2 128x4 warm-started, 8-token
   completions) and the untrained one (64-token completions, multi-chunk proofs) — generated
   in fp32 and bf16, with 1 or 2 torch threads, batches of 1, 4 or 16 sequences, and SDPA or
   eager attention in the worker (another kernel than the verifier's). Each variation is one
   worker: printed are its full checks, false rejections, false bans, and the largest value
   of every statistic a limit applies to next to the limit, the highest proof-drift score the
   worker reached ('drift peak': 1 bans; how close honest work comes); for bf16, the smallest distance
   of any completion from the verifier's fp32 prefill (what `higher_precision_floor` must
   stay under).
2. attacks (`attacks`, bench/verification_attacks.py): every cheat, computed in fp32 and in
   bf16, each declared as fp32 and as bf16: rejection rate per submission and submissions
   until the worker is banned, a column per declared dtype.
3. damage (`damage`, bench/verification_damage.py): a worker that is honest until its check
   rate reaches the floor and then cheats, against a real coordinator: cheated groups that
   reach a training batch per burned identity.
4. cost (`cost`): for the tiny and a ~55M model, generation of 16 x 128 tokens vs the
   verifier's prefill + checks of the same tokens (fp32 and bf16, with the precision probe).

This 2-core machine is shared with other jobs: timings are noisy (CPU times are printed next
to wall times); detection results do not depend on timing.
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

from coordinator.config import CoordinatorConfig  # noqa: E402
from coordinator.rules import proof_drift, verdicts  # noqa: E402
from coordinator.service.verification import verdict_rules  # noqa: E402
from protocol.identity import KeyPair  # noqa: E402
from protocol.proof import build_proofs  # noqa: E402
from tests.adversarial import harness as H  # noqa: E402
from verifier.checks.proof import completion_pool  # noqa: E402
from verifier.thresholds import CALIBRATED  # noqa: E402
from worker.rollout import build_submission  # noqa: E402

VERIFY_THREADS = 1  # the demo runs workers and the verifier with one torch thread each
RULES = verdict_rules(CoordinatorConfig(operator_key="0" * 64, model="x"))


# -- helpers ------------------------------------------------------------------------------------
def judge(world: H.World, env, sub, key, *, probe: int | None = None) -> dict:
    """Verify one submission with a full check; the statistics every limit applies to, the
    verdict, and the checks as the coordinator receives them."""
    torch.set_num_threads(VERIFY_THREADS)
    job = world.job(env, sub, key)
    from verifier.pipeline import verify_job

    v = verify_job(job, coordinator_key=world.coordinator.public, tokenizer=world.tokenizer, models=world.models,
                   settings=world.settings, ledger=world.ledger, probe_index=probe)
    st = {c.name: c.stats for c in v.checks}
    proof, sampling = st.get("proof", {}), st.get("sampling", {})
    per = [x for x in proof.get("per_completion_mant_mean", []) if isinstance(x, (int, float))]
    return {"accepted": v.accepted, "failed": [c.name for c in v.checks if not c.passed], "verdict": v,
            "completions": len(sub.completions), "reason": v.reason[:200],
            "judged_dtype": proof.get("prefill_dtype", ""),
            "chunk_exp_frac": _num(proof.get("worst_exp_frac")), "chunk_mant_mean": _num(proof.get("worst_mant_mean")),
            "chunk_mant_median": _num(proof.get("worst_mant_median")),
            "chunk_sign_frac": _num(proof.get("worst_sign_frac")),
            "completion_mant_mean": max(per, default=0.0),
            "group_exp_frac": _num(proof.get("group_exp_frac")), "group_mant_mean": _num(proof.get("group_mant_mean")),
            "sampling_gap": _num(sampling.get("worst_gap")),
            "positions": int(sampling.get("positions", 0) or 0), "near_ties": int(sampling.get("not_argmax", 0) or 0)}


def _num(x) -> float:
    return float(x) if isinstance(x, (int, float)) else 0.0


def banned_after(results: list[dict], peak: list | None = None) -> tuple[int | None, str]:
    """After how many of these full checks, sent in order by one worker, the coordinator bans
    it, and why ('rejected', 'near-ties', 'drift'); (None, '') if never. `peak`, when given,
    receives the highest proof-drift score the worker reached (1 bans), pooled and worst."""
    standing = verdicts.Standing(0, 0, (0.0, 0.0), None)
    peak = peak if peak is not None else []
    peak[:] = [0.0, 0.0]
    for i, r in enumerate(results, 1):
        v = r["verdict"]
        c = verdicts.consequences(v.accepted, True, v.checks, v.reason, received_at=float(i), standing=standing,
                                  rules=RULES, worker_fault=v.worker_fault)
        if c.ban_reason:
            why = "rejected" if not v.accepted else ("near-ties" if "seeded sample" in c.ban_reason else "drift")
            return i, why
        standing = verdicts.standing_after(standing, c)
        peak[:] = [max(peak[0], c.drift[0]), max(peak[1], c.drift[1])]
    return None, ""


def drift_errors(r: dict) -> list:
    """The proof-drift statistics of one full check (pooled, worst completion), kept in the JSON
    so other drift allowances can be tried on the same honest checks without re-running them."""
    stats = next((c.stats for c in r["verdict"].checks if c.name == "proof"), {})
    return [proof_drift.check_error(stats), proof_drift.worst_error(stats)]


def generate_batched(engine, leases, version: int, batch: int):
    """The worker's rollouts of `leases`, generated `batch` sequences at a time."""
    reqs = [r for lease in leases for r in H._requests(lease)]
    results = []
    for i in range(0, len(reqs), batch):
        results.extend(engine.generate(reqs[i: i + batch]))
    proofs = build_proofs([r.hidden for r in results])
    subs, k = [], 0
    for lease in leases:
        n = len(lease.seeds)
        subs.append(build_submission(lease, results[k: k + n], proofs[k: k + n], version, engine.info()))
        k += n
    return subs


def fp32_distances(world: H.World, env, sub, key) -> list[float]:
    """Each completion's mean mantissa error against the verifier's fp32 prefill."""
    from verifier.prefill import prefill

    oj, _ = world.verifier_outputs(world.job(env, sub, key))
    out = prefill(world.models.model(sub.policy_version, "float32"), oj)
    return [completion_pool(h, c.proof, chunk_size=32, topk=128).mant_mean for h, c in zip(out.hidden, sub.completions)]


STATS = [("chunk_exp_frac", "exp_mismatch_frac"), ("chunk_mant_mean", "mant_err_mean"),
         ("chunk_mant_median", "mant_err_median"), ("chunk_sign_frac", "sign_mismatch_frac"),
         ("completion_mant_mean", "completion_mant_err_mean"),
         ("group_exp_frac", "group_exp_mismatch_frac"), ("group_mant_mean", "group_mant_err_mean"),
         ("sampling_gap", "sampling_tolerance")]
SHORT = {"float32": "fp32", "bfloat16": "bf16"}


def summarise(name: str, res: list[dict]) -> dict:
    peak: list = []
    ban, why = banned_after(res, peak)
    return {"name": name, "drift_peak": peak, "drift_errors": [drift_errors(r) for r in res], "submissions": len(res), "completions": sum(r["completions"] for r in res),
            "false_rejections": sum(not r["accepted"] for r in res), "false_bans": int(ban is not None),
            "ban": f"{why} after {ban}" if ban else "",
            "reasons": [r["reason"] for r in res if not r["accepted"]][:3],
            "near_ties": sum(r["near_ties"] for r in res), "positions": sum(r["positions"] for r in res),
            "group_mant_mean_avg": sum(r["group_mant_mean"] for r in res) / len(res),
            "completion_mant_mean_avg": sum(r["completion_mant_mean"] for r in res) / len(res),
            **{s: max(r[s] for r in res) for s, _ in STATS}}


def print_header() -> None:
    names = "".join(f"{s.replace('_', ' ')[:15]:>16}" for s, _ in STATS)
    print(f"{'variation':<22}{'checks':>7}{'rej.':>6}{'bans':>6}{names}{'drift peak':>12}")
    for dtype, thr in CALIBRATED.items():
        print(f"{'(' + SHORT[dtype] + ' limit)':<22}{'':>19}" + "".join(f"{getattr(thr, t):>16g}" for _, t in STATS))


def print_row(r: dict) -> None:
    print(f"{r['name']:<22}{r['submissions']:>7}{r['false_rejections']:>6}{r['false_bans']:>6}"
          + "".join(f"{r[s]:>16.4g}" for s, _ in STATS)
          + (f"{max(r['drift_peak']):>12.3f}" if r.get("drift_peak") else ""), flush=True)
    for reason in r.get("reasons", []):
        print(f"    rejected: {reason}")
    if r.get("ban"):
        print(f"    banned: {r['ban']}")


# -- 1. honest ----------------------------------------------------------------------------------
def honest_section(worlds: dict[str, H.World], target: int, out: dict, threads: tuple[int, ...] = (1, 2),
                   dtypes: tuple[str, ...] = ("float32", "bfloat16"), attns: tuple[str, ...] = ("sdpa", "eager")) -> None:
    """`target`: honest full checks (submissions) in all, spread over the variations (a long
    completion costs about 8 short ones, so a long-model variation gets a quarter of the checks)."""
    key = KeyPair.generate()
    variations = [(w, dt, th, b, attn) for w in worlds for dt in dtypes for th in threads
                  for b in (1, 4, 16) for attn in attns]
    weight = sum(1.0 if w == "demo" else 0.25 for w, *_ in variations)
    per_var = max(2, -(-target // weight))
    rows, floors = [], []
    print_header()
    for wname, dt, th, b, attn in variations:
        world = worlds[wname]
        per = int(per_var if wname == "demo" else max(2, per_var // 4))  # long completions cost 8x: fewer of them
        engine = H.engine_for(world.versions[1], 1, dtype=dt, threads=th, attn=attn)
        leases = [world.lease(key) for _ in range(per)]
        torch.set_num_threads(th)
        subs = generate_batched(engine, [ls for ls, _ in leases], 1, b)
        res = [judge(world, env, s, key) for (ls, env), s in zip(leases, subs)]
        row = summarise(f"{wname} {SHORT[dt]} t{th} b{b} {attn}", res)
        if dt == "bfloat16":
            dists = [d for (ls, env), s in zip(leases[:8], subs[:8]) for d in fp32_distances(world, env, s, key)]
            row["min_fp32_distance"] = min(dists)
            floors.append(min(dists))
        rows.append(row)
        print_row(row)
    total = {"name": "ALL", "submissions": sum(r["submissions"] for r in rows),
             "completions": sum(r["completions"] for r in rows),
             "false_rejections": sum(r["false_rejections"] for r in rows),
             "false_bans": sum(r["false_bans"] for r in rows),
             "drift_peak": [max(r["drift_peak"][0] for r in rows), max(r["drift_peak"][1] for r in rows)],
             **{s: max(r[s] for r in rows) for s, _ in STATS}}
    print_row(total)
    print(f"  honest full checks: {total['submissions']} ({total['completions']} completions) in "
          f"{len(rows)} variations, each one worker: false rejections {total['false_rejections']}, "
          f"false bans {total['false_bans']}")
    if floors:
        print(f"  bf16 completions' smallest distance from the fp32 prefill: {min(floors):.3f} "
              f"(higher_precision_floor {CALIBRATED['bfloat16'].higher_precision_floor})")
    out["honest"] = {"rows": rows, "total": total, "min_fp32_distance_bf16": min(floors) if floors else None}


# -- 4. cost ------------------------------------------------------------------------------------
def cost_section(root: Path, out: dict, reps: int) -> None:
    from protocol.envelope import AUDIENCE_WORKER, seal
    from protocol.messages import KIND_LEASE
    from protocol.proof import from_b64

    rows = []
    for name, kw in (("tiny", dict(hidden=128, layers=4)), ("55M", dict(hidden=512, layers=14))):
        w = H.make_world(root / f"cost-{name}", group_size=16, max_tokens=128, **kw)
        key = KeyPair.generate()
        for dt in ("float32", "bfloat16"):
            engine = H.engine_for(w.versions[1], 1, dtype=dt, threads=VERIFY_THREADS)
            lease, _ = w.lease(key)
            lease = lease.model_copy(update={"eos_token_id": 10**9})  # exactly 128 tokens each
            env = seal(KIND_LEASE, lease, w.coordinator, run_id=lease.run_id, audience=AUDIENCE_WORKER)
            t_gen, t_gen_cpu, t_ver, t_ver_cpu = [], [], [], []
            for _ in range(reps):
                c0, t0 = time.process_time(), time.perf_counter()
                results = engine.generate(H._requests(lease))
                t_gen.append(time.perf_counter() - t0)
                t_gen_cpu.append(time.process_time() - c0)
                sub = build_submission(lease, results, build_proofs([r.hidden for r in results]), 1, engine.info())
                w.ledger = H.SeenLedger()
                w.models.model(1, dt), w.models.model(1, "float32")  # loaded once, as in the service's LRU
                c2, t2 = time.process_time(), time.perf_counter()
                r = judge(w, env, sub, key)
                t_ver.append(time.perf_counter() - t2)
                t_ver_cpu.append(time.process_time() - c2)
                assert r["accepted"], r["reason"]
            tokens = sum(len(x.token_ids) for x in results)
            nbytes = sum(len(from_b64(c.proof)) for c in sub.completions)
            row = {"model": name, "dtype": dt, "tokens": tokens, "generate_s": min(t_gen),
                   "generate_cpu_s": min(t_gen_cpu), "verify_s": min(t_ver), "verify_cpu_s": min(t_ver_cpu),
                   "bytes_per_32_tokens": nbytes / tokens * 32}
            row["gen_over_verify_cpu"] = row["generate_cpu_s"] / row["verify_cpu_s"]
            rows.append(row)
    print(f"{'model':>6}{'dtype':>6}{'tokens':>8}{'gen s':>8}{'gen CPU s':>10}{'verify s':>9}{'verify CPU s':>13}"
          f"{'gen/verify (CPU)':>17}{'bytes/32 tok':>13}")
    for r in rows:
        print(f"{r['model']:>6}{SHORT[r['dtype']]:>6}{r['tokens']:>8}{r['generate_s']:>8.2f}{r['generate_cpu_s']:>10.2f}"
              f"{r['verify_s']:>9.3f}{r['verify_cpu_s']:>13.3f}{r['gen_over_verify_cpu']:>16.1f}x"
              f"{r['bytes_per_32_tokens']:>13.1f}")
    print("  bf16 verification includes the precision probe (one completion prefilled again in fp32)")
    out["cost"] = rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small sample of everything")
    ap.add_argument("--sections", nargs="+", default=["honest", "attacks", "damage", "cost"],
                    choices=["honest", "attacks", "damage", "cost"])
    ap.add_argument("--checks", type=int, default=10_000, help="honest full checks (submissions) in all")
    ap.add_argument("--worlds", nargs="+", default=["demo", "long"], choices=["demo", "long"],
                    help="honest section: the demo model (8-token completions) and/or the untrained one (64)")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="honest section: worker torch threads")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                    help="honest section: compute dtypes")
    ap.add_argument("--attn", nargs="+", default=["sdpa", "eager"], choices=["sdpa", "eager"],
                    help="honest section: the worker's attention kernels")
    ap.add_argument("--per-attack", type=int, default=20, help="submissions per attack and dtype pair")
    ap.add_argument("--identities", type=int, default=200, help="cheating identities in the damage simulation")
    ap.add_argument("--warm-seconds", type=float, default=45.0, help="supervised warm start of the tiny model")
    ap.add_argument("--workdir", type=Path, default=None, help="keep models here (reused between runs)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "verification.json")
    args = ap.parse_args()
    if args.quick:
        args.checks, args.per_attack, args.identities = min(args.checks, 300), min(args.per_attack, 4), 30
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    root = args.workdir or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    out: dict = {"limits": {d: t.model_dump() for d, t in CALIBRATED.items()},
                 "args": {k: str(v) for k, v in vars(args).items()}}
    started = time.monotonic()
    world = H.make_world(root / "demo", warm_seconds=args.warm_seconds, group_size=8, max_tokens=8)
    print(f"tiny model ready ({time.monotonic() - started:.0f} s)", flush=True)
    if "honest" in args.sections:
        worlds = {"demo": world}
        if "long" in args.worlds:
            worlds["long"] = H.make_world(root / "long", group_size=8, max_tokens=64)
        worlds = {k: v for k, v in worlds.items() if k in args.worlds}
        print("\n1. honest rollouts (every submission fully checked; false rejections and bans must be 0)")
        honest_section(worlds, args.checks, out, tuple(args.threads), tuple(args.dtypes), tuple(args.attn))
    if "attacks" in args.sections:
        from bench.verification_attacks import attack_section

        print(f"\n2. attacks ({args.per_attack} submissions of 8 completions per attack, computed x declared dtype)")
        attack_section(world, root, args.per_attack, out)
    if "damage" in args.sections:
        from bench.verification_damage import damage_section

        print(f"\n3. damage: honest until the check-rate floor, then cheating ({args.identities} identities)")
        damage_section(root, args.identities, out)
    if "cost" in args.sections:
        print("\n4. cost: generation of 16 x 128 tokens vs the verifier's prefill + checks of them")
        cost_section(root, out, reps=1 if args.quick else 3)
    print(f"\ntotal {time.monotonic() - started:.0f} s; shared 2-core machine: timings are noisy")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=_jsonable))
    if tmp:
        tmp.cleanup()


def _jsonable(o):
    return o.model_dump() if hasattr(o, "model_dump") else str(o)


__all__ = ["STATS", "SHORT", "judge", "banned_after", "summarise", "print_header", "print_row", "generate_batched"]

if __name__ == "__main__":
    main()
