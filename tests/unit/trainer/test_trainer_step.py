"""A GRPO step on a real tiny model: direction of the update, behaviour log-probs of older
versions recomputed from their weights, and the atomic checkpoint store and inbox."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace as NS

import pytest
import torch

from trainer.checkpoint import COMPLETE, CheckpointStore, Inbox
from trainer.config import LossConfig
from trainer.errors import CheckpointError
from trainer.history import WeightHistory
from trainer.logprobs import token_logprobs
from trainer.packing import pack, sequences_from_groups
from trainer.step import StepOptions, run_step, stale_behaviour_logprobs


def _group(version: int = 0):
    return NS(submission_id=f"s{version}", prompt_token_ids=[5, 6, 7], completions=[[9, 10, 1], [11, 12, 1]],
              rewards=[1.0, 0.0], advantages=[1.0, -1.0], policy_version=version, temperature=1.0)


def _seq_logprob(model, group, i):
    mb = pack(sequences_from_groups([(group, [1.0, -1.0])]), row_tokens=64, micro_batch_tokens=1024)[0]
    with torch.no_grad():
        lp, _ = token_logprobs(model, mb)
    return float(lp[mb.seq_ids == i].sum())


def test_a_step_raises_the_rewarded_completion_and_lowers_the_other(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    g = _group()
    before = (_seq_logprob(model, g, 0), _seq_logprob(model, g, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    res = run_step(model, opt, [(g, [1.0, -1.0])], version=0, opts=StepOptions(loss=LossConfig(), grad_clip=1.0))
    after = (_seq_logprob(model, g, 0), _seq_logprob(model, g, 1))
    assert after[0] > before[0] and after[1] < before[1]
    assert res.tokens == 6 and res.sequences == 2 and res.stale_tokens == 0
    assert res.stats["importance_weight"] == pytest.approx(1.0)
    assert res.stats["loss"] == pytest.approx(0.0, abs=1e-6)  # on-policy: -mean(A) over tokens = 0


def test_stale_tokens_get_behaviour_logprobs_from_their_own_version(tiny_model):
    old = copy.deepcopy(tiny_model)
    new = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hist = WeightHistory(old, keep=2)
    hist.remember(3, old)
    g_old, g_new = _group(version=3), _group(version=4)
    g_new.submission_id = "other"
    mbs = pack(sequences_from_groups([(g_old, [1.0, -1.0]), (g_new, [1.0, -1.0])]), row_tokens=64,
               micro_batch_tokens=1024)
    out, stale, missing = stale_behaviour_logprobs(mbs, version=4, history=hist)
    assert stale == 6 and missing == 0
    mask, values = out[0]
    want, _ = token_logprobs(old, mbs[0])
    assert torch.allclose(values[mask], want[mask], atol=1e-6)
    assert bool((mbs[0].versions[mask] == 3).all()) and int(mask.sum()) == 6
    # a version the history no longer holds is counted and treated as on-policy
    _, stale2, missing2 = stale_behaviour_logprobs(mbs, version=5, history=WeightHistory(old, keep=1))
    assert stale2 == 12 and missing2 == 12


def test_stale_step_uses_capped_importance_weights(tiny_model):
    old = copy.deepcopy(tiny_model)
    model = copy.deepcopy(tiny_model).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    hist = WeightHistory(old, keep=2)
    hist.remember(0, old)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    res = run_step(model, opt, [(_group(version=0), [1.0, -1.0])], version=1,
                   opts=StepOptions(loss=LossConfig(max_importance_weight=2.0), grad_clip=1.0), history=hist)
    assert res.stale_tokens == 6
    assert res.stats["importance_weight"] != pytest.approx(1.0)
    assert res.stats["importance_weight"] <= 2.0 + 1e-6


def test_checkpoints_are_complete_or_absent_and_pruned(tmp_path, tiny_model_dir):
    from protocol.lm import load_model, load_tokenizer

    model = load_model(str(tiny_model_dir))
    tok = load_tokenizer(str(tiny_model_dir))
    store = CheckpointStore(tmp_path, keep=2)
    for v in range(3):
        store.save(v, model=model, tokenizer=tok, optimizer_state={"x": v}, state={"step": v})
    assert store.complete_versions() == [1, 2]  # version 0 pruned
    saved = store.latest()
    assert saved.version == 2 and saved.state()["step"] == 2
    assert (saved.model_dir / "model.safetensors").exists() and (saved.model_dir / "tokenizer.json").exists()
    assert not (saved.model_dir / "optimizer.pt").exists()  # never inside the published folder
    assert saved.optimizer_state() == {"x": 2}
    # a crash mid-write leaves a temp folder and a folder without its marker: both are ignored and cleaned
    (store.root / ".tmp-3-123").mkdir()
    (store.root / "3" / "model").mkdir(parents=True)
    assert store.latest().version == 2
    removed = store.clean_incomplete()
    assert len(removed) == 2 and store.complete_versions() == [1, 2]
    with pytest.raises(CheckpointError):
        store.save(2, model=model, tokenizer=tok, optimizer_state=None, state={})
    assert (store.root / "2" / COMPLETE).read_text().strip() == "2"


class _Payload:
    """Unpickling this runs code (what a tampered optimizer.pt could carry)."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['PWNED_FILE']).write_text('ran')",))


