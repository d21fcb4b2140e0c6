"""bench/verification.py, section 2: every cheat, computed in fp32 and in bf16, each declared
as fp32 and as bf16.

Per attack and compute dtype, one row; per declared dtype, two columns: the share of the
effective cheats (those that differ from the honest rollout of the same lease) rejected on
their own, and after how many of the submissions one worker sending them in order is banned
(by a rejection, or by the coordinator's near-tie or proof-drift tests over its accepted full
checks; '-': never within them). "lower" marks a row where declaring the dtype the worker did
not compute in caught less than declaring the true one: the goal is that no row has it.

Run through `python bench/verification.py --sections attacks` (the models are built there).
"""

from __future__ import annotations

import random
from pathlib import Path

if __name__ == "__main__":   # run as a file: the same as bench/verification.py --sections attacks
    import subprocess
    import sys

    sys.exit(subprocess.call([sys.executable, str(Path(__file__).resolve().parent / "verification.py"),
                              "--sections", "attacks", *sys.argv[1:]]))

from bench.verification import SHORT, banned_after, drift_errors, judge
from protocol.identity import KeyPair
from tests.adversarial import harness as H

DTYPES = ("float32", "bfloat16")


def _weight_variants(world: H.World, root: Path) -> dict[str, Path]:
    v1 = world.versions[1]
    out = {f"{q} weights": H.quantized_copy(v1, root / q, scheme=q) for q in H.QUANTIZATIONS}
    for r in (0.003, 0.01, 0.03, 0.1):
        out[f"weights + {r:.1%} noise"] = H.perturbed_copy(v1, root / f"noise-{r:g}", rel_noise=r) \
            if not (root / f"noise-{r:g}" / "config.json").exists() else root / f"noise-{r:g}"
    for lr in (1e-5, 1e-4):
        out[f"one AdamW step, lr {lr:g}"] = H.next_version(v1, root / f"step-{lr:g}", lr=lr)
    out["previous version as current"] = world.versions[0]
    out["other weights (another seed)"] = H.build_model(root / "other-seed", seed=12345)
    return out


def _changed_prompt(world: H.World, engine, lease):
    p = list(lease.prompt_token_ids)
    digits = [i for i, t in enumerate(p) if world.tokenizer.convert_ids_to_tokens(t).isdigit()]
    i = digits[0] if digits else 0
    d = world.tokenizer.convert_ids_to_tokens(p[i])
    p[i] = world.tokenizer.convert_tokens_to_ids(str((int(d) + 1) % 10) if d.isdigit() else "1")
    return H.generate_with(engine, lease, 1, prompt=p)


def _behaviours(world: H.World, engine, dt: str):
    """name -> make(lease, honest submission) for the cheats that are not other weights."""
    rng = random.Random(7)
    vocab, eos = len(world.tokenizer), world.eos
    return {
        "changed prompt (one digit)": lambda ls, h: _changed_prompt(world, engine, ls),
        "one edited token (proof kept)": lambda ls, h: H.edit_token(h, rng, vocab, eos),
        "one edited token (re-proved)": lambda ls, h: H.reprove(world, ls, H.edit_token(h, rng, vocab, eos), 1, dt),
        "temperature 0.7": lambda ls, h: H.generate_with(engine, ls, 1, temperature=0.7),
        "temperature 1.5": lambda ls, h: H.generate_with(engine, ls, 1, temperature=1.5),
        "greedy decoding": lambda ls, h: H.greedy_submission(world, ls, 1, dt),
        "cherry-picking (resample until right)": lambda ls, h: H.cherry_pick(world, engine, ls, 1),
        "truncation": lambda ls, h: H.truncate(h, forge_eos=False, eos=eos),
        "forged EOS (re-proved)": lambda ls, h: H.reprove(world, ls, H.truncate(h, forge_eos=True, eos=eos), 1, dt),
        "forged reward claim": lambda ls, h: H.with_claimed_rewards(h, 1.0),
        "typed-in answers, proofs of them": lambda ls, h: H.typed_answers(world, ls, engine, 1),
        "non-finite values in the proofs": lambda ls, h: H.non_finite_proofs(h, ls, engine),
    }


