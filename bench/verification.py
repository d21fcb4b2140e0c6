"""Benchmark: the verifier's calibration, its red-team detection rates, and its cost.

    python bench/verification.py                  # 2,000+ honest completions, every attack, timings
    python bench/verification.py --quick          # a small sample of everything (a few minutes)
    python bench/verification.py --sections honest attacks

Every judgement goes through `verifier.pipeline.verify_job` with a full check (check rate
100%) and the default thresholds (`verifier.thresholds`), exactly as the service judges.
Rollouts come from tests/adversarial/harness.py: honest ones from the worker's own code
(`worker.rollout.generate_batch`, TransformersEngine), cheats from the functions there.

1. honest: the demo's tiny model (Qwen2 128x4, warm-started so its choices are peaked),
   the demo's sampling (G=8, max 8 tokens, temperature 1), every combination of engine
   dtype (fp32, bf16), torch threads (1, 2) and batch size (1, 4, 16 sequences), plus long
   completions (64 tokens, multi-chunk proofs) of the untrained model. Printed per
   variation: completions, false rejections, and the largest value of every statistic a
   threshold applies to, next to that threshold (the margin).
2. attacks: each cheat of issue 3 on fresh leases; printed: submissions, how many differ
   from the honest rollout of the same lease ("effective"), how many were rejected, the
   rate, which checks caught them, and after how many submissions a worker sending them
   would be banned (a rejection, or the coordinator's near-tie rate test over its accepted
   full checks: the cheats that hide each deviation inside the sampling tolerance).
3. weight changes: weights + relative Gaussian noise, and older policies (one AdamW step
   at decreasing learning rates) claimed as the current one, to find the smallest change
   that is still always caught.
4. cost: for the tiny and a ~55M model, generation of 16 x 128 tokens vs the verifier's
   prefill + checks of the same tokens, proof build time, and proof bytes per 32 tokens.

This 2-core machine is shared with other jobs: timings are noisy (CPU times are printed
next to wall times); detection results do not depend on timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from protocol.identity import KeyPair  # noqa: E402
from protocol.proof import build_proofs  # noqa: E402
from tests.adversarial import harness as H  # noqa: E402
from verifier.thresholds import LOW_PRECISION, Thresholds  # noqa: E402
from worker.rollout import build_submission  # noqa: E402

VERIFY_THREADS = 1  # the demo runs workers and the verifier with one torch thread each


# -- helpers ------------------------------------------------------------------------------------
def judge(world: H.World, env, sub, key) -> dict:
    """Verify one submission; the statistics every threshold applies to, and the outcome."""
    torch.set_num_threads(VERIFY_THREADS)
    v = world.verify(world.job(env, sub, key))
    st = {c.name: c.stats for c in v.checks}
    proof, sampling = st.get("proof", {}), st.get("sampling", {})
    return {"accepted": v.accepted, "failed": [c.name for c in v.checks if not c.passed],
            "completions": len(sub.completions), "reason": v.reason[:200],
            "chunk_exp_frac": proof.get("worst_exp_frac", 0.0), "chunk_mant_mean": proof.get("worst_mant_mean", 0.0),
            "chunk_mant_median": proof.get("worst_mant_median", 0.0),
            "chunk_sign_frac": proof.get("worst_sign_frac", 0.0),
            "group_exp_frac": proof.get("group_exp_frac", 0.0), "group_mant_mean": proof.get("group_mant_mean", 0.0),
            "sampling_gap": sampling.get("worst_gap", 0.0),
            "positions": sampling.get("positions", 0), "near_ties": sampling.get("not_argmax", 0)}


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


STATS = [("chunk_exp_frac", "exp_mismatch_frac"), ("chunk_mant_mean", "mant_err_mean"),
         ("chunk_mant_median", "mant_err_median"), ("chunk_sign_frac", "sign_mismatch_frac"),
         ("group_exp_frac", "group_exp_mismatch_frac"), ("group_mant_mean", "group_mant_err_mean"),
         ("sampling_gap", "sampling_tolerance")]


# -- 1. honest ----------------------------------------------------------------------------------
def honest_section(world: H.World, long_world: H.World, target: int, out: dict) -> None:
    key = KeyPair.generate()
    variations = [(dt, th, b) for dt in ("float32", "bfloat16") for th in (1, 2) for b in (1, 4, 16)]
    per_var = max(1, -(-target // (len(variations) * world.group_size)))
    rows = []
    for dt, th, b in variations:
        engine = H.engine_for(world.versions[1], 1, dtype=dt, threads=th)
        leases = [world.lease(key) for _ in range(per_var)]
        torch.set_num_threads(th)
        subs = generate_batched(engine, [ls for ls, _ in leases], 1, b)
        res = [judge(world, env, s, key) for (ls, env), s in zip(leases, subs)]
        rows.append(summarise(f"{dt[:4]} t{th} b{b}", res))
        print_row(rows[-1])
    for dt in ("float32", "bfloat16"):
        engine = H.engine_for(long_world.versions[1], 1, dtype=dt, threads=2)
        leases = [long_world.lease(key) for _ in range(max(2, per_var // 2))]
        subs = generate_batched(engine, [ls for ls, _ in leases], 1, 16)
        res = [judge(long_world, env, s, key) for (ls, env), s in zip(leases, subs)]
        rows.append(summarise(f"long {dt[:4]}", res))
        print_row(rows[-1])
    total = {"name": "ALL", "completions": sum(r["completions"] for r in rows),
             "false_rejections": sum(r["false_rejections"] for r in rows),
             "near_ties": sum(r["near_ties"] for r in rows), "positions": sum(r["positions"] for r in rows),
             **{s: max(r[s] for r in rows) for s, _ in STATS}}
    print_row(total)
    from coordinator.config import NearTieConfig
    from coordinator.rules.near_ties import implausible

    cfg = NearTieConfig()
    for r in rows + [total]:
        r["near_tie_ban"] = implausible(r["near_ties"], r["positions"], honest_rate=cfg.honest_rate, alpha=cfg.alpha)
    print("  near-ties (tokens off the seeded argmax, within tolerance): "
          + ", ".join(f"{r['name']} {r['near_ties']}/{r['positions']}" for r in rows)
          + "; would the coordinator's near-tie test ban any of these honest workers: "
          + ("YES" if any(r["near_tie_ban"] for r in rows + [total]) else "no"))
    # for information: what a prefill in the other dtype would see (why the dtype is matched)
    import dataclasses

    matched = world.settings
    world.settings = dataclasses.replace(matched, match_dtypes=("float32",))
    engine = H.engine_for(world.versions[1], 1, dtype="bfloat16", threads=2)
    leases = [world.lease(key) for _ in range(per_var)]
    subs = generate_batched(engine, [ls for ls, _ in leases], 1, 4)
    info = summarise("bf16 vs fp32 *", [judge(world, env, s, key) for (ls, env), s in zip(leases, subs)])
    world.settings = matched
    print_row({**info, "reasons": []})
    print("  * not a verifier setting: a bf16 worker judged by an fp32 prefill, shown to explain dtype matching")
    out["honest"] = {"rows": rows, "total": total, "unmatched_dtype_info": info}


def summarise(name: str, res: list[dict]) -> dict:
    return {"name": name, "submissions": len(res), "completions": sum(r["completions"] for r in res),
            "false_rejections": sum(not r["accepted"] for r in res),
            "reasons": [r["reason"] for r in res if not r["accepted"]][:3],
            "near_ties": sum(r["near_ties"] for r in res), "positions": sum(r["positions"] for r in res),
            **{s: max(r[s] for r in res) for s, _ in STATS}}


def print_header() -> None:
    names = "".join(f"{s:>17}" for s, _ in STATS)
    print(f"{'variation':<16}{'compl.':>7}{'false rej.':>11}{names}")
    for label, thr in (("(fp32 limit)", Thresholds()), ("(bf16 limit)", LOW_PRECISION)):
        print(f"{label:<16}{'':>7}{'':>11}" + "".join(f"{getattr(thr, t):>17g}" for _, t in STATS))


def print_row(r: dict) -> None:
    print(f"{r['name']:<16}{r['completions']:>7}{r['false_rejections']:>11}"
          + "".join(f"{r[s]:>17.4g}" for s, _ in STATS))
    for reason in r.get("reasons", []):
        print(f"    rejected: {reason}")


# -- 2. attacks ---------------------------------------------------------------------------------
def attack_section(world: H.World, root: Path, n: int, out: dict) -> None:
    key = KeyPair.generate()
    v1 = world.versions[1]
    honest_engine = H.engine_for(v1, 1, threads=VERIFY_THREADS)
    other_dir = H.build_model(root / "other-seed", seed=12345)
    noisy10 = H.perturbed_copy(v1, root / "noise-10pct", rel_noise=0.1)
    engines = {"other": H.engine_for(other_dir, 1), "noise10": H.engine_for(noisy10, 1),
               "v0": H.engine_for(world.versions[0], 0)}
    bf16 = {"other": H.engine_for(other_dir, 1, dtype="bfloat16"),
            "noise10": H.engine_for(noisy10, 1, dtype="bfloat16"),
            "v0": H.engine_for(world.versions[0], 0, dtype="bfloat16"),
            "honest": H.engine_for(v1, 1, dtype="bfloat16")}
    vocab = len(world.tokenizer)
    rng = world.rng

    def changed_prompt(lease, engine=honest_engine):
        p = list(lease.prompt_token_ids)
        digits = [i for i, t in enumerate(p) if world.tokenizer.convert_ids_to_tokens(t).isdigit()]
        i = digits[0] if digits else 0
        d = world.tokenizer.convert_ids_to_tokens(p[i])
        p[i] = world.tokenizer.convert_tokens_to_ids(str((int(d) + 1) % 10) if d.isdigit() else "1")
        return H.generate_with(engine, lease, 1, prompt=p)

    attacks = {
        "other weights (another seed)": lambda ls, e, h: H.generate_with(engines["other"], ls, 1),
        "weights + 10% noise (demo cheat)": lambda ls, e, h: H.generate_with(engines["noise10"], ls, 1),
        "previous version claimed as current": lambda ls, e, h: H.generate_with(engines["v0"], ls, 1),
        "changed prompt (one digit)": lambda ls, e, h: changed_prompt(ls),
        "one edited token (proof kept)": lambda ls, e, h: H.edit_token(h, rng, vocab, world.eos),
        "one edited token (re-proved)":
            lambda ls, e, h: H.reprove(world, ls, H.edit_token(h, rng, vocab, world.eos), 1),
        "temperature 0.7": lambda ls, e, h: H.generate_with(honest_engine, ls, 1, temperature=0.7),
        "temperature 1.5": lambda ls, e, h: H.generate_with(honest_engine, ls, 1, temperature=1.5),
        "greedy decoding": lambda ls, e, h: H.greedy_submission(world, ls, 1),
        "cherry-picking (resample until right)": lambda ls, e, h: H.cherry_pick(world, honest_engine, ls, 1),
        "truncation": lambda ls, e, h: H.truncate(h, forge_eos=False, eos=world.eos),
        "forged EOS (re-proved)":
            lambda ls, e, h: H.reprove(world, ls, H.truncate(h, forge_eos=True, eos=world.eos), 1),
        "forged reward claim": lambda ls, e, h: H.with_claimed_rewards(h, 1.0),
        # the same weight and prompt cheats by a worker that computes in, and declares, bf16
        # (it is then judged by a bf16 prefill against the wider low-precision limits)
        "bf16: other weights": lambda ls, e, h: H.generate_with(bf16["other"], ls, 1),
        "bf16: weights + 10% noise": lambda ls, e, h: H.generate_with(bf16["noise10"], ls, 1),
        "bf16: previous version as current": lambda ls, e, h: H.generate_with(bf16["v0"], ls, 1),
        "bf16: changed prompt (one digit)": lambda ls, e, h: changed_prompt(ls, bf16["honest"]),
        "bf16: temperature 0.7": lambda ls, e, h: H.generate_with(bf16["honest"], ls, 1, temperature=0.7),
    }
    rows = []
    print("  rate: share of the effective cheats (those that differ from the honest rollout) rejected on their own;")
    print("  banned: after how many of the submissions one worker sending them in order is banned, by a")
    print("  rejection or by the coordinator's near-tie rate test ('-': never); by ties: by that test alone;")
    print("  ties: share of the effective cheats' tokens that were not the seeded argmax (within tolerance or not)")
    print(f"{'attack':<40}{'subm.':>6}{'effective':>10}{'rejected':>9}{'rate':>8}{'banned':>8}{'by ties':>8}"
          f"{'ties':>9}  caught by")
    for name, make in attacks.items():
        leases = [world.lease(key) for _ in range(n)]
        honest = H.honest_submissions(honest_engine, [ls for ls, _ in leases], 1)
        res = []
        for (lease, env), h in zip(leases, honest):
            cheat = make(lease, env, h)
            effective = _differs(cheat, h)
            r = judge(world, env, cheat, key)
            res.append((effective, r))
        rows.append(attack_row(name, res))
    # replay and copied proofs need an honest submission that was already judged
    leases = [world.lease(key) for _ in range(2 * n)]
    honest = H.honest_submissions(honest_engine, [ls for ls, _ in leases], 1)
    for (lease, env), h in zip(leases[:n], honest[:n]):
        judge(world, env, h, key)
    replay = [(True, judge(world, env, h, key)) for (lease, env), h in zip(leases[:n], honest[:n])]
    rows.append(attack_row("replayed rollout", replay))
    copied = []
    for (lease, env), h, donor in zip(leases[n:], honest[n:], honest[:n]):
        cheat = H.copy_proof(h, donor)
        copied.append((_differs(cheat, h), judge(world, env, cheat, key)))
    rows.append(attack_row("proof copied from another rollout", copied))
    out["attacks"] = rows


def _differs(a, b) -> bool:
    return a.model_dump() != b.model_dump()


def banned_after(res: list[tuple[bool, dict]], *, rejections: bool = True) -> int | None:
    """How many of these submissions one worker sending them in order gets judged before it is
    banned: by a rejection (unless `rejections` is False), or by the coordinator's near-tie
    rate test over its full checks (`coordinator.rules.near_ties`, default settings; a
    rejected submission's counts are added too when rejections are ignored). None: never."""
    from coordinator.config import NearTieConfig
    from coordinator.rules.near_ties import implausible

    cfg, ties, positions = NearTieConfig(), 0, 0
    for i, (_, r) in enumerate(res, 1):
        if rejections and not r["accepted"]:
            return i
        ties, positions = ties + r["near_ties"], positions + r["positions"]
        if implausible(ties, positions, honest_rate=cfg.honest_rate, alpha=cfg.alpha):
            return i
    return None


def attack_row(name: str, res: list[tuple[bool, dict]]) -> dict:
    eff = [r for e, r in res if e]
    rejected = sum(not r["accepted"] for r in eff)
    caught = Counter(c for r in eff if not r["accepted"] for c in r["failed"])
    ban, tie_ban = banned_after(res), banned_after(res, rejections=False)
    row = {"attack": name, "submissions": len(res), "effective": len(eff), "rejected": rejected,
           "rate": rejected / len(eff) if eff else None, "caught_by": dict(caught), "worker_banned_after": ban,
           "banned_by_near_ties_alone_after": tie_ban,
           "near_tie_rate": sum(r["near_ties"] for r in eff) / max(1, sum(r["positions"] for r in eff)),
           "missed": [r["reason"] or "accepted" for r in eff if r["accepted"]][:2]}
    rate = f"{100 * row['rate']:.0f}%" if eff else "n/a"
    print(f"{name:<40}{len(res):>6}{len(eff):>10}{rejected:>9}{rate:>8}{'-' if ban is None else ban:>8}"
          f"{'-' if tie_ban is None else tie_ban:>8}{100 * row['near_tie_rate']:>8.2f}%  "
          + ", ".join(f"{k} {v}" for k, v in caught.most_common()))
    return row


# -- 3. weight changes --------------------------------------------------------------------------
def weights_section(world: H.World, root: Path, n: int, out: dict) -> None:
    key = KeyPair.generate()
    rows = []
    print(f"{'change':<40}{'subm.':>6}{'effective':>10}{'rejected':>9}{'rate':>8}{'banned':>8}{'by ties':>8}"
          f"{'ties':>9}  caught by")
    honest_engine = H.engine_for(world.versions[1], 1, threads=VERIFY_THREADS)
    v1 = world.versions[1]
    variants = [(f"noise {r:g} x std", lambda r=r: H.perturbed_copy(v1, root / f"noise-{r:g}", rel_noise=r))
                for r in (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)]
    variants += [(f"policy 1 AdamW step away, lr {lr:g}",
                  lambda lr=lr: H.next_version(v1, root / f"step-{lr:g}", lr=lr))
                 for lr in (1e-4, 3e-5, 1e-5, 3e-6, 1e-6)]
    for (name, build), dtype in [(v, dt) for dt in ("float32", "bfloat16") for v in variants]:
        path = build()
        name = f"{dtype[:4]}: {name}"
        # the cheater holds `path` but claims version 1
        engine = H.engine_for(path, 1, dtype=dtype, threads=VERIFY_THREADS)
        leases = [world.lease(key) for _ in range(n)]
        honest = H.honest_submissions(honest_engine, [ls for ls, _ in leases], 1)
        cheats = H.honest_submissions(engine, [ls for ls, _ in leases], 1)
        res = [(_differs_tokens_or_proofs(c, h), judge(world, env, c, key))
               for (ls, env), c, h in zip(leases, cheats, honest)]
        row = attack_row(name, res)
        row["group_mant_mean"] = [round(r["group_mant_mean"], 3) for _, r in res][:8]
        rows.append(row)
    out["weights"] = rows


def _differs_tokens_or_proofs(a, b) -> bool:
    return [c.token_ids for c in a.completions] != [c.token_ids for c in b.completions] or \
        [c.proof for c in a.completions] != [c.proof for c in b.completions]


# -- 4. cost ------------------------------------------------------------------------------------
def cost_section(root: Path, out: dict, reps: int) -> None:
    from protocol.proof import from_b64

    rows = []
    for name, kw in (("tiny", dict(hidden=128, layers=4)), ("55M", dict(hidden=512, layers=14))):
        w = H.make_world(root / f"cost-{name}", group_size=16, max_tokens=128, **kw)
        key = KeyPair.generate()
        engine = H.engine_for(w.versions[1], 1, threads=VERIFY_THREADS)
        lease, env = w.lease(key)
        lease = lease.model_copy(update={"eos_token_id": 10**9})  # exactly 128 tokens each
        from protocol.envelope import AUDIENCE_WORKER, seal
        from protocol.messages import KIND_LEASE

        env = seal(KIND_LEASE, lease, w.coordinator, run_id=lease.run_id, audience=AUDIENCE_WORKER)
        t_gen, t_gen_cpu, t_build, t_ver, t_ver_cpu = [], [], [], [], []
        for _ in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            results = engine.generate(H._requests(lease))
            t_gen.append(time.perf_counter() - t0)
            t_gen_cpu.append(time.process_time() - c0)
            t1 = time.thread_time()
            proofs = build_proofs([r.hidden for r in results])
            t_build.append(time.thread_time() - t1)
            sub = build_submission(lease, results, proofs, 1, engine.info())
            job = w.job(env, sub, key)
            w.ledger = H.SeenLedger()
            w.models.model(1)  # loaded once, as in the service's LRU
            c2, t2 = time.process_time(), time.perf_counter()
            v = w.verify(job)
            t_ver.append(time.perf_counter() - t2)
            t_ver_cpu.append(time.process_time() - c2)
            assert v.accepted, v.reason
        tokens = sum(len(r.token_ids) for r in results)
        nbytes = sum(len(from_b64(c.proof)) for c in sub.completions)
        row = {"model": name, "params": sum(p.numel() for p in w.models.model(1).parameters()), "tokens": tokens,
               "generate_s": min(t_gen), "generate_cpu_s": min(t_gen_cpu), "build_s": min(t_build),
               "verify_s": min(t_ver), "verify_cpu_s": min(t_ver_cpu), "bytes_per_32_tokens": nbytes / tokens * 32}
        row["gen_over_verify_cpu"] = row["generate_cpu_s"] / row["verify_cpu_s"]
        row["build_pct_of_gen_cpu"] = 100 * row["build_s"] / row["generate_cpu_s"]
        rows.append(row)
    print(f"{'model':>6}{'params':>9}{'tokens':>8}{'gen s':>8}{'gen CPU s':>10}{'verify s':>9}{'verify CPU s':>13}"
          f"{'gen/verify (CPU)':>17}{'build/gen (CPU)':>16}{'bytes/32 tok':>13}")
    for r in rows:
        print(f"{r['model']:>6}{r['params'] / 1e6:>8.1f}M{r['tokens']:>8}{r['generate_s']:>8.2f}"
              f"{r['generate_cpu_s']:>10.2f}"
              f"{r['verify_s']:>9.3f}{r['verify_cpu_s']:>13.3f}{r['gen_over_verify_cpu']:>16.1f}x"
              f"{r['build_pct_of_gen_cpu']:>15.2f}%{r['bytes_per_32_tokens']:>13.1f}")
    out["cost"] = rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small sample of everything")
    ap.add_argument("--sections", nargs="+", default=["honest", "attacks", "weights", "cost"],
                    choices=["honest", "attacks", "weights", "cost"])
    ap.add_argument("--completions", type=int, default=2000, help="honest completions to judge (at least)")
    ap.add_argument("--per-attack", type=int, default=25, help="submissions per attack")
    ap.add_argument("--warm-seconds", type=float, default=45.0, help="supervised warm start of the tiny model")
    ap.add_argument("--workdir", type=Path, default=None, help="keep models here (reused between runs)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "verification.json")
    args = ap.parse_args()
    if args.quick:
        args.completions, args.per_attack = min(args.completions, 200), min(args.per_attack, 4)
    tmp = None if args.workdir else tempfile.TemporaryDirectory()
    root = args.workdir or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    out: dict = {"thresholds": Thresholds().model_dump(), "low_precision": LOW_PRECISION.model_dump(),
                 "args": {k: str(v) for k, v in vars(args).items()}}
    started = time.monotonic()
    world = H.make_world(root / "demo", warm_seconds=args.warm_seconds, group_size=8, max_tokens=8)
    print(f"tiny model ready ({time.monotonic() - started:.0f} s)")
    if "honest" in args.sections:
        long_world = H.make_world(root / "long", group_size=8, max_tokens=64)
        print("\n1. honest rollouts (full check of every submission; false rejections must be 0)")
        print_header()
        honest_section(world, long_world, args.completions, out)
    if "attacks" in args.sections:
        print(f"\n2. attacks (check rate 100%, {args.per_attack} submissions of 8 completions each)")
        attack_section(world, root, args.per_attack, out)
    if "weights" in args.sections:
        print(f"\n3. weight changes: smallest change still caught ({max(2, args.per_attack // 2)} submissions each)")
        weights_section(world, root, max(2, args.per_attack // 2), out)
    if "cost" in args.sections:
        print("\n4. cost: generation of 16 x 128 tokens vs the verifier's prefill + checks of them")
        cost_section(root, out, reps=1 if args.quick else 3)
    print(f"\ntotal {time.monotonic() - started:.0f} s; shared 2-core machine: timings are noisy")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
