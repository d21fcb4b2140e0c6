"""A small world for the red-team suite and the calibration bench: honest and cheating rollouts
of the tiny model, judged by the verifier's real pipeline.

Honest rollouts come from the worker's own code (`worker.rollout.generate_batch` with the
`TransformersEngine`); cheats are written here, each the cheapest way to do what its name
says. Every rollout becomes a `VerificationJob` exactly as the coordinator would hand it out
(coordinator-signed lease, worker-signed submission, coordinator-computed rewards), and is
judged by `verifier.pipeline.verify_job` with a full check.

Used by tests/adversarial/ (a small sample in the default run) and bench/verification.py
(the 2,000-completion calibration and the per-attack detection rates).
"""

from __future__ import annotations

import base64
import itertools
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from protocol.envelope import AUDIENCE_COORDINATOR, AUDIENCE_WORKER, Envelope, seal
from protocol.identity import KeyPair
from protocol.lm import decode_completion, encode_prompt, load_model, load_tokenizer
from protocol.messages import (KIND_LEASE, KIND_SUBMISSION, Completion, Lease, SamplingParams, Submission,
                               VerificationJob)
from protocol.proof import build_proofs
from protocol.tasks import get_source, score
from verifier.judge import JudgeSettings
from verifier.pipeline import Timings, verify_job
from verifier.prefill import prefill
from verifier.seen import SeenLedger
from verifier.job import open_job
from worker.engines.base import GenerationRequest
from worker.engines.transformers_engine import TransformersEngine
from worker.rollout import build_submission, generate_batch

RUN_ID = "redteam"


def build_model(directory: Path, *, hidden: int = 128, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                seed: int = 0, warm_seconds: float = 0.0) -> Path:
    """The tiny model as the demo builds it; `warm_seconds` of supervised warm start makes
    its predictions peaked like a model under RL (the bench uses it; tests use the random
    model, whose completions are long and whose choices are hard to guess)."""
    from swarmrl.modelkit import init_tiny_model, warm_start

    if not (directory / "config.json").exists():
        init_tiny_model(directory, hidden_size=hidden, num_layers=layers, num_heads=heads,
                        num_kv_heads=kv_heads, seed=seed)
        if warm_seconds > 0:
            warm_start(directory, seed=seed, seconds=warm_seconds)
    return directory


