"""A seeded mutation fuzzer of the judge: honest submissions, changed in what a worker
controls, re-signed with the worker's key, judged by `verifier.pipeline.verify_job`.

Used by tests/adversarial/test_judge_fuzz.py. A worker signs a `Submission` body: lease id,
policy version, completions (token ids, finish reason, proof) in seed order, engine info
(name, version, dtype, device) and optional claimed rewards. Seeds and sampling parameters
are not the worker's to state (they are the coordinator's, in the signed lease): a body that
names them has an unknown field, which the schema refuses (`extra_field`).

Each mutation works on the body as JSON (so it can write what the schema refuses: a
negative id, a missing field) and says what the verdict must be:

- REJECT: it changed something the run binds (tokens, proofs, count, order, version, the
  declared dtype, the termination, the claimed rewards' truth): a rejection naming a failing
  check;
- ACCEPT: a purely descriptive change, with the reason (engine name/version/device, another
  spelling of the same dtype, a reward claim equal to the truth);
- EITHER: legitimately judged to a tolerance, with the reason (see `proof_bitflip`).

`seal_body` signs a JSON body exactly as `protocol.envelope.seal` does; `job_for` wraps it as
the coordinator would (rewards computed from the decoded tokens); `judge` runs the pipeline
with a fresh replay ledger, so that only the other checks can catch a mutation (the honest
original was never sent), and a seeded precision-probe index.
"""

from __future__ import annotations

import base64
import copy
import os
import random
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from protocol import dtypes
from protocol.envelope import AUDIENCE_COORDINATOR, Envelope, envelope_signing_bytes
from protocol.errors import MessageError
from protocol.identity import KeyPair
from protocol.lm import decode_completion
from protocol.messages import KIND_SUBMISSION, Lease, Verdict, VerificationJob
from protocol.proof import build_proofs
from protocol.tasks import score
from verifier.pipeline import verify_job
from verifier.seen import SeenLedger

REJECT, ACCEPT, EITHER = "reject", "accept", "either"
CHECKS = {"signatures", "lease_and_data", "termination", "reward", "replay", "proof", "sampling", "verifier"}


@dataclass(frozen=True)
class Case:
    """One honest submission and what a mutation may read besides it."""

    world: Any
    key: KeyPair
    lease: Lease
    lease_env: Envelope
    body: dict                     # the honest submission's JSON body
    donors: list[dict]             # other honest bodies (other leases)
    vocab: int                     # the model's vocabulary (embedding rows)
    dtype: str                     # the dtype the honest engine computed in


@dataclass(frozen=True)
class Mutant:
    name: str
    body: dict
    expect: str                    # REJECT, ACCEPT or EITHER
    why: str = ""                  # for ACCEPT / EITHER: why that is legitimate


def seal_body(body: dict, key: KeyPair, *, run_id: str) -> Envelope:
    """`protocol.envelope.seal` of a JSON body (which need not be a valid `Submission`)."""
    ts, nonce = time.time(), os.urandom(16).hex()
    try:
        data = envelope_signing_bytes(KIND_SUBMISSION, body, key.public.hex, ts, nonce, run_id=run_id,
                                      audience=AUDIENCE_COORDINATOR)
    except MessageError:  # no canonical form (NaN): what a worker can send is a signature over something else
        data = b"no canonical form"
    return Envelope(kind=KIND_SUBMISSION, run_id=run_id, audience=AUDIENCE_COORDINATOR, body=body,
                    signer=key.public.hex, timestamp=ts, nonce=nonce, signature=key.sign(data))


def _reward(world: Any, lease: Lease, ids: Any) -> float:
    task = world.task_of(lease)
    try:
        return float(score(task.kind, task.answer, decode_completion(world.tokenizer, list(ids))))
    except Exception:  # noqa: BLE001 - the coordinator's intake would refuse such a body; 0 is a fine stand-in
        return 0.0