def test_optimizer_state_loads_with_weights_only_and_a_tampered_file_runs_nothing(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """A real AdamW state (tensors, betas tuple, flags) loads under torch.load(weights_only=True);
    a file that names any other object is refused with a clear error and its code never runs."""
    from protocol.lm import load_model, load_tokenizer

    model = load_model(str(tiny_model_dir)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    model(torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    store = CheckpointStore(tmp_path, keep=2)
    saved = store.save(1, model=model, tokenizer=load_tokenizer(str(tiny_model_dir)),
                       optimizer_state=opt.state_dict(), state={"step": 1})
    again = torch.optim.AdamW(model.parameters(), lr=1e-3)
    again.load_state_dict(saved.optimizer_state())
    assert again.state_dict()["param_groups"][0]["betas"] == (0.9, 0.99)
    first = next(iter(opt.state.values()))
    assert torch.equal(next(iter(again.state.values()))["exp_avg"], first["exp_avg"])

    marker = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_FILE", str(marker))
    torch.save({"state": {}, "param_groups": [], "x": _Payload()}, saved.optimizer_path)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        saved.optimizer_state()
    assert not marker.exists()


def test_inbox_survives_a_restart_and_forgets_consumed_groups(tmp_path):
    from protocol.messages import TrainingGroup

    groups = [TrainingGroup(submission_id=f"sub-{i}", task_id="t", worker_id="w", policy_version=0,
                            prompt_token_ids=[1, 2], completions=[[3, 1], [4, 1]], finish_reasons=["eos", "eos"],
                            rewards=[1.0, 0.0], advantages=[1.0, -1.0], temperature=1.0) for i in range(3)]
    Inbox(tmp_path).put(groups)
    again = Inbox(tmp_path)  # a new process
    assert sorted(g.submission_id for g in again.load(TrainingGroup)) == ["sub-0", "sub-1", "sub-2"]
    again.remove(["sub-1"])
    (again.root / "garbage.json").write_text(json.dumps({"nope": 1}))
    assert sorted(g.submission_id for g in Inbox(tmp_path).load(TrainingGroup)) == ["sub-0", "sub-2"]
    assert list(again.root.glob("*.corrupt"))


def test_kl_and_entropy_terms_run_through_a_step(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    ref = copy.deepcopy(tiny_model).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg = LossConfig(kl_coef=0.1, entropy_coef=0.01)
    res = run_step(model, opt, [(_group(), [1.0, -1.0])], version=0,
                   opts=StepOptions(loss=cfg, grad_clip=1.0), ref_model=ref)
    assert res.stats["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is still the reference
    assert res.stats["entropy"] > 0.0
    with pytest.raises(ValueError):
        run_step(model, opt, [(_group(), [1.0, -1.0])], version=0, opts=StepOptions(loss=cfg, grad_clip=1.0))
