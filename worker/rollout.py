"""From leases to submissions: one generation batch, its proofs, the signed-to-be bodies.

`requests_for` expands a lease into one `GenerationRequest` per seed (the coordinator chose
the prompt, seeds and sampling; the worker changes none of them). `generate_batch` runs the
engine once over the sequences of several leases (batched decoding is where a GPU's speed
comes from) and `build_submission` turns each lease's results, in seed order, into a
`Submission` with an activation proof per completion (`protocol.proof.build_proofs` over the
final hidden states the engine returned, all chunks of the batch at once).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass

from protocol.conformance import lease_eos
from protocol.messages import Completion, EngineInfo, Lease, Submission
from protocol.proof import build_proofs
from worker.engines.base import Engine, GenerationRequest, GenerationResult


@dataclass
class Finished:
    lease: Lease
    submission: Submission
    tokens: int


@dataclass
class BatchStats:
    sequences: int
    tokens: int
    generate_s: float
    proof_s: float


def requests_for(lease: Lease) -> list[GenerationRequest]:
    return [GenerationRequest(prompt_ids=list(lease.prompt_token_ids), seed=seed,
                              temperature=lease.sampling.temperature, max_tokens=lease.sampling.max_tokens,
                              eos_token_id=lease.eos_token_id, eos_token_ids=tuple(sorted(lease_eos(lease))))
            for seed in lease.seeds]


def build_submission(lease: Lease, results: list[GenerationResult], proofs: list[bytes], version: int,
                     engine: EngineInfo) -> Submission:
    if not (len(results) == len(proofs) == len(lease.seeds)):
        raise ValueError(f"lease {lease.lease_id}: {len(results)} results for {len(lease.seeds)} seeds")
    completions = [Completion(token_ids=r.token_ids, finish_reason=r.finish_reason,
                              proof=base64.b64encode(p).decode("ascii"))
                   for r, p in zip(results, proofs)]
    return Submission(lease_id=lease.lease_id, policy_version=version, completions=completions, engine=engine)


def generate_batch(engine: Engine, leases: list[Lease], version: int) -> tuple[list[Finished], BatchStats]:
    """Generate every seed of every lease in one engine call; one submission per lease."""
    reqs = [r for lease in leases for r in requests_for(lease)]
    t0 = time.perf_counter()
    results = engine.generate(reqs)
    t1 = time.perf_counter()
    proofs = build_proofs([r.hidden for r in results])  # all chunks of the batch in one call
    info = engine.info()
    out, i = [], 0
    for lease in leases:
        mine, mine_proofs = results[i: i + len(lease.seeds)], proofs[i: i + len(lease.seeds)]
        i += len(lease.seeds)
        sub = build_submission(lease, mine, mine_proofs, version, info)
        out.append(Finished(lease=lease, submission=sub, tokens=sum(len(r.token_ids) for r in mine)))
    t2 = time.perf_counter()
    stats = BatchStats(sequences=len(reqs), tokens=sum(f.tokens for f in out), generate_s=t1 - t0, proof_s=t2 - t1)
    return out, stats