def next_version(src: Path, dst: Path, *, lr: float = 1e-4, seed: int = 1) -> Path:
    """The policy one optimiser step after `src` (AdamW at `lr` on a batch of task answers,
    the size of an RL step): the "previous version claimed as the current one" cheat needs
    two adjacent versions."""
    if (dst / "config.json").exists():
        return dst
    tok = load_tokenizer(str(src))
    model = load_model(str(src))
    model.train()
    source = get_source("arithmetic", seed=seed)
    rows = [source.task("train", i) for i in range(32)]
    seqs = [encode_prompt(tok, t.prompt + t.answer) + [tok.eos_token_id] for t in rows]
    L = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), L), tok.pad_token_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x)
        att[i, : len(x)] = 1
    labels = ids.masked_fill(att == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model(input_ids=ids, attention_mask=att, labels=labels).loss.backward()
    opt.step()
    model.eval()
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


QUANTIZATIONS = ("int8_tensor", "int8_channel", "int4_group", "fp8_e4m3")


def _fake_quantize(w: torch.Tensor, scheme: str) -> torch.Tensor:
    """`w` quantized and dequantized: the weights a worker running that quantized copy
    effectively computes with (symmetric, round to nearest)."""
    if scheme == "int8_tensor":
        s = w.abs().max().clamp(min=1e-12) / 127
        return (w / s).round().clamp(-127, 127) * s
    if scheme == "int8_channel":  # one scale per output row, as LLM.int8 / SmoothQuant weights
        s = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        return (w / s).round().clamp(-127, 127) * s
    if scheme == "int4_group":  # groups of 32 along the input dimension, as GPTQ/AWQ-style int4
        g = 32 if w.shape[1] % 32 == 0 else w.shape[1]
        ww = w.reshape(-1, g)
        s = ww.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 7
        return ((ww / s).round().clamp(-8, 7) * s).reshape(w.shape)
    if scheme == "fp8_e4m3":  # per-tensor scale to e4m3's max (448), as FP8 weight-only serving
        s = w.abs().max().clamp(min=1e-12) / 448
        return (w / s).to(torch.float8_e4m3fn).to(w.dtype) * s
    raise ValueError(f"unknown quantization {scheme!r}; one of {QUANTIZATIONS}")


def quantized_copy(src: Path, dst: Path, *, scheme: str) -> Path:
    """`src` with every linear layer's weight matrix (attention, MLP, LM head; not the
    embeddings or norms, which quantized serving keeps) quantized by `scheme`."""
    if (dst / "config.json").exists():
        return dst
    model = load_model(str(src))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.copy_(_fake_quantize(p.float(), scheme).to(p.dtype))
    model.save_pretrained(dst)
    load_tokenizer(str(src)).save_pretrained(dst)
    return dst


def perturbed_copy(src: Path, dst: Path, *, rel_noise: float, seed: int = 7) -> Path:
    """`src` with Gaussian noise of `rel_noise` x each tensor's std added to every weight."""
    model = load_model(str(src))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (rel_noise * float(p.float().std()) + 1e-12))
    model.save_pretrained(dst)
    load_tokenizer(str(src)).save_pretrained(dst)
    return dst


class DictModels:
    """The verifier's `ModelSource` for tests: versions loaded from folders on first use."""

    def __init__(self, versions: dict[int, Path], dtype: str = "float32"):
        self.paths = versions
        self.dtype = dtype
        self._cache: dict[tuple[int, str], Any] = {}

    def model(self, version: int, dtype: str | None = None) -> Any:
        key = (version, dtype or self.dtype)
        if key not in self._cache:
            self._cache[key] = load_model(str(self.paths[version]), dtype=key[1])
        return self._cache[key]


