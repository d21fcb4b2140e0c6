"""Compute dtypes: their canonical names, and which ones a run may allow its workers.

The run, not the worker, decides how workers may compute: the coordinator's
`allowed_dtypes` travels in every signed lease (`protocol.messages.Lease.allowed_dtypes`)
and in `GET /v1/run`; a worker picks one of them for its engine (or refuses to start), and
the verifier judges a submission with the limits calibrated for the dtype it declares,
rejecting any other (`verifier.pipeline`). No torch import here: the coordinator's config
validates with it.

`VERIFIABLE` lists the dtypes the verifier has calibrated limits for (`verifier.thresholds`).
float16 is deliberately not one of them: it has not been calibrated, and its range (max
65504) overflows on activations that bf16 and fp32 hold, so an fp16 prefill can produce
Inf/NaN where the policy itself is finite.
"""

from __future__ import annotations

VERIFIABLE: tuple[str, ...] = ("float32", "bfloat16")

_ALIASES = {"float32": "float32", "fp32": "float32", "float": "float32",
            "bfloat16": "bfloat16", "bf16": "bfloat16",
            "float16": "float16", "fp16": "float16", "half": "float16"}


def canonical(name: str) -> str | None:
    """'torch.bfloat16', 'bf16', 'BFloat16' -> 'bfloat16'; None for names that are no dtype."""
    key = str(name).strip().lower()
    if key.startswith("torch."):
        key = key[len("torch."):]
    return _ALIASES.get(key)


def check_allowed(names: list[str]) -> list[str]:
    """The canonical, de-duplicated list of a run's allowed dtypes; ValueError (with what to
    write instead) for an unknown name, an uncalibrated dtype or an empty list."""
    out: list[str] = []
    for n in names:
        c = canonical(n)
        if c is None:
            raise ValueError(f"unknown dtype {n!r}; use one of {', '.join(VERIFIABLE)}")
        if c not in VERIFIABLE:
            raise ValueError(f"dtype {c} cannot be allowed: the verifier has no calibrated limits for it "
                             f"(allowed: {', '.join(VERIFIABLE)})")
        if c not in out:
            out.append(c)
    if not out:
        raise ValueError(f"allow at least one compute dtype ({', '.join(VERIFIABLE)})")
    return out


def pick(allowed: list[str], *, cuda: bool) -> str:
    """The dtype an 'auto' worker computes in: bf16 on a GPU when the run allows it (its tensor
    cores are made for it), else fp32 when allowed, else the first allowed."""
    if cuda and "bfloat16" in allowed:
        return "bfloat16"
    return "float32" if "float32" in allowed else allowed[0]
