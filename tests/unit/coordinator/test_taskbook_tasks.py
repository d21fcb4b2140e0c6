"""The coordinator's TaskBook refuses at load what would go wrong later: prompts plus max_tokens
beyond the model's context, and model families whose logits the protocol does not compute; it
lists every EOS id the model declares and computes the task digests it serves."""

from __future__ import annotations

import json

import pytest

from coordinator.errors import ConfigError
from coordinator.taskbook import TaskBook
from swarmrl.modelkit import init_model, init_tiny_model


@pytest.fixture(scope="module")
def char_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("char")
    init_tiny_model(d, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, max_positions=64)
    return d


def test_max_tokens_beyond_the_context_is_refused_at_load(char_model):
    ok = TaskBook.load(str(char_model), "arithmetic", 0, {}, max_tokens=8)
    assert ok.context_length == 64 and len(ok.prepare(0).prompt_ids) == 6
    assert set(ok.digests) == {"spec", "tasks_code", "scorer", "source", "data"}
    with pytest.raises(ConfigError, match="leaves no room"):
        TaskBook.load(str(char_model), "arithmetic", 0, {}, max_tokens=64)
    with pytest.raises(ConfigError, match="exceeds the model's context of 64"):
        TaskBook.load(str(char_model), "arithmetic", 0, {}, max_tokens=60)  # 6-token prompts + 60 > 64
    with pytest.raises(ConfigError, match="exceeds"):  # a system prompt makes the prompts longer
        TaskBook.load(str(char_model), "arithmetic", 0, {"system_prompt": "x" * 40}, max_tokens=20)


def test_every_declared_eos_id_and_a_refused_family(tmp_path):
    init_model(tmp_path / "bpe", tokenizer="bpe", vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
               num_kv_heads=1)
    book = TaskBook.load(str(tmp_path / "bpe"), "arithmetic", 0, {}, chat_template=True, max_tokens=8)
    assert book.eos_token_ids == tuple(json.loads((tmp_path / "bpe" / "generation_config.json").read_text())["eos_token_id"])
    assert book.eos_token_id == book.eos_token_ids[0] and len(book.eos_token_ids) == 2
    conf = json.loads((tmp_path / "bpe" / "config.json").read_text())
    (tmp_path / "bpe" / "config.json").write_text(json.dumps(conf | {"model_type": "cohere", "logit_scale": 0.1,
                                                                        "architectures": ["CohereForCausalLM"]}))
    with pytest.raises(ConfigError, match="scales its logits"):
        TaskBook.load(str(tmp_path / "bpe"), "arithmetic", 0, {}, max_tokens=8)