def job_for(case: Case, body: dict) -> VerificationJob:
    """The job the coordinator would hand out for `body` (its own rewards, one per completion)."""
    comps = body.get("completions") if isinstance(body.get("completions"), list) else []
    rewards = [_reward(case.world, case.lease, c.get("token_ids", []) if isinstance(c, dict) else []) for c in comps]
    task = case.world.task_of(case.lease)
    return VerificationJob(submission_id=f"S{uuid.uuid4().hex[:16]}", worker_id=case.key.peer_id,
                           lease=case.lease_env, submission=seal_body(body, case.key, run_id=case.lease.run_id),
                           rewards=rewards, task_answer=task.answer, task_kind=task.kind, full_check=True)


def judge(case: Case, body: dict, probe_index: int | None = None) -> Verdict:
    w = case.world
    return verify_job(job_for(case, body), coordinator_key=w.coordinator.public, tokenizer=w.tokenizer,
                      models=w.models, settings=w.settings, ledger=SeenLedger(), probe_index=probe_index)


# -- mutations: (case, body copy, rng) -> Mutant | None (None: not applicable here) ---------------
Mutation = Callable[[Case, dict, random.Random], "Mutant | None"]
MUTATIONS: dict[str, Mutation] = {}


def mutation(fn: Mutation) -> Mutation:
    MUTATIONS[fn.__name__] = fn
    return fn


def _comp(body: dict, rng: random.Random, pred: Callable[[dict], bool] = lambda c: True) -> int | None:
    idx = [i for i, c in enumerate(body["completions"]) if pred(c)]
    return rng.choice(idx) if idx else None


def _eos(case: Case) -> int:
    return case.lease.eos_token_id


def _other_token(case: Case, rng: random.Random, *avoid: int) -> int:
    while True:
        t = rng.randrange(3, case.vocab)
        if t not in avoid and t != _eos(case):
            return t


@mutation
def tok_change(case, body, rng):
    """One non-EOS token of one completion replaced by another non-EOS id in the vocabulary."""
    i = _comp(body, rng, lambda c: any(t != _eos(case) for t in c["token_ids"]))
    if i is None:
        return None
    toks = body["completions"][i]["token_ids"]
    j = rng.choice([j for j, t in enumerate(toks) if t != _eos(case)])
    toks[j] = _other_token(case, rng, toks[j])
    return Mutant("tok_change", body, REJECT)


@mutation
def tok_swap(case, body, rng):
    """Two different tokens of one completion swapped."""
    i = _comp(body, rng, lambda c: len(set(c["token_ids"])) > 1)
    if i is None:
        return None
    toks = body["completions"][i]["token_ids"]
    a, b = rng.choice([(a, b) for a in range(len(toks)) for b in range(a + 1, len(toks)) if toks[a] != toks[b]])
    toks[a], toks[b] = toks[b], toks[a]
    return Mutant("tok_swap", body, REJECT)


@mutation
def tok_drop(case, body, rng):
    """One token of one completion dropped (the proof left as it was)."""
    i = _comp(body, rng, lambda c: len(c["token_ids"]) > 1)
    if i is None:
        return None
    toks = body["completions"][i]["token_ids"]
    del toks[rng.randrange(len(toks))]
    return Mutant("tok_drop", body, REJECT)


@mutation
def tok_append(case, body, rng):
    """One token appended to one completion (EOS or another)."""
    i = _comp(body, rng)
    body["completions"][i]["token_ids"].append(rng.choice([_eos(case), _other_token(case, rng)]))
    return Mutant("tok_append", body, REJECT)


@mutation
def tok_tail(case, body, rng):
    """The tail of one completion replaced by random tokens (same length, ending as before)."""
    i = _comp(body, rng, lambda c: len(c["token_ids"]) > 1)
    if i is None:
        return None
    toks = body["completions"][i]["token_ids"]
    cut = rng.randrange(len(toks) - 1)
    for j in range(cut, len(toks) - 1):
        toks[j] = _other_token(case, rng, toks[j])
    return Mutant("tok_tail", body, REJECT)


