"""Batch assembly: accepted groups -> sequences -> packed micro-batches of token tensors.

A group of G completions of one prompt becomes G sequences `prompt + completion[:-1]`; the
logits at positions P-1 .. P+T-2 of a sequence predict its T completion tokens (the
convention of `protocol.lm`). Sequences are packed first-fit-decreasing into rows of at most
`row_tokens` tokens, with position ids restarting at 0 for every sequence and no attention
mask, so transformers builds a block-diagonal causal mask (one sequence never sees another)
and padding is bounded by the unfilled tail of each row. Rows are grouped into micro-batches
of at most `micro_batch_tokens` tokens (padded to the longest row of the micro-batch).

For each micro-batch the per-token training data is kept flat over the completion tokens
only: where the token sits (`row`, `col`), its id, advantage, sampling temperature, the policy
version that generated it and the sequence it belongs to. Rank r of a world of size W takes
every W-th sequence (after a length sort), so ranks get similar work.

Pure functions over `protocol.messages.TrainingGroup`-like objects; no model here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.errors import BatchError


@dataclass(frozen=True)
class Sequence:
    """One completion with its prompt, ready to pack."""

    input_ids: list[int]  # prompt + completion[:-1]
    prompt_len: int
    targets: list[int]  # the completion tokens
    advantage: float
    temperature: float
    version: int
    seq_id: int


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # (rows, L) long
    position_ids: torch.Tensor  # (rows, L) long, restarting per packed sequence
    row: torch.Tensor  # (N,) long: row of each completion token's predicting position
    col: torch.Tensor  # (N,) long: column of that position
    targets: torch.Tensor  # (N,) long
    advantages: torch.Tensor  # (N,) float
    temperatures: torch.Tensor  # (N,) float
    versions: torch.Tensor  # (N,) long
    seq_ids: torch.Tensor  # (N,) long
    real_tokens: int  # non-padding input tokens

    @property
    def num_targets(self) -> int:
        return int(self.targets.numel())

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.numel())


def sequences_from_groups(groups: list[tuple[object, list[float]]], pad_id: int = 0) -> list[Sequence]:
    """Flatten (group, advantages) pairs into sequences; empty completions carry no tokens and are skipped."""
    out: list[Sequence] = []
    for g, adv in groups:
        prompt = list(g.prompt_token_ids)
        if not prompt:
            raise BatchError(f"group {g.submission_id} has an empty prompt")
        if len(adv) != len(g.completions):
            raise BatchError(f"group {g.submission_id}: {len(adv)} advantages for {len(g.completions)} completions")
        for completion, a in zip(g.completions, adv):
            if not completion:
                continue
            out.append(Sequence(input_ids=prompt + list(completion[:-1]), prompt_len=len(prompt),
                                targets=list(completion), advantage=float(a), temperature=float(g.temperature),
                                version=int(g.policy_version), seq_id=len(out)))
    return out


def count_targets(seqs: list[Sequence]) -> int:
    """Completion tokens of all sequences: the loss normaliser of the step (token-level)."""
    return sum(len(s.targets) for s in seqs)


def shard_for_rank(seqs: list[Sequence], rank: int, world: int) -> list[Sequence]:
    """Rank `rank`'s share: every `world`-th sequence of the length-sorted list."""
    if world <= 1:
        return list(seqs)
    ordered = sorted(seqs, key=lambda s: (-len(s.input_ids), s.seq_id))
    return ordered[rank::world]


def pack_rows(seqs: list[Sequence], row_tokens: int) -> list[list[Sequence]]:
    """First-fit decreasing: rows of at most `row_tokens` input tokens (a longer sequence gets a row of its own)."""
    rows: list[list[Sequence]] = []
    room: list[int] = []
    for s in sorted(seqs, key=lambda s: (-len(s.input_ids), s.seq_id)):
        n = len(s.input_ids)
        for i, free in enumerate(room):
            if n <= free:
                rows[i].append(s)
                room[i] -= n
                break
        else:
            rows.append([s])
            room.append(max(row_tokens - n, 0))
    return rows


def _micro_batch(rows: list[list[Sequence]], pad_id: int) -> MicroBatch:
    L = max(sum(len(s.input_ids) for s in r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), L), dtype=torch.long)
    row_i, col_i, tgt, adv, temp, ver, sid = [], [], [], [], [], [], []
    real = 0
    for ri, r in enumerate(rows):
        c = 0
        for s in r:
            n = len(s.input_ids)
            ids[ri, c : c + n] = torch.tensor(s.input_ids, dtype=torch.long)
            pos[ri, c : c + n] = torch.arange(n)
            for t, token in enumerate(s.targets):
                row_i.append(ri)
                col_i.append(c + s.prompt_len - 1 + t)
                tgt.append(token)
            T = len(s.targets)
            adv += [s.advantage] * T
            temp += [s.temperature] * T
            ver += [s.version] * T
            sid += [s.seq_id] * T
            c += n
            real += n
        # Padding becomes its own packed segment (positions restart at 0); it is never a target.
        pos[ri, c:] = torch.arange(L - c)
    return MicroBatch(
        input_ids=ids, position_ids=pos, row=torch.tensor(row_i, dtype=torch.long),
        col=torch.tensor(col_i, dtype=torch.long), targets=torch.tensor(tgt, dtype=torch.long),
        advantages=torch.tensor(adv, dtype=torch.float32), temperatures=torch.tensor(temp, dtype=torch.float32),
        versions=torch.tensor(ver, dtype=torch.long), seq_ids=torch.tensor(sid, dtype=torch.long), real_tokens=real,
    )


AUTO_MIN_ROW = 128


def auto_row_tokens(seqs: list[Sequence]) -> int:
    """Rows as long as the longest sequence (at least AUTO_MIN_ROW): no sequence is alone in an
    oversized row, and rows stay short because attention over a packed row costs L^2."""
    return max([AUTO_MIN_ROW] + [len(s.input_ids) for s in seqs])


def pack(seqs: list[Sequence], *, row_tokens: int, micro_batch_tokens: int, pad_id: int = 0) -> list[MicroBatch]:
    """Packed micro-batches covering every sequence once (`row_tokens` 0 = `auto_row_tokens`)."""
    if not seqs:
        return []
    if row_tokens <= 0:
        row_tokens = auto_row_tokens(seqs)
    rows = pack_rows(seqs, row_tokens)
    batches: list[MicroBatch] = []
    current: list[list[Sequence]] = []
    longest = 0
    for r in rows:  # rows come longest-first, so padding within a micro-batch stays small
        n = sum(len(s.input_ids) for s in r)
        if current and max(longest, n) * (len(current) + 1) > micro_batch_tokens:
            batches.append(_micro_batch(current, pad_id))
            current, longest = [], 0
        current.append(r)
        longest = max(longest, n)
    batches.append(_micro_batch(current, pad_id))
    return batches


def empty_micro_batch(pad_id: int = 0) -> MicroBatch:
    """One padding token and no targets: a pass that only keeps ranks in step."""
    z = torch.zeros(0, dtype=torch.long)
    return MicroBatch(input_ids=torch.full((1, 1), pad_id, dtype=torch.long), position_ids=torch.zeros((1, 1), dtype=torch.long),
                      row=z, col=z, targets=z, advantages=torch.zeros(0), temperatures=torch.ones(0), versions=z,
                      seq_ids=z, real_tokens=0)
