"""A byte-level BPE tokenizer trained here, with a chat template: the real-architecture test model's.

`build_bpe_tokenizer` trains a `tokenizers` byte-level BPE (no download) on text the project
generates (`corpus`: prompts and answers of the built-in tasks, chat turns) and on the module
docstrings of swarmrl's own `protocol` package (text the project ships), and wraps it for
transformers with:
- a ChatML template (`<|im_start|>role ... <|im_end|>`), so `apply_chat_template` works and
  the run can use `chat_template = true`;
- EOS `<|im_end|>` (the end of an assistant turn) and pad `<|endoftext|>`; the model's
  generation_config declares both as ends (`swarmrl.modelkit.init_model`), so leases carry a
  list of EOS ids, as they do for real instruct models;
- digits split one per token (as Qwen2's pre-tokenizer does), so numbers are learnable;
- `<answer>` and `</answer>` as single (non-special) tokens, as reasoning models carry their
  `<think>` tags: an answer in tags costs the policy two tokens of format, not eight;
- for the Llama architecture, a BOS `<s>` its post-processor puts before every plain-text
  encoding (as Llama tokenizers do), which `protocol.lm.encode_prompt` keeps.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PAD, EOS, IM_START, BOS = "<|endoftext|>", "<|im_end|>", "<|im_start|>", "<s>"
TAGS = ("<answer>", "</answer>")


def shipped_text() -> Iterator[str]:
    """Module docstrings of swarmrl's `protocol` package (installed with it)."""
    import protocol

    for path in sorted(Path(protocol.__file__).resolve().parent.rglob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        if doc:
            yield doc


def corpus(seed: int = 0, n: int = 1500) -> Iterator[str]:
    """Generated text: arithmetic prompts and answers, with and without answer tags, in chat turns."""
    from protocol.tasks import get_source

    source = get_source("arithmetic", seed=seed)
    for i in range(n):
        t = source.task("train", i)
        yield f"{IM_START}user\n{t.prompt}{EOS}\n{IM_START}assistant\n<answer>{t.answer}</answer>{EOS}\n"
        yield f"What is {t.prompt[:-1]}? The answer is {t.answer}. \\boxed{{{t.answer}}}"
    yield from shipped_text()


def build_bpe_tokenizer(texts: Iterable[str], *, vocab_size: int = 1024, bos: bool = False):
    """Train a byte-level BPE on `texts`; a `PreTrainedTokenizerFast` with a ChatML template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, EOS, IM_START] + ([BOS] if bos else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    if bos:
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                           special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=BOS if bos else None,
                                   model_max_length=2048, clean_up_tokenization_spaces=False, chat_template=CHATML)
