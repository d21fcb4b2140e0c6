"""Held-out evaluation of a policy version: greedy and (optionally) sampled accuracy.

Tasks are the first `num_tasks` of the task source's `eval` split, which never shares a
task with the `train` split the coordinator leases from. Decoding is one batched,
left-padded KV-cache loop; sampled accuracy uses the protocol's seeded Gumbel sampling
(`protocol.sampling`), with seeds derived from the task index, so two evaluations of the
same weights give the same number. Results are appended to `data_dir/eval.csv` (one row per
evaluation, written with fsync) and kept for /metrics and the trainer's status route.

The trainer may not import `swarmrl`; this mirrors `swarmrl.modelkit.greedy_accuracy`.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.lm import decode_completion, encode_prompt
from protocol.sampling import sample_tokens
from protocol.tasks import TaskSource, score

EVAL_FIELDS = ["version", "step", "wall_s", "unix_time", "greedy_accuracy", "sampled_accuracy", "num_tasks", "seconds"]


@dataclass
class EvalResult:
    version: int
    step: int
    wall_s: float  # seconds since the trainer started (its run clock)
    unix_time: float
    greedy_accuracy: float
    sampled_accuracy: float | None
    num_tasks: int
    seconds: float


@torch.no_grad()
def decode(model: Any, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int, pad_id: int,
           temperature: float | None = None, seeds: list[int] | None = None) -> list[list[int]]:
    """Completions of `prompts` (EOS excluded): greedy when temperature is None, else seeded Gumbel."""
    device = next(model.parameters()).device
    B = len(prompts)
    L = max(len(p) for p in prompts)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1].float()
    next_pos = pos[:, -1] + 1
    done = [False] * B
    result: list[list[int]] = [[] for _ in range(B)]
    for step in range(max_new_tokens):
        if temperature is None:
            tok = logits.argmax(-1)
        else:
            tok = torch.cat([sample_tokens(logits[i:i + 1], temperature, [seeds[i]], step) for i in range(B)])
        for i in range(B):
            if done[i]:
                continue
            t = int(tok[i])
            if t == eos_id:
                done[i] = True
            else:
                result[i].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long, device=device)], dim=1)
        out = model(input_ids=tok[:, None].to(device), attention_mask=mask, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
        next_pos = next_pos + 1
    return result


def accuracy(model: Any, tokenizer: Any, source: TaskSource, *, num_tasks: int, max_new_tokens: int,
             temperature: float | None = None, batch: int = 100, seed: int = 0) -> float:
    """Mean reward over the first `num_tasks` held-out tasks."""
    was_training = model.training
    model.eval()
    n = min(num_tasks, source.size("eval"))
    tasks = [source.task("eval", i) for i in range(n)]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    total = 0.0
    try:
        for start in range(0, n, batch):
            chunk = tasks[start:start + batch]
            prompts = [encode_prompt(tokenizer, t.prompt) for t in chunk]
            seeds = [seed * 1_000_003 + start + i for i in range(len(chunk))]
            outs = decode(model, prompts, max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad,
                          temperature=temperature, seeds=seeds)
            for t, o in zip(chunk, outs):
                total += score(t.kind, t.answer, decode_completion(tokenizer, o))
    finally:
        model.train(was_training)
    return total / max(1, n)


def evaluate(model: Any, tokenizer: Any, source: TaskSource, *, version: int, step: int, wall_s: float,
             num_tasks: int, max_new_tokens: int, sampled: bool, temperature: float) -> EvalResult:
    t0 = time.monotonic()
    greedy = accuracy(model, tokenizer, source, num_tasks=num_tasks, max_new_tokens=max_new_tokens)
    samp = (accuracy(model, tokenizer, source, num_tasks=num_tasks, max_new_tokens=max_new_tokens,
                     temperature=temperature, seed=version) if sampled else None)
    return EvalResult(version=version, step=step, wall_s=wall_s, unix_time=time.time(), greedy_accuracy=greedy,
                      sampled_accuracy=samp, num_tasks=min(num_tasks, source.size("eval")),
                      seconds=time.monotonic() - t0)


def append_csv(path: Path, result: EvalResult) -> None:
    """Append one row to the evaluation CSV (header on first write), flushed to disk."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=EVAL_FIELDS)
        if new:
            w.writeheader()
        row = asdict(result)
        row["sampled_accuracy"] = "" if result.sampled_accuracy is None else f"{result.sampled_accuracy:.4f}"
        row["greedy_accuracy"] = f"{result.greedy_accuracy:.4f}"
        w.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def read_csv(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
