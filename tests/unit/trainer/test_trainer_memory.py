"""The trainer's memory features keep its numbers: chunked log-probabilities (and their
gradients) equal the full-logits computation, activation checkpointing changes nothing, a
bf16-mixed step stays within a stated tolerance of the fp32 one with float32 master
weights; the learning-rate schedule; checkpoints in the model's own dtype with a tied head
stored once, loadable by plain transformers."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace as NS

import pytest
import torch

from trainer.config import LossConfig
from trainer.logprobs import token_logprobs
from trainer.packing import pack, sequences_from_groups
from trainer.schedule import lr_factor
from trainer.setup import enable_activation_checkpointing
from trainer.step import StepOptions, run_step


def _groups():
    return [NS(submission_id=f"s{k}", prompt_token_ids=[5, 6, 7], completions=[[9, 10, 11, 12, 1], [13, 14, 1]],
               rewards=[1.0, 0.0], advantages=[1.0, -1.0], policy_version=0, temperature=0.8 + 0.1 * k)
            for k in range(3)]


def _mb():
    seqs = sequences_from_groups([(g, [1.0, -1.0]) for g in _groups()])
    return pack(seqs, row_tokens=32, micro_batch_tokens=1024)[0]


def full_logits_logprobs(model, mb):
    """`token_logprobs` as it was before chunking: the whole (rows, L, V) logits, then gathered."""
    out = model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False)
    logits = out.logits[mb.row, mb.col].float()
    logp_all = torch.log_softmax(logits / mb.temperatures[:, None], dim=-1)
    return logp_all.gather(-1, mb.targets[:, None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_chunked_logprobs_and_their_gradients_equal_the_full_logits_ones(tiny_model):
    a, b = copy.deepcopy(tiny_model).train(), copy.deepcopy(tiny_model).train()
    mb = _mb()
    lp_ref, ent_ref = full_logits_logprobs(a, mb)
    (lp_ref.sum() + ent_ref.sum()).backward()
    lp, ent = token_logprobs(b, mb, with_entropy=True, logit_rows=3)  # many chunks
    (lp.sum() + ent.sum()).backward()
    assert mb.num_targets > 6
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=1e-5)
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], atol=1e-5, rtol=1e-4)


def _step(model, opts):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    res = run_step(model, opt, [(g, [1.0, -1.0]) for g in _groups()], version=0, opts=opts)
    return res, opt


def test_activation_checkpointing_and_bf16_mixed_keep_the_step(tiny_model):
    # off-policy-looking stats need a non-trivial loss: a KL-free GRPO step with entropy bonus
    loss = LossConfig(entropy_coef=0.01)
    ref_model = copy.deepcopy(tiny_model).train()
    ref, _ = _step(ref_model, StepOptions(loss=loss, grad_clip=1.0, logit_rows=4))
    ck = copy.deepcopy(tiny_model).train()
    enable_activation_checkpointing(ck)
    res, _ = _step(ck, StepOptions(loss=loss, grad_clip=1.0, logit_rows=4))
    assert res.grad_norm == pytest.approx(ref.grad_norm, rel=1e-5)
    for (n, p), q in zip(ck.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)
    mixed = copy.deepcopy(tiny_model).train()
    res, opt = _step(mixed, StepOptions(loss=loss, grad_clip=1.0, autocast=torch.bfloat16))
    assert all(p.dtype == torch.float32 for p in mixed.parameters())  # master weights
    assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())
    # the stated tolerance of bf16-mixed against fp32: 3% of the gradient norm, entropy to 1e-2
    assert res.grad_norm == pytest.approx(ref.grad_norm, rel=3e-2)
    assert res.stats["entropy"] == pytest.approx(ref.stats["entropy"], rel=1e-2)


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(v, warmup=4, decay="cosine", decay_versions=10, min_ratio=0.1) for v in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert all(x >= y for x, y in zip(f[4:], f[5:])) and f[14] == pytest.approx(0.1) and f[19] == pytest.approx(0.1)
    lin = [lr_factor(v, warmup=0, decay="linear", decay_versions=4, min_ratio=0.0) for v in range(6)]
    assert lin == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert lr_factor(7, warmup=2, decay="constant", decay_versions=3, min_ratio=0.0) == 1.0


def test_the_step_applies_the_versions_learning_rate(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    run_step(model, opt, [(g, [1.0, -1.0]) for g in _groups()], version=3,
             opts=StepOptions(loss=LossConfig(), grad_clip=1.0, lr_at=lambda v: 1e-3 * (v + 1)))
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-3)


def test_checkpoints_hold_the_models_dtype_and_a_tied_head_once(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from trainer.checkpoint import CheckpointStore

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    store = CheckpointStore(tmp_path / "ck", keep=3)
    sd = {k: v.clone() for k, v in model.state_dict().items()}  # what an FSDP gather gives: the head listed too
    assert "lm_head.weight" in sd
    saved = store.save(1, model=model, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), optimizer_state=None,
                       state={}, state_dict=sd, dtype=torch.bfloat16)
    tensors = {}
    for f in saved.model_dir.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    assert "lm_head.weight" not in tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert json.loads((saved.model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(model.parameters()).dtype == torch.float32 and model.config.dtype != torch.bfloat16
    back = AutoModelForCausalLM.from_pretrained(saved.model_dir)  # plain transformers, the config's dtype
    assert back.dtype == torch.bfloat16 and back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(back.model.embed_tokens.weight, model.model.embed_tokens.weight.to(torch.bfloat16))