def _cell(world: H.World, key: KeyPair, leases, cheats, honest, decl: str) -> dict:
    world.ledger = H.SeenLedger()
    res, eff = [], []
    for (ls, env), c, h in zip(leases, cheats, honest):
        r = judge(world, env, H.declared(c, decl), key)
        res.append(r)
        eff.append(c.model_dump(exclude={"engine"}) != h.model_dump(exclude={"engine"}))
    effective = [r for r, e in zip(res, eff) if e]
    rejected = sum(not r["accepted"] for r in effective)
    ban, why = banned_after(res)
    caught: dict[str, int] = {}
    for r in effective:
        for name in r["failed"]:
            caught[name] = caught.get(name, 0) + 1
    return {"n": len(res), "effective": len(effective), "rejected": rejected,
            "rate": rejected / len(effective) if effective else None, "banned_after": ban, "ban_by": why,
            "caught_by": caught, "judged": sorted({r["judged_dtype"] for r in res if r["judged_dtype"]}),
            "drift_errors": [drift_errors(r) for r in res]}


def _fmt(c: dict) -> str:
    rate = "n/a" if c["rate"] is None else f"{100 * c['rate']:.0f}%"
    ban = "-" if c["banned_after"] is None else f"{c['banned_after']}{c['ban_by'][:1]}"
    return f"{rate:>6}{ban:>6}"


def attack_section(world: H.World, root: Path, n: int, out: dict) -> None:
    key = KeyPair.generate()
    variants = _weight_variants(world, root)
    print("  rate: effective cheats rejected on their own; ban: submissions until the worker is banned "
          "(r: a rejection, n: near-tie test, d: proof-drift test; '-': not within them)")
    print(f"{'attack':<42}{'computed':>9}  {'declared fp32':>12}  {'declared bf16':>12}  caught by (true dtype)")
    rows = []
    for dt in DTYPES:
        honest_engine = H.engine_for(world.versions[1], 1, dtype=dt, threads=1)
        makers = {name: (lambda ls, h, p=p: H.generate_with(engines[p], ls, 1)) for name, p in variants.items()}
        engines = {p: H.engine_for(p, 1, dtype=dt, threads=1) for p in variants.values()}
        for name, r in (("one completion of 8 from weights + 3% noise", "weights + 3.0% noise"),
                        ("one completion of 8 from weights + 10% noise", "weights + 10.0% noise")):
            p = variants[r]
            makers[name] = (lambda ls, h, p=p: H.mixed(h, H.generate_with(engines[p], ls, 1),
                                                       random.Random(ls.lease_id).randrange(len(ls.seeds))))
        makers.update(_behaviours(world, honest_engine, dt))
        for name, make in makers.items():
            leases = [world.lease(key) for _ in range(n)]
            honest = H.honest_submissions(honest_engine, [ls for ls, _ in leases], 1)
            cheats = [make(ls, h) for (ls, _), h in zip(leases, honest)]
            cells = {decl: _cell(world, key, leases, cheats, honest, decl) for decl in DTYPES}
            true = cells[dt]
            lower = [d for d, c in cells.items() if d != dt and c["rate"] is not None and true["rate"] is not None
                     and (c["rate"] < true["rate"] or _later(c, true))]
            row = {"attack": name, "computed": dt, "cells": cells, "lower_when_declared": lower}
            rows.append(row)
            print(f"{name:<42}{SHORT[dt]:>9}  {_fmt(cells['float32']):>12}  {_fmt(cells['bfloat16']):>12}  "
                  + ", ".join(f"{k} {v}" for k, v in sorted(true["caught_by"].items(), key=lambda kv: -kv[1]))
                  + ("   LOWER when declared " + ", ".join(SHORT[d] for d in lower) if lower else ""), flush=True)
    # fp16 is not a dtype any run may allow: a declaration of it is refused whatever was computed
    fp16 = [_cell(world, key, *_fp16_case(world, key, n), "float16")]
    print(f"{'declares float16 (any content)':<42}{'-':>9}  {_fmt(fp16[0]):>26}  "
          + ", ".join(f"{k} {v}" for k, v in fp16[0]["caught_by"].items()))
    out["attacks"] = {"rows": rows, "float16": fp16[0]}


def _later(c: dict, true: dict) -> bool:
    """Banned later (or never) where the true declaration gets a ban."""
    if true["banned_after"] is None:
        return False
    return c["banned_after"] is None or c["banned_after"] > true["banned_after"]


def _fp16_case(world: H.World, key: KeyPair, n: int):
    engine = H.engine_for(world.versions[1], 1, dtype="float32", threads=1)
    leases = [world.lease(key) for _ in range(n)]
    honest = H.honest_submissions(engine, [ls for ls, _ in leases], 1)
    cheats = [H.typed_answers(world, ls, engine, 1) for ls, _ in leases]
    return leases, cheats, honest
