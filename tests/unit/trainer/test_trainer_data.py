"""Online filtering and packing: hand-checked values and the invariants a step relies on (the
advantages come from the coordinator: tests/unit/coordinator/test_coordinator_rules.py)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
import torch

from coordinator.rules.advantages import group_advantages
from trainer.filtering import filter_groups
from trainer.packing import (
    count_targets,
    pack,
    pack_rows,
    sequences_from_groups,
    shard_for_rank,
)


def _group(sid: str, rewards: list[float], advantages: list[float] | None = None, version: int = 0,
           prompt: list[int] | None = None, completions: list[list[int]] | None = None):
    completions = completions or [[10 + i, 1] for i in range(len(rewards))]
    return NS(submission_id=sid, rewards=rewards, advantages=advantages if advantages is not None else group_advantages(rewards),
              policy_version=version, prompt_token_ids=prompt or [5, 6, 7], completions=completions, temperature=1.0)


def test_filter_drops_and_counts_zero_advantage_groups_and_trains_on_the_coordinators_advantages():
    groups = [_group("a", [1, 0]), _group("b", [0, 0]), _group("c", [1, 1]),
              _group("d", [1, 0], advantages=[0.5, -0.5])]  # a coordinator that only centres (Dr. GRPO)
    kept, counts = filter_groups(groups)
    assert [g.submission_id for g, _ in kept] == ["a", "d"]
    assert counts.zero_advantage == 2 and counts.kept == 2
    assert kept[0][1] == pytest.approx([1.0, -1.0]) and kept[1][1] == [0.5, -0.5]  # as they came, never recomputed
    assert sorted(counts.dropped_ids) == ["b", "c"]


def test_pass_rate_window_drops_too_easy_and_too_hard_groups():
    groups = [_group("easy", [1, 1, 1, 0]), _group("mid", [1, 0, 0, 0]), _group("hard", [0, 0, 0, 0])]
    kept, counts = filter_groups(groups, min_pass_rate=0.2, max_pass_rate=0.5)
    assert [g.submission_id for g, _ in kept] == ["mid"]
    assert counts.outside_pass_window == 2


def test_sequences_skip_empty_completions_and_keep_alignment():
    g = _group("a", [1, 0, 0], completions=[[9, 10, 1], [], [11, 1]])
    seqs = sequences_from_groups([(g, group_advantages(g.rewards))])
    assert [s.targets for s in seqs] == [[9, 10, 1], [11, 1]]
    assert seqs[0].input_ids == [5, 6, 7, 9, 10]  # prompt + completion[:-1]
    assert count_targets(seqs) == 5


def test_packing_puts_each_target_at_its_predicting_position_and_bounds_padding():
    groups = [(_group(f"g{i}", [1, 0], completions=[[20 + i, 21, 1], [22, 1]], prompt=[5] * (3 + i)), [1.0, -1.0])
              for i in range(6)]
    seqs = sequences_from_groups(groups)
    mbs = pack(seqs, row_tokens=32, micro_batch_tokens=10_000)
    assert sum(mb.num_targets for mb in mbs) == count_targets(seqs)
    for mb in mbs:
        # every target but a sequence's last is the next input token after its predicting position
        last = torch.ones_like(mb.seq_ids, dtype=torch.bool)
        last[:-1] = mb.seq_ids[1:] != mb.seq_ids[:-1]
        inner = ~last
        assert torch.equal(mb.input_ids[mb.row[inner], mb.col[inner] + 1], mb.targets[inner])
        # the predicting position of a sequence's first target is its prompt's last token (5)
        first = torch.ones_like(last)
        first[1:] = mb.seq_ids[1:] != mb.seq_ids[:-1]
        assert bool((mb.input_ids[mb.row[first], mb.col[first]] == 5).all())
        assert mb.real_tokens <= mb.padded_tokens
    rows = pack_rows(seqs, 32)
    assert all(sum(len(s.input_ids) for s in r) <= 32 for r in rows)
    assert len(rows) < len(seqs)  # several sequences share a row


def test_packed_logprobs_equal_one_sequence_at_a_time(tiny_model):
    from trainer.logprobs import token_logprobs
    from protocol.lm import completion_outputs

    g1 = _group("a", [1, 0], completions=[[9, 10, 1], [11, 1]], prompt=[5, 6, 7, 8])
    g2 = _group("b", [1], completions=[[14, 15, 16, 1]], prompt=[12, 13, 4])
    seqs = sequences_from_groups([(g1, [1.0, -1.0]), (g2, [0.5])])
    expected = {}
    for g in (g1, g2):
        for c, (_, logits) in zip(g.completions, completion_outputs(tiny_model, g.prompt_token_ids, g.completions)):
            expected[tuple(g.prompt_token_ids + c)] = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
    for row_tokens in (1024, 6):  # all in one row (block-diagonal mask) / one sequence per row
        for mb in pack(seqs, row_tokens=row_tokens, micro_batch_tokens=4096):
            logp, _ = token_logprobs(tiny_model, mb)
            for sid in mb.seq_ids.unique().tolist():
                s = seqs[sid]
                got = logp[mb.seq_ids == sid]
                want = expected[tuple(s.input_ids[: s.prompt_len] + s.targets)]
                assert torch.allclose(got, want, atol=1e-5)


def test_ranks_split_sequences_without_overlap_or_loss():
    seqs = sequences_from_groups([(_group(f"g{i}", [1, 0]), [1.0, -1.0]) for i in range(5)])
    parts = [shard_for_rank(seqs, r, 3) for r in range(3)]
    ids = sorted(s.seq_id for p in parts for s in p)
    assert ids == list(range(len(seqs)))