@mutation
def tok_eos_inside(case, body, rng):
    """An EOS put in the middle of a completion."""
    i = _comp(body, rng, lambda c: len(c["token_ids"]) > 2)
    if i is None:
        return None
    toks = body["completions"][i]["token_ids"]
    j = rng.randrange(len(toks) - 1)
    if toks[j] == _eos(case):
        return None
    toks[j] = _eos(case)
    return Mutant("tok_eos_inside", body, REJECT)


@mutation
def tok_out_of_vocab(case, body, rng):
    """A token id at or past the model's vocabulary (still a valid TokenId on the wire)."""
    i = _comp(body, rng)
    toks = body["completions"][i]["token_ids"]
    toks[rng.randrange(len(toks))] = rng.choice([case.vocab, case.vocab + 1, 50_257, 151_936, 2**31 - 1])
    return Mutant("tok_out_of_vocab", body, REJECT)


@mutation
def tok_negative(case, body, rng):
    """A negative or over-wide token id (the schema refuses it)."""
    i = _comp(body, rng)
    toks = body["completions"][i]["token_ids"]
    toks[rng.randrange(len(toks))] = rng.choice([-1, -(2**31), 2**31, 2**63])
    return Mutant("tok_negative", body, REJECT)


@mutation
def tok_cross(case, body, rng):
    """Two completions' token lists swapped (proofs and finish reasons stay)."""
    comps = body["completions"]
    pairs = [(a, b) for a in range(len(comps)) for b in range(a + 1, len(comps))
             if comps[a]["token_ids"] != comps[b]["token_ids"]]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    comps[a]["token_ids"], comps[b]["token_ids"] = comps[b]["token_ids"], comps[a]["token_ids"]
    return Mutant("tok_cross", body, REJECT)


@mutation
def comp_reorder(case, body, rng):
    """Two whole completions swapped: each now answers the other's seed."""
    comps = body["completions"]
    pairs = [(a, b) for a in range(len(comps)) for b in range(a + 1, len(comps)) if comps[a] != comps[b]]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    comps[a], comps[b] = comps[b], comps[a]
    return Mutant("comp_reorder", body, REJECT)


@mutation
def count_drop(case, body, rng):
    """One completion left out."""
    comps = body["completions"]
    if len(comps) < 2:
        return None
    del comps[rng.randrange(len(comps))]
    return Mutant("count_drop", body, REJECT)


@mutation
def count_add(case, body, rng):
    """A completion added: a copy of one, or one of another submission."""
    comps = body["completions"]
    src = rng.choice([comps] + [d["completions"] for d in case.donors])
    comps.insert(rng.randrange(len(comps) + 1), copy.deepcopy(rng.choice(src)))
    return Mutant("count_add", body, REJECT)


@mutation
def count_empty(case, body, rng):
    """No completions at all (the schema refuses it)."""
    body["completions"] = []
    return Mutant("count_empty", body, REJECT)


@mutation
def comp_from_donor(case, body, rng):
    """One completion (tokens, proof, finish) taken from another lease's honest submission."""
    donor = rng.choice(case.donors)
    i = rng.randrange(min(len(body["completions"]), len(donor["completions"])))
    if body["completions"][i] == donor["completions"][i]:
        return None
    body["completions"][i] = copy.deepcopy(donor["completions"][i])
    return Mutant("comp_from_donor", body, REJECT)


def _reprove(case: Case, body: dict, version: int | None = None) -> dict | None:
    """`body` with every proof rebuilt from the claimed model's own prefill of its tokens, in the
    dtype computed in (the strongest cheater: its proofs are genuine for what it sends), or
    None when its tokens cannot be run (out of the vocabulary)."""
    from protocol.lm import completion_outputs

    comps = body["completions"]
    if any(not c["token_ids"] or max(c["token_ids"]) >= case.vocab or min(c["token_ids"]) < 0 for c in comps):
        return None
    model = case.world.models.model(body["policy_version"] if version is None else version, case.dtype)
    outs = completion_outputs(model, list(case.lease.prompt_token_ids), [c["token_ids"] for c in comps])
    for c, p in zip(comps, build_proofs([h for h, _ in outs])):
        _set_proof(c, p)
    return body


