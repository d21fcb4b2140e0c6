"""`swarmrl model init` builds a Qwen2- or Llama-architecture model with a character or a
byte-level BPE tokenizer (trained here, ChatML template), loadable like any transformers model."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from protocol.lm import encode_prompt, load_model, load_tokenizer
from swarmrl.cli import app


def test_model_init_builds_a_llama_with_a_bpe_tokenizer_and_chat_template(tmp_path):
    out = tmp_path / "m"
    r = CliRunner().invoke(app, ["model", "init", str(out), "--arch", "llama", "--tokenizer", "bpe", "--vocab-size",
                                 "300", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--tied"])
    assert r.exit_code == 0, r.output
    assert "llama, bpe tokenizer" in r.output
    conf = json.loads((out / "config.json").read_text())
    assert conf["model_type"] == "llama" and conf["tie_word_embeddings"] is True
    tok = load_tokenizer(str(out))
    assert tok.decode(encode_prompt(tok, "hi", chat=True)) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert load_model(str(out)).config.vocab_size == len(tok)


def test_model_init_refuses_an_unknown_architecture(tmp_path):
    r = CliRunner().invoke(app, ["model", "init", str(tmp_path / "m"), "--arch", "gemma2"])
    assert r.exit_code == 2 and "arch must be one of" in r.output