@dataclass
class World:
    """Everything needed to lease, roll out and judge, in one process."""

    versions: dict[int, Path]
    tokenizer: Any
    coordinator: KeyPair = field(default_factory=KeyPair.generate)
    settings: JudgeSettings = field(default_factory=lambda: JudgeSettings(run_id=RUN_ID))
    allowed_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    ledger: SeenLedger = field(default_factory=SeenLedger)
    task_seed: int = 0
    group_size: int = 8
    temperature: float = 1.0
    max_tokens: int = 8
    models: DictModels | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def __post_init__(self) -> None:
        self.source = get_source("arithmetic", seed=self.task_seed)
        self.eos = int(self.tokenizer.eos_token_id)
        if self.models is None:
            self.models = DictModels(self.versions)
        self._task_counter = itertools.count()

    @property
    def current(self) -> int:
        return max(self.versions)

    # -- leases -----------------------------------------------------------------------------
    def lease(self, worker: KeyPair, *, task_index: int | None = None, min_version: int | None = None,
              max_version: int | None = None) -> tuple[Lease, Envelope]:
        idx = next(self._task_counter) if task_index is None else task_index
        task = self.source.task("train", idx)
        now = time.time()
        lease = Lease(lease_id=f"L{uuid.uuid4().hex[:16]}", run_id=RUN_ID, worker_id=worker.peer_id,
                      task_id=task.id, prompt_token_ids=encode_prompt(self.tokenizer, task.prompt),
                      seeds=[self.rng.randrange(2**63) for _ in range(self.group_size)],
                      sampling=SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens),
                      eos_token_id=self.eos,
                      min_policy_version=self.current if min_version is None else min_version,
                      max_policy_version=self.current if max_version is None else max_version,
                      issued_at=now, expires_at=now + 600, allowed_dtypes=list(self.allowed_dtypes))
        return lease, seal(KIND_LEASE, lease, self.coordinator, run_id=RUN_ID, audience=AUDIENCE_WORKER)

    def task_of(self, lease: Lease):
        index = int(lease.task_id.rsplit("-", 1)[1])
        return self.source.task("train", index)

    # -- jobs -------------------------------------------------------------------------------
    def job(self, lease_env: Envelope, sub: Submission, worker: KeyPair, *, full_check: bool = True,
            submission_id: str | None = None) -> VerificationJob:
        lease = Lease.model_validate(lease_env.body)
        task = self.task_of(lease)
        texts = [decode_completion(self.tokenizer, c.token_ids) for c in sub.completions]
        rewards = [float(score(task.kind, task.answer, t)) for t in texts]  # the coordinator's rule
        return VerificationJob(submission_id=submission_id or f"S{uuid.uuid4().hex[:16]}", worker_id=worker.peer_id,
                               lease=lease_env, submission=seal(KIND_SUBMISSION, sub, worker, run_id=RUN_ID,
                                                                audience=AUDIENCE_COORDINATOR), rewards=rewards,
                               task_answer=task.answer, task_kind=task.kind, full_check=full_check)

    def verify(self, job: VerificationJob, timings: Timings | None = None, probe_index: int | None = None):
        return verify_job(job, coordinator_key=self.coordinator.public, tokenizer=self.tokenizer,
                          models=self.models, settings=self.settings, ledger=self.ledger, timings=timings,
                          probe_index=probe_index)

    def verifier_outputs(self, job: VerificationJob):
        """The verifier's prefill of a job (for calibration statistics)."""
        oj = open_job(job, self.coordinator.public)
        dtype = self.settings.judgeable(oj) or "float32"
        return oj, prefill(self.models.model(oj.submission.policy_version, dtype), oj)


def make_world(model_root: Path, *, warm_seconds: float = 0.0, hidden: int = 128, layers: int = 4,
               **kw) -> World:
    v0 = build_model(model_root / "v0", warm_seconds=warm_seconds, hidden=hidden, layers=layers)
    v1 = next_version(v0, model_root / "v1")
    return World(versions={0: v0, 1: v1}, tokenizer=load_tokenizer(str(v0)), **kw)


# -- honest rollouts --------------------------------------------------------------------------
def engine_for(path: Path, version: int, *, dtype: str = "float32", threads: int = 0,
               attn: str = "sdpa") -> TransformersEngine:
    """The worker's engine on `path`; `attn="eager"` swaps in another attention kernel than the
    verifier's (an honest difference, as another machine's kernels would be)."""
    e = TransformersEngine(device="cpu", dtype=dtype, threads=threads)
    e.load(path, version)
    if attn != "sdpa":
        from transformers import AutoModelForCausalLM

        e.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=e.dtype, attn_implementation=attn).eval()
    return e


def honest_submissions(engine: TransformersEngine, leases: list[Lease], version: int) -> list[Submission]:
    """The real worker's batch: every seed of every lease generated in one engine call."""
    finished, _ = generate_batch(engine, leases, version)
    return [f.submission for f in finished]


# -- cheats -----------------------------------------------------------------------------------
def _requests(lease: Lease, *, prompt: list[int] | None = None, temperature: float | None = None,
              seeds: list[int] | None = None) -> list[GenerationRequest]:
    return [GenerationRequest(prompt_ids=list(prompt or lease.prompt_token_ids), seed=s,
                              temperature=temperature or lease.sampling.temperature,
                              max_tokens=lease.sampling.max_tokens, eos_token_id=lease.eos_token_id)
            for s in (seeds or lease.seeds)]