@mutation
def tok_change_reproved(case, body, rng):
    """`tok_change`, with proofs genuine for the changed tokens: the sampling check's alone."""
    m = tok_change(case, body, rng)
    return m and _reprove(case, m.body) and Mutant("tok_change_reproved", m.body, REJECT)


@mutation
def tok_cut_eos_reproved(case, body, rng):
    """A completion cut short and ended with a forged EOS, proofs genuine for that: EOS was not
    the seeded sample there (an honest worker would have stopped)."""
    i = _comp(body, rng, lambda c: len(c["token_ids"]) > 1)
    if i is None:
        return None
    c = body["completions"][i]
    c["token_ids"] = c["token_ids"][: rng.randrange(len(c["token_ids"]) - 1)] + [_eos(case)]
    c["finish_reason"] = "eos"
    return _reprove(case, body) and Mutant("tok_cut_eos_reproved", body, REJECT)


@mutation
def tok_extend_reproved(case, body, rng):
    """An EOS-ended completion continued to max_tokens with other tokens ('length'), proofs
    genuine: the token in place of the sampled EOS is not the seeded sample."""
    i = _comp(body, rng, lambda c: c["finish_reason"] == "eos")
    if i is None:
        return None
    c = body["completions"][i]
    c["token_ids"] = c["token_ids"][:-1]
    while len(c["token_ids"]) < case.lease.sampling.max_tokens:
        c["token_ids"].append(_other_token(case, rng))
    c["finish_reason"] = "length"
    return _reprove(case, body) and Mutant("tok_extend_reproved", body, REJECT)


@mutation
def version_reproved(case, body, rng):
    """Another version inside the lease's range claimed, with proofs genuine for that version's
    prefill of the same tokens. EITHER: the sampling check then holds the tokens to that
    version's seeded samples, so it passes only where they are (to the sampling tolerance)
    the same tokens an honest worker on the claimed version would have sent."""
    lo, hi = case.lease.min_policy_version, case.lease.max_policy_version
    others = [x for x in range(lo, hi + 1) if x != body["policy_version"] and x in case.world.versions]
    if not others:
        return None
    body["policy_version"] = rng.choice(others)
    return _reprove(case, body) and Mutant("version_reproved", body, EITHER,
                                           "the tokens are then checked as the claimed version's seeded samples")


def _proof_bytes(c: dict) -> bytearray:
    return bytearray(base64.b64decode(c["proof"]))


def _set_proof(c: dict, raw: bytes) -> None:
    c["proof"] = base64.b64encode(bytes(raw)).decode()


@mutation
def proof_bitflip(case, body, rng):
    """One bit of one proof flipped (header or chunk bytes).

    EITHER, in one place: bit 0 of a chunk's constant coefficient, in a bf16 submission. The
    polynomial then claims every value of the chunk one bf16 bit pattern off (a mantissa
    error of 1 step), which bf16's calibrated limits allow for honest kernels on other
    hardware (up to 5 steps per chunk, 1.8 pooled; `verifier.thresholds`): the proof is
    checked to a tolerance, not bit for bit, and still commits to the same computation."""
    i = _comp(body, rng)
    raw = _proof_bytes(body["completions"][i])
    if rng.random() < 0.2:
        byte = rng.randrange(16)
    else:
        byte = rng.randrange(16, len(raw))
    bit = rng.randrange(8)
    raw[byte] ^= 1 << bit
    _set_proof(body["completions"][i], raw)
    off = (byte - 16) % 258 if byte >= 16 else None
    const_lsb = off == 3 and bit == 0  # big-endian u16 at offset 2 of the chunk: its low byte
    if const_lsb and case.dtype == "bfloat16":
        return Mutant("proof_bitflip", body, EITHER, "bf16: a uniform 1-step shift of a chunk's claimed values is "
                                                     "within bf16's calibrated proof tolerance")
    return Mutant(f"proof_bitflip[{'header' if off is None else 'chunk'}]", body, REJECT)


