"""The replay check: nothing of a submission may have been seen under another submission.

Keys (see `verifier.seen`): the lease (answered once), the signed envelope (signer + nonce),
and each sample (seed + prompt + tokens: the same completion submitted twice, by anyone).
The coordinator refuses most replays at intake; this check is the verifier's own, and it
holds across coordinator mistakes and restarts.

Proofs are deliberately not keys: a proof copied onto other content fails the proof check
(it is compared with the verifier's own hidden states of that content), and two honest
completions can carry byte-identical proofs (measured: short bf16 completions of a trained
model whose hidden states round to the same values), so a "seen this proof" rule would
reject honest work and catch nothing the proof check does not.
"""

from __future__ import annotations

import hashlib

from protocol.messages import CheckResult
from verifier.checks import first_failures, result
from verifier.job import OpenedJob
from verifier.seen import SeenLedger

NAME = "replay"


def _h(*parts: object) -> str:
    d = hashlib.sha256()
    for p in parts:
        d.update(repr(p).encode())
        d.update(b"\x00")
    return d.hexdigest()


def replay_keys(oj: OpenedJob) -> list[tuple[str, str, str]]:
    prompt = tuple(oj.lease.prompt_token_ids)
    keys = [("lease", _h(oj.lease.run_id, oj.lease.lease_id), ""),
            ("envelope", _h(oj.signer_hex, oj.nonce), "")]
    for seed, c in zip(oj.lease.seeds, oj.submission.completions):
        keys.append(("sample", _h(seed, prompt, tuple(c.token_ids)), ""))
    return keys


def check_replay(oj: OpenedJob, ledger: SeenLedger, *, now: float | None = None) -> CheckResult:
    """Look for conflicts, then record this submission's keys (whatever the outcome, so a
    rejected rollout cannot come back either)."""
    keys = replay_keys(oj)
    clashes = ledger.conflicts(oj.submission_id, keys)
    ledger.remember(oj.submission_id, keys, now)
    problems = [f"{kind} already seen in submission {other}" for kind, _, other in clashes]
    stats = {"keys": len(keys), "conflicts": len(clashes), "kinds": sorted({k for k, _, _ in clashes})}
    return result(NAME, not clashes, stats, first_failures(problems))