def generate_with(engine: TransformersEngine, lease: Lease, version: int, **kw) -> Submission:
    """Generate with modified requests (prompt, temperature, seeds) and prove honestly what was computed."""
    results = engine.generate(_requests(lease, **kw))
    return build_submission(lease, results, build_proofs([r.hidden for r in results]), version, engine.info())


def reprove(world: World, lease: Lease, sub: Submission, version: int, dtype: str = "float32") -> Submission:
    """Rebuild every proof from the claimed model's own prefill of the (edited) tokens: the
    strongest cheater, whose proofs are genuine for the tokens it submits."""
    model = world.models.model(version, dtype)
    from protocol.lm import completion_outputs

    outs = completion_outputs(model, list(lease.prompt_token_ids), [c.token_ids for c in sub.completions])
    proofs = build_proofs([h for h, _ in outs])
    comps = [c.model_copy(update={"proof": base64.b64encode(p).decode()}) for c, p in zip(sub.completions, proofs)]
    return sub.model_copy(update={"completions": comps})


def edit_token(sub: Submission, rng: random.Random, vocab: int, eos: int) -> Submission:
    """Change one non-EOS token of one completion to another non-EOS token."""
    comps = list(sub.completions)
    editable = [i for i, c in enumerate(comps) if any(t != eos for t in c.token_ids)]
    if not editable:
        return sub
    i = rng.choice(editable)
    toks = list(comps[i].token_ids)
    j = rng.choice([j for j, t in enumerate(toks) if t != eos])
    choices = [t for t in range(3, vocab) if t not in (toks[j], eos)]
    toks[j] = rng.choice(choices)
    comps[i] = comps[i].model_copy(update={"token_ids": toks})
    return sub.model_copy(update={"completions": comps})


def greedy_submission(world: World, lease: Lease, version: int, dtype: str = "float32") -> Submission:
    """Greedy decoding, proved honestly (temperature -> 0 makes the noise irrelevant)."""
    model = world.models.model(version, dtype)
    comps = []
    for _ in lease.seeds:
        ids = list(lease.prompt_token_ids)
        toks: list[int] = []
        for _step in range(lease.sampling.max_tokens):
            out = model(input_ids=torch.tensor([ids + toks]))
            t = int(out.logits[0, -1].argmax())
            toks.append(t)
            if t == lease.eos_token_id:
                break
        comps.append(toks)
    from protocol.lm import completion_outputs

    outs = completion_outputs(model, list(lease.prompt_token_ids), comps)
    proofs = build_proofs([h for h, _ in outs])
    return Submission(lease_id=lease.lease_id, policy_version=version,
                      completions=[Completion(token_ids=c, finish_reason="eos" if c[-1] == lease.eos_token_id
                                              else "length", proof=base64.b64encode(p).decode())
                                   for c, p in zip(comps, proofs)],
                      engine=TransformersEngine(device="cpu", dtype=dtype).info())


def cherry_pick(world: World, engine: TransformersEngine, lease: Lease, version: int, tries: int = 8) -> Submission:
    """Re-sample each wrong completion with fresh seeds until it is correct (or tries run
    out), and submit it under the lease's seed, with an honest proof of what was computed."""
    task = world.task_of(lease)
    rng = random.Random(lease.lease_id)
    out = generate_with(engine, lease, version)
    comps = list(out.completions)
    for i, c in enumerate(comps):
        for _ in range(tries):
            if score(task.kind, task.answer, decode_completion(world.tokenizer, c.token_ids)) > 0:
                break
            r = engine.generate(_requests(lease, seeds=[rng.randrange(2**63)]))[0]
            c = Completion(token_ids=r.token_ids, finish_reason=r.finish_reason,
                           proof=base64.b64encode(build_proofs([r.hidden])[0]).decode())
        comps[i] = c
    return out.model_copy(update={"completions": comps})