@mutation
def proof_swap(case, body, rng):
    """Two completions' proofs swapped (tokens stay)."""
    comps = body["completions"]
    pairs = [(a, b) for a in range(len(comps)) for b in range(a + 1, len(comps)) if comps[a]["proof"] != comps[b]["proof"]]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    comps[a]["proof"], comps[b]["proof"] = comps[b]["proof"], comps[a]["proof"]
    return Mutant("proof_swap", body, REJECT)


@mutation
def proof_truncate(case, body, rng):
    """One proof cut short (or grown by a few bytes)."""
    i = _comp(body, rng)
    raw = _proof_bytes(body["completions"][i])
    raw = raw[: rng.randrange(len(raw))] if rng.random() < 0.7 else raw + os.urandom(rng.randrange(1, 300))
    _set_proof(body["completions"][i], raw)
    return Mutant("proof_truncate", body, REJECT)


@mutation
def proof_donor(case, body, rng):
    """One proof taken from another submission (another lease), same index."""
    donor = rng.choice(case.donors)
    i = rng.randrange(min(len(body["completions"]), len(donor["completions"])))
    if body["completions"][i]["proof"] == donor["completions"][i]["proof"]:
        return None
    body["completions"][i]["proof"] = donor["completions"][i]["proof"]
    return Mutant("proof_donor", body, REJECT)


