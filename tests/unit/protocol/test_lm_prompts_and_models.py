"""Prompts, ends and models agree everywhere (issue 20 item 3), on the locally built BPE models.

`protocol.lm.encode_task` is the one prompt builder (the coordinator's leases, the trainer's
evaluation and the demo's warm start call it): the chat template with a system turn, or plain
text led by the tokenizer's own BOS (Llama) and nothing else (Qwen2). `eos_token_ids` lists every
end the model declares. Families whose logits the protocol does not compute are refused.
"""

from __future__ import annotations

import json

import pytest

from protocol.errors import MessageError
from protocol.lm import check_model_config, encode_prompt, encode_task, eos_token_ids, load_model, load_tokenizer
from protocol.tasks import Task
from swarmrl.modelkit import init_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for arch in ("qwen2", "llama"):
        d = tmp_path_factory.mktemp(arch)
        init_model(d, arch=arch, tokenizer="bpe", vocab_size=320, hidden_size=32, num_layers=1, num_heads=2,
                   num_kv_heads=1, tie_word_embeddings=arch == "llama")
        out[arch] = d
    return out


def test_plain_prompts_keep_the_tokenizers_own_bos(models):
    q, ll = load_tokenizer(str(models["qwen2"])), load_tokenizer(str(models["llama"]))
    assert q.bos_token_id is None and encode_prompt(q, "12+3=") == q("12+3=", add_special_tokens=False)["input_ids"]
    ids = encode_prompt(ll, "12+3=")
    assert ids[0] == ll.bos_token_id and ids[1:] == ll("12+3=", add_special_tokens=False)["input_ids"]
    assert ids == ll("12+3=")["input_ids"]  # what the tokenizer itself does with its special tokens


def test_chat_prompts_with_a_system_turn_through_one_builder(models):
    tok = load_tokenizer(str(models["qwen2"]))
    task = Task(id="t", prompt="12+3=", answer="15", kind="arithmetic", system="Answer in <answer> tags.")
    text = tok.decode(encode_task(tok, task, chat=True))
    assert text == ("<|im_start|>system\nAnswer in <answer> tags.<|im_end|>\n<|im_start|>user\n12+3=<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tok.decode(encode_task(tok, task)) == "Answer in <answer> tags.\n\n12+3="
    no_system = Task(id="t", prompt="12+3=", answer="15", kind="arithmetic")
    assert encode_task(tok, no_system, chat=True) == encode_prompt(tok, "12+3=", chat=True)


def test_every_declared_eos_id_is_listed(models):
    for arch, d in models.items():
        tok = load_tokenizer(str(d))
        declared = json.loads((d / "generation_config.json").read_text())["eos_token_id"]
        assert isinstance(declared, list) and len(declared) == 2
        assert eos_token_ids(tok, str(d)) == declared and eos_token_ids(tok) == [tok.eos_token_id]
        load_model(str(d))  # a plain head, tied (llama here) or untied: accepted


@pytest.mark.parametrize("kind,attrs", [
    ("gemma2", {"final_logit_softcapping": 30.0}), ("gemma3_text", {"final_logit_softcapping": None}),
    ("cohere", {"logit_scale": 0.0625}), ("granite", {"logits_scaling": 8.0}), ("llama", {"logits_scaling": 4.0}),
])
def test_families_with_logit_transforms_are_refused(kind, attrs):
    from types import SimpleNamespace

    with pytest.raises(MessageError, match="logits"):
        check_model_config(SimpleNamespace(model_type=kind, **attrs))


def test_a_real_gemma2_config_is_refused_at_load(tmp_path):
    from transformers import Gemma2Config

    Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8).save_pretrained(tmp_path)
    with pytest.raises(MessageError, match="soft-caps"):
        load_model(str(tmp_path))