def truncate(sub: Submission, *, forge_eos: bool, eos: int) -> Submission:
    """Cut the longest completion short; with `forge_eos`, end it with an EOS instead."""
    comps = list(sub.completions)
    i = max(range(len(comps)), key=lambda k: len(comps[k].token_ids))
    toks = [t for t in comps[i].token_ids if t != eos]
    cut = max(1, len(toks) // 2)
    toks = toks[:cut] + ([eos] if forge_eos else [])
    comps[i] = comps[i].model_copy(update={"token_ids": toks, "finish_reason": "eos" if forge_eos else "length"})
    return sub.model_copy(update={"completions": comps})


def copy_proof(sub: Submission, donor: Submission) -> Submission:
    """Replace every proof with one from another rollout covering the same number of tokens
    (or the donor's first proof with the matching length when none does)."""
    comps = []
    for i, c in enumerate(sub.completions):
        same_len = [d for d in donor.completions if len(d.token_ids) == len(c.token_ids)]
        if same_len:
            comps.append(c.model_copy(update={"proof": same_len[i % len(same_len)].proof}))
        else:
            comps.append(c)
    return sub.model_copy(update={"completions": comps})


def with_claimed_rewards(sub: Submission, value: float = 1.0) -> Submission:
    return sub.model_copy(update={"claimed_rewards": [value] * len(sub.completions)})


def declared(sub: Submission, dtype: str) -> Submission:
    """The same submission with another compute dtype declared (what it computed is unchanged)."""
    return sub.model_copy(update={"engine": sub.engine.model_copy(update={"dtype": dtype})})


def mixed(honest: Submission, other: Submission, index: int) -> Submission:
    """`honest` with completion `index` taken from `other` (one bad completion among good ones)."""
    comps = list(honest.completions)
    comps[index] = other.completions[index]
    return honest.model_copy(update={"completions": comps})


def answer_tokens(world: World, lease: Lease) -> list[int]:
    """The task's correct answer, encoded, with EOS: what a worker that types answers in sends."""
    from protocol.lm import encode_prompt

    return encode_prompt(world.tokenizer, world.task_of(lease).answer)[: lease.sampling.max_tokens - 1] + [world.eos]


def typed_answers(world: World, lease: Lease, engine: TransformersEngine, version: int) -> Submission:
    """Every completion is the correct answer, with proofs of those tokens from `engine`'s model."""
    from protocol.lm import completion_outputs

    toks = answer_tokens(world, lease)
    outs = completion_outputs(engine.model, list(lease.prompt_token_ids), [toks] * len(lease.seeds))
    proofs = build_proofs([h for h, _ in outs])
    return Submission(lease_id=lease.lease_id, policy_version=version,
                      completions=[Completion(token_ids=toks, finish_reason="eos", proof=base64.b64encode(p).decode())
                                   for p in proofs], engine=engine.info())


def non_finite_proofs(sub: Submission, lease: Lease, engine: TransformersEngine) -> Submission:
    """Proofs of hidden states with Inf in place of the largest values (a broken or hostile prover)."""
    from protocol.lm import completion_outputs

    outs = completion_outputs(engine.model, list(lease.prompt_token_ids), [c.token_ids for c in sub.completions])
    hidden = []
    for h, _ in outs:
        h = h.float().clone()
        h.view(-1)[h.abs().view(-1).argmax()] = float("inf")
        hidden.append(h)
    proofs = build_proofs(hidden)
    comps = [c.model_copy(update={"proof": base64.b64encode(p).decode()}) for c, p in zip(sub.completions, proofs)]
    return sub.model_copy(update={"completions": comps})


Cheat = Callable[..., Submission]
__all__ = ["World", "make_world", "build_model", "next_version", "perturbed_copy", "quantized_copy", "engine_for",
           "honest_submissions", "generate_with", "reprove", "edit_token", "greedy_submission", "cherry_pick",
           "truncate", "copy_proof", "with_claimed_rewards", "DictModels", "declared", "mixed", "typed_answers",
           "non_finite_proofs", "QUANTIZATIONS"]
