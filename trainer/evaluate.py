"""Held-out evaluation of a policy version: greedy and (optionally) sampled accuracy.

Tasks are the first `num_tasks` of the task source's `eval` split, which never shares a
task with the `train` split the coordinator leases from. Prompts are built exactly as the
coordinator builds its leases' (`protocol.lm.encode_task`, with the run's chat template
setting and the task's system prompt), decoding stops at any of the model's EOS ids
(`protocol.lm.eos_token_ids`), and each batch is scored in one round trip
(`protocol.tasks.score_many`: the sandbox for impure scorers). Decoding is one batched,
left-padded KV-cache loop; sampled accuracy uses the protocol's seeded Gumbel sampling
(`protocol.sampling`), with seeds derived from the task index, so two evaluations of the
same weights give the same number. Results are appended to `data_dir/eval.csv` (one row per
evaluation, written with fsync) and kept for /metrics and the trainer's status route.

The trainer may not import `swarmrl`; this mirrors `swarmrl.modelkit.greedy_accuracy`.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from protocol.lm import decode_completion, encode_task, eos_token_ids
from protocol.sampling import sample_tokens
from protocol.tasks import Task, TaskSource, score_many

log = logging.getLogger(__name__)

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
def decode(model: Any, prompts: list[list[int]], *, max_new_tokens: int, eos_id: int | list[int], pad_id: int,
           temperature: float | None = None, seeds: list[int] | None = None) -> list[list[int]]:
    """Completions of `prompts` (EOS excluded): greedy when temperature is None, else seeded Gumbel."""
    device = next(model.parameters()).device
    ends = {int(eos_id)} if isinstance(eos_id, int) else {int(e) for e in eos_id}
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
            if t in ends:
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
             temperature: float | None = None, batch: int = 100, seed: int = 0, chat: bool = False,
             tasks: list[tuple[int, Task, list[int]]] | None = None) -> float:
    """Mean reward over the first `num_tasks` held-out tasks (those `eval_tasks` can evaluate;
    `tasks`: that list, already made)."""
    was_training = model.training
    model.eval()
    if tasks is None:
        tasks = eval_tasks(source, min(num_tasks, source.size("eval")), tokenizer, chat)
    model_dir = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    eos = eos_token_ids(tokenizer, model_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    total = 0.0
    try:
        for start in range(0, len(tasks), batch):
            chunk = tasks[start:start + batch]
            prompts = [ids for _, _, ids in chunk]
            seeds = [seed * 1_000_003 + i for i, _, _ in chunk]
            outs = decode(model, prompts, max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad,
                          temperature=temperature, seeds=seeds)
            total += sum(score_many([(t, decode_completion(tokenizer, o)) for (_, t, _), o in zip(chunk, outs)]))
    finally:
        model.train(was_training)
    return total / max(1, len(tasks))


def eval_tasks(source: TaskSource, n: int, tokenizer: Any, chat: bool) -> list[tuple[int, Task, list[int]]]:
    """(index, task, prompt ids) of the first `n` eval tasks, less those that cannot be evaluated:
    the source refuses one (its data over the protocol's bound, a plugin's error) or its prompt
    is empty. Those are left out with one error line (the coordinator checks only the first
    CONTEXT_CHECK_TASKS of the split at start-up), rather than failing the evaluation."""
    out, left_out = [], []
    for i in range(n):
        try:
            task = source.task("eval", i)
            ids = encode_task(tokenizer, task, chat=chat)
        except Exception as exc:  # noqa: BLE001 - a plugin source may fail in any way on one task
            left_out.append(f"eval index {i}: {exc}")
            continue
        if not ids:
            left_out.append(f"task {task.id} has an empty prompt after tokenisation")
            continue
        out.append((i, task, ids))
    if left_out:
        log.error("the evaluation leaves out %d of the first %d eval tasks, which cannot be evaluated (the first: "
                  "%s)", len(left_out), n, left_out[0][:400])
    return out


def evaluate(model: Any, tokenizer: Any, source: TaskSource, *, version: int, step: int, wall_s: float,
             num_tasks: int, max_new_tokens: int, sampled: bool, temperature: float,
             chat: bool = False) -> EvalResult | None:
    """The evaluation of `version`, whose `num_tasks` counts the tasks evaluated (not those asked
    for: `eval_tasks` leaves out those that cannot be evaluated); None when none can be (an
    empty eval split, or every one of the first `num_tasks` refused), with an error line: an
    accuracy over no task means nothing, and reporting one as 0% would read as a collapse."""
    t0 = time.monotonic()
    tasks = eval_tasks(source, min(num_tasks, source.size("eval")), tokenizer, chat)
    if not tasks:
        log.error("version %d is not evaluated: none of the first %d eval tasks can be evaluated", version, num_tasks)
        return None
    greedy = accuracy(model, tokenizer, source, num_tasks=num_tasks, max_new_tokens=max_new_tokens, chat=chat,
                      tasks=tasks)
    samp = (accuracy(model, tokenizer, source, num_tasks=num_tasks, max_new_tokens=max_new_tokens,
                     temperature=temperature, seed=version, chat=chat, tasks=tasks) if sampled else None)
    return EvalResult(version=version, step=step, wall_s=wall_s, unix_time=time.time(), greedy_accuracy=greedy,
                      sampled_accuracy=samp, num_tasks=len(tasks), seconds=time.monotonic() - t0)


def append_csv(path: Path, result: EvalResult) -> None:
    """Append one row to the evaluation CSV (header on first write), flushed to disk."""
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        if not new and not _ends_with_newline(path):
            fh.write("\n")  # a crash mid-append left a torn row: end it, or it swallows this one
        w = csv.DictWriter(fh, fieldnames=EVAL_FIELDS)
        if new:
            w.writeheader()
        row = asdict(result)
        row["sampled_accuracy"] = "" if result.sampled_accuracy is None else f"{result.sampled_accuracy:.4f}"
        row["greedy_accuracy"] = f"{result.greedy_accuracy:.4f}"
        w.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return True
        fh.seek(size - 1)
        return fh.read(1) == b"\n"


def read_csv(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def evaluated_versions(path: Path) -> set[int]:
    """The versions `path` (eval.csv) records as evaluated. Rows that do not parse (a torn last
    row) are skipped; a file that cannot be read at all (not text, a folder) is renamed to
    `<name>.corrupt` with a log line and nothing is taken as evaluated: the start goes on."""
    path = Path(path)
    try:
        rows = read_csv(path)
    except (OSError, ValueError, csv.Error) as exc:
        aside = path.with_name(path.name + ".corrupt")
        n = 1
        while aside.exists():
            aside = path.with_name(f"{path.name}.corrupt.{n}")
            n += 1
        path.rename(aside)
        log.error("evaluation log %s is unreadable (%s: %s); moved aside to %s", path, type(exc).__name__,
                  str(exc)[:200], aside.name)
        return set()
    out = set()
    for r in rows:
        try:
            out.add(int(r.get("version") or ""))
        except (TypeError, ValueError):
            continue
    return out