@mutation
def proof_header(case, body, rng):
    """One proof's header rewritten: tokens covered, hidden size, chunk size or top-k."""
    i = _comp(body, rng)
    raw = _proof_bytes(body["completions"][i])
    magic, ver, flags, cs, k, T, H = struct.unpack_from(">2sBBHHII", raw)
    field = rng.choice(["T", "H", "cs", "k"])
    T, H, cs, k = (T + rng.choice([-1, 1, 32]) if field == "T" else T, H * 2 if field == "H" else H,
                   cs // 2 if field == "cs" else cs, k // 2 if field == "k" else k)
    struct.pack_into(">2sBBHHII", raw, 0, magic, ver, flags, cs, k, max(T, 0), H)
    _set_proof(body["completions"][i], raw)
    return Mutant("proof_header", body, REJECT)


@mutation
def proof_rebuilt_other(case, body, rng):
    """A proof rebuilt for other hidden states of the right shape (zeros, noise, or another
    chunk size and top-k), decodable and well formed."""
    import torch

    i = _comp(body, rng)
    raw = _proof_bytes(body["completions"][i])
    T, H = struct.unpack_from(">II", raw, 8)
    kind = rng.choice(["zeros", "noise", "layout"])
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    h = torch.zeros(T, H) if kind == "zeros" else torch.randn(T, H, generator=g)
    kw = {"chunk_size": 16, "topk": 64} if kind == "layout" else {}
    _set_proof(body["completions"][i], build_proofs([h], **kw)[0])
    return Mutant("proof_rebuilt_other", body, REJECT)


@mutation
def proof_garbage(case, body, rng):
    """A proof that is empty, not base64, or base64 of random bytes."""
    i = _comp(body, rng)
    body["completions"][i]["proof"] = rng.choice(["", "!!!!", "AAAA", base64.b64encode(os.urandom(300)).decode()])
    return Mutant("proof_garbage", body, REJECT)


@mutation
def finish_flip(case, body, rng):
    """A completion's finish reason turned into the other one (or an unknown one)."""
    i = _comp(body, rng)
    c = body["completions"][i]
    c["finish_reason"] = rng.choice([{"eos": "length", "length": "eos"}[c["finish_reason"]], "stop", ""])
    return Mutant("finish_flip", body, REJECT)


@mutation
def version_change(case, body, rng):
    """Another policy version: the other one inside the lease's range, or one outside it."""
    v = body["policy_version"]
    lo, hi = case.lease.min_policy_version, case.lease.max_policy_version
    inside = [x for x in range(lo, hi + 1) if x != v and x in case.world.versions]
    body["policy_version"] = rng.choice(inside + [hi + 1, -1, 2**31, "1"])
    name = f"version_change[{body['policy_version']!r}]"
    if case.dtype == "bfloat16" and body["policy_version"] in inside:
        # the fuzz world's versions are one AdamW step (lr 1e-4) apart: under bf16 rounding one
        # check catches that a third of the time (bench/verification.py, verifier/thresholds.py);
        # the coordinator's proof-drift test over a worker's full checks is what bans it
        return Mutant(name, body, EITHER, "a version one optimiser step away is within bf16's per-check limits")
    return Mutant(name, body, REJECT)


@mutation
def lease_change(case, body, rng):
    """Another lease id (another lease of the same worker, or made up)."""
    body["lease_id"] = rng.choice([d["lease_id"] for d in case.donors] + ["Lnotalease", ""])
    return Mutant("lease_change", body, REJECT)


@mutation
def dtype_other(case, body, rng):
    """Another compute dtype declared. Declaring float32 over a bf16 computation must fail
    (judged by float32's limits); float16, unknown or empty names are not allowed. Declaring
    bfloat16 over a float32 computation is EITHER: the precision probe finds it computed in
    float32 and judges it by float32's limits (`verifier.pipeline`), so an honest float32
    computation passes as it would have undeclared."""
    choices = ["float16", "fp16", "int8", "", "float64", "bfloat16 ", "float32\x00"]
    choices.append("float32" if case.dtype == "bfloat16" else "bfloat16")
    d = rng.choice(choices)
    body["engine"]["dtype"] = d
    if dtypes.canonical(d) == case.dtype:
        return Mutant(f"dtype_other[{d!r}]", body, ACCEPT, "another spelling of the dtype computed in")
    if case.dtype == "float32" and dtypes.canonical(d) == "bfloat16":
        return Mutant("dtype_other[bf16 over fp32]", body, EITHER,
                      "the precision probe judges a float32 computation declared bf16 by float32's limits")
    return Mutant(f"dtype_other[{d!r}]", body, REJECT)


@mutation
def dtype_alias(case, body, rng):
    """The same dtype under another spelling ('fp32', 'torch.float32', 'BF16'): ACCEPT, the
    verifier canonicalises the name (`protocol.dtypes.canonical`) and judges the same dtype."""
    aliases = {"float32": ["fp32", "torch.float32", "FLOAT32", "float"], "bfloat16": ["bf16", "torch.bfloat16", "BFloat16"]}
    body["engine"]["dtype"] = rng.choice(aliases[case.dtype])
    return Mutant("dtype_alias", body, ACCEPT, "another spelling of the dtype computed in")


@mutation
def engine_descriptive(case, body, rng):
    """Engine name, version or device changed: ACCEPT, they are informational (archived for
    audits; `protocol.messages.EngineInfo`), nothing is judged on them."""
    field = rng.choice(["name", "version", "device"])
    body["engine"][field] = rng.choice(["vllm", "x" * 32, "", "cuda:7", "0.0.0-evil"])
    if body["engine"][field] == case.body["engine"][field]:
        return None
    return Mutant(f"engine_descriptive[{field}]", body, ACCEPT, "engine name/version/device are descriptive")


@mutation
def claimed_rewards(case, body, rng):
    """A reward claim: the truth (ACCEPT: it is never used, and it is true), a lie, the wrong
    number of them, or a non-finite one (REJECT)."""
    truth = [_reward(case.world, case.lease, c["token_ids"]) for c in body["completions"]]
    kind = rng.choice(["truth", "lie", "count", "nan"])
    if kind == "truth":
        body["claimed_rewards"] = truth
        return Mutant("claimed_rewards[truth]", body, ACCEPT, "a true reward claim is ignored and true")
    if kind == "lie":
        j = rng.randrange(len(truth))
        body["claimed_rewards"] = [r if k != j else (1.0 - r if r in (0.0, 1.0) else r + 1) for k, r in enumerate(truth)]
    elif kind == "count":
        body["claimed_rewards"] = truth[:-1] if rng.random() < 0.5 else truth + [0.0]
    else:
        body["claimed_rewards"] = [float("nan")] * len(truth)
    return Mutant(f"claimed_rewards[{kind}]", body, REJECT)


@mutation
def extra_field(case, body, rng):
    """A field the submission does not have (seeds, sampling, logprobs, a completion's own
    seed): the schema refuses unknown fields."""
    where, name, value = rng.choice([(body, "seeds", list(case.lease.seeds)),
                                     (body, "sampling", {"temperature": 0.5, "max_tokens": 4}),
                                     (body, "logprobs", [0.0]),
                                     (body["completions"][0], "seed", 1),
                                     (body["completions"][0], "logprobs", [-0.1] * len(body["completions"][0]["token_ids"]))])
    where[name] = value
    return Mutant(f"extra_field[{name}]", body, REJECT)


@mutation
def field_missing(case, body, rng):
    """A required field left out."""
    where = rng.choice([body, rng.choice(body["completions"]), body["engine"]])
    required = {"lease_id", "policy_version", "completions", "engine", "token_ids", "finish_reason", "proof", "name"}
    keys = [k for k in where if k in required]
    del where[rng.choice(keys)]
    return Mutant("field_missing", body, REJECT)


def mutants(case: Case, rng: random.Random, n: int, names: list[str] | None = None) -> list[Mutant]:
    """`n` mutants of `case`'s body, each one to two mutations (the first decides the
    expectation unless a later one is REJECT), that change the body."""
    pool = names or sorted(MUTATIONS)
    out: list[Mutant] = []
    tries = 0
    while len(out) < n and tries < 20 * n:
        tries += 1
        body = copy.deepcopy(case.body)
        done: list[Mutant] = []
        for _ in range(1 if rng.random() < 0.75 else 2):
            name = rng.choice(pool)
            if any(_areas(d.name) & _areas(name) for d in done):
                continue  # a second mutation of the same field could undo the first (and its expectation)
            try:  # on a copy: a mutation that gives up half-way leaves `body` as it was
                m = MUTATIONS[name](case, copy.deepcopy(body), rng) if _intact(body) else None
            except (ValueError, struct.error, IndexError, TypeError, KeyError):  # binascii.Error included: a broken proof
                m = None  # not applicable to what an earlier mutation left
            if m is not None:
                done.append(m)
                body = m.body
        if not done or body == case.body:
            continue
        expect = REJECT if any(m.expect == REJECT for m in done) else (
            EITHER if any(m.expect == EITHER for m in done) else ACCEPT)
        why = "; ".join(m.why for m in done if m.why)
        out.append(Mutant("+".join(m.name for m in done), body, expect, why))
    return out


def _areas(name: str) -> set[str]:
    """What a mutation changes: its name's first word (tok, proof, dtype, claimed, ...), and
    every proof when it rebuilds them (`*_reproved`)."""
    head = name.split("[", 1)[0]
    return {head.split("_", 1)[0]} | ({"proof"} if head.endswith("_reproved") else set())


def _intact(body: dict) -> bool:
    """Whether `body` still has the shape the mutations read (a first mutation may have broken it)."""
    comps = body.get("completions")
    return (isinstance(comps, list) and bool(comps) and isinstance(body.get("engine"), dict)
            and "dtype" in body["engine"] and isinstance(body.get("policy_version"), int)
            and all(isinstance(c, dict) and isinstance(c.get("token_ids"), list) and c["token_ids"]
                    and all(isinstance(t, int) for t in c["token_ids"]) and isinstance(c.get("proof"), str)
                    and isinstance(c.get("finish_reason"), str) for c in comps))
