"""The tiny local model: a small Qwen2- or Llama-architecture causal LM with a character or a
byte-level BPE tokenizer, built on this machine from a seed (no download), plus an optional
supervised warm start.

`init_model` (`init_tiny_model`: the demo's character-level Qwen2) writes a standard
transformers folder (config.json, model.safetensors, generation_config.json, tokenizer files)
that `protocol.lm.load_model` / `load_tokenizer` open like any other model. With
`tokenizer="bpe"` the tokenizer is a byte-level BPE trained here with a ChatML chat template
(`swarmrl.bpe`), and the generation config declares two EOS ids, as real instruct models do.
`warm_start` trains it briefly on a task (prompts built by `protocol.lm.encode_task`, with the
chat template when asked) so RL starts from a policy that is sometimes right. Tests, the demo
and its recipes use this; users point swarmrl at real models instead.
"""

from __future__ import annotations

import json
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<eos>", "<unk>"]
CHARS = list(string.digits + "+-=*/() .,:;?!" + string.ascii_lowercase + string.ascii_uppercase + "\n")


def build_tokenizer():
    """A character-level tokenizer (one token per character) wrapped for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=512, clean_up_tokenization_spaces=False)


def init_tiny_model(directory: Path | str, *, hidden_size: int = 128, num_layers: int = 4,
                    num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int | None = None,
                    seed: int = 0, max_positions: int = 8192) -> dict:
    """Write a seeded Qwen2 causal LM (~1M parameters by default) and its character tokenizer."""
    return init_model(directory, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                      num_kv_heads=num_kv_heads, intermediate_size=intermediate_size, seed=seed,
                      max_positions=max_positions)


ARCHS = ("qwen2", "llama")
TOKENIZERS = ("char", "bpe")


def init_model(directory: Path | str, *, arch: str = "qwen2", tokenizer: str = "char", vocab_size: int = 1024,
               hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4, num_kv_heads: int = 2,
               intermediate_size: int | None = None, seed: int = 0, max_positions: int = 8192,
               tie_word_embeddings: bool = False) -> dict:
    """Write a seeded causal LM of architecture `arch` with a `tokenizer` ('char', or 'bpe':
    byte-level BPE of about `vocab_size` entries with a ChatML chat template, `swarmrl.bpe`).
    `max_positions` is the context the coordinator checks prompts plus max_tokens against
    (RoPE has no position table, so a long one costs nothing; tests and benches use long
    completions on these models)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch not in ARCHS or tokenizer not in TOKENIZERS:
        raise ValueError(f"arch must be one of {ARCHS} and tokenizer one of {TOKENIZERS}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer == "bpe":
        from swarmrl.bpe import PAD, build_bpe_tokenizer, corpus

        tok = build_bpe_tokenizer(corpus(seed), vocab_size=vocab_size, bos=arch == "llama")
        eos_ids = [tok.eos_token_id, tok.convert_tokens_to_ids(PAD)]  # end of turn, end of text
    else:
        tok = build_tokenizer()
        eos_ids = [tok.eos_token_id]
    common = dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                  max_position_embeddings=max_positions, tie_word_embeddings=tie_word_embeddings, rope_theta=10000.0,
                  bos_token_id=tok.bos_token_id, eos_token_id=eos_ids[0], pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    model.generation_config = GenerationConfig(eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
                                               pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    n = sum(p.numel() for p in model.parameters())
    (directory / "swarmrl-model.json").write_text(json.dumps(
        {"kind": f"tiny-{arch}-{tokenizer}", "seed": seed, "parameters": n}) + "\n")
    return {"parameters": n, "vocab_size": len(tok), "eos_token_ids": eos_ids}


def _sft_batch(tokenizer, tasks, device, chat: bool = False, answer_format: str = "{answer}"):
    from protocol.lm import encode_task, encode_text

    seqs, masks = [], []
    for t in tasks:
        p = encode_task(tokenizer, t, chat=chat)
        a = encode_text(tokenizer, answer_format.replace("{answer}", t.answer)) + [tokenizer.eos_token_id]
        seqs.append(p + a)
        masks.append([0] * len(p) + [1] * len(a))
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), tokenizer.pad_token_id, dtype=torch.long)
    lm = torch.zeros(len(seqs), L)
    att = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s)
        lm[i, : len(m)] = torch.tensor(m, dtype=torch.float)
        att[i, : len(s)] = 1
    return ids.to(device), att.to(device), lm.to(device)


@torch.no_grad()
def greedy_accuracy(model, tokenizer, source, n: int = 200, max_new_tokens: int = 8, batch: int = 100,
                    chat: bool = False) -> float:
    """Held-out greedy accuracy on the first `n` eval tasks of `source` (left-padded batches)."""
    from protocol.lm import decode_completion, encode_task, eos_token_ids
    from protocol.tasks import score_many

    model.eval()
    device = next(model.parameters()).device
    correct = 0.0
    ends = eos_token_ids(tokenizer, getattr(model.config, "_name_or_path", None) or None)
    tasks = [source.task("eval", i) for i in range(min(n, source.size("eval")))]
    for start in range(0, len(tasks), batch):
        chunk = tasks[start : start + batch]
        prompts = [encode_task(tokenizer, t, chat=chat) for t in chunk]
        L = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), L), tokenizer.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, L - len(p) :] = torch.tensor(p)
            att[i, L - len(p) :] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=ends,
                             pad_token_id=tokenizer.pad_token_id)
        texts = []
        for row in out[:, L:].tolist():
            cut = next((i for i, tok in enumerate(row) if tok in ends), len(row))
            texts.append(decode_completion(tokenizer, row[:cut]))
        correct += sum(score_many(list(zip(chunk, texts))))
    return correct / max(1, len(tasks))


def warm_start(directory: Path | str, *, seconds: float = 30.0, seed: int = 0, task_kind: str = "arithmetic",
               task_seed: int = 0, task_options: dict | None = None, lr: float = 2e-3, batch_size: int = 64,
               max_steps: int | None = None, target_accuracy: float | None = None, check_every: int = 50,
               check_tasks: int = 200, warmup_steps: int = 50, threads: int = 0, chat: bool = False,
               answer_format: str = "{answer}", max_new_tokens: int = 8) -> dict:
    """Supervised training on the task's train split; saves in place.

    Stops at the first of: `max_steps` steps, `seconds` of wall time, or (when
    `target_accuracy` is set) the first check, every `check_every` steps, where held-out
    greedy accuracy on `check_tasks` tasks reaches the target. The target makes the RL
    starting point robust: small models learn this task in a sudden jump (the carry), whose
    timing varies from run to run, so a fixed number of steps can land before or after it.
    The learning rate warms up linearly over `warmup_steps` and then stays constant."""
    from protocol.lm import load_model, load_tokenizer
    from protocol.tasks import get_source

    if threads:
        torch.set_num_threads(threads)
    directory = Path(directory)
    tokenizer = load_tokenizer(str(directory))
    model = load_model(str(directory))
    source = get_source(task_kind, seed=task_seed, options=task_options)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    model.train()
    start, steps = time.monotonic(), 0
    n_train = source.size("train")
    acc: float | None = None
    loss = torch.tensor(float("nan"))
    while (max_steps is None or steps < max_steps) and time.monotonic() - start < seconds:
        idx = torch.randint(0, n_train, (batch_size,), generator=gen).tolist()
        ids, att, lmask = _sft_batch(tokenizer, [source.task("train", i) for i in idx], "cpu", chat, answer_format)
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        target, m = ids[:, 1:], lmask[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        loss = (nll * m.reshape(-1)).sum() / m.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        steps += 1
        if target_accuracy is not None and steps % check_every == 0:
            acc = greedy_accuracy(model, tokenizer, source, n=check_tasks, chat=chat, max_new_tokens=max_new_tokens)
            model.train()
            if acc >= target_accuracy:
                break
    model.eval()
    model.save_pretrained(directory)
    acc = greedy_accuracy(model, tokenizer, source, chat=chat, max_new_tokens=max_new_tokens)
    return {"steps": steps, "seconds": time.monotonic() - start, "accuracy": acc, "loss": float(loss.detach())}


@dataclass(frozen=True)
class LearningRecipe:
    """Settings under which the demo learns on a 2-core CPU (tuned with bench/learning.py).

    Model and warm start (`build_demo_model`): a ~0.76M-parameter Qwen2 (128 x 3 layers)
    trained by SFT on the zero-padded arithmetic task until held-out greedy accuracy reaches
    `warm_start_target` (checked every 50 steps): the model then sits at the start of the
    sudden rise in accuracy (learning the carry), where RL improves it fastest. The swarm
    part is what the coordinator and the trainer must be configured with."""

    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 2
    warm_start_lr: float = 1e-3
    warm_start_batch: int = 64
    warm_start_target: float = 0.25
    warm_start_max_s: float = 120.0
    warm_start_threads: int = 1
    # coordinator
    task_options: dict = field(default_factory=lambda: {"pad": True})
    group_size: int = 8
    temperature: float = 1.0
    max_tokens: int = 6
    async_window: int = 2
    # trainer
    lr: float = 5e-5
    groups_per_step: int = 16
    updates_per_batch: int = 1
    grad_clip: float = 1.0


DEMO_RECIPE = LearningRecipe()


def build_demo_model(directory: Path | str, *, seed: int = 0, recipe: LearningRecipe = DEMO_RECIPE) -> dict:
    """Write the tiny model and warm-start it to the recipe's target accuracy (no download)."""
    info = init_tiny_model(directory, hidden_size=recipe.hidden_size, num_layers=recipe.num_layers,
                           num_heads=recipe.num_heads, num_kv_heads=recipe.num_kv_heads, seed=seed)
    ws = warm_start(directory, seconds=recipe.warm_start_max_s, seed=seed, task_seed=seed,
                    task_options=dict(recipe.task_options), lr=recipe.warm_start_lr,
                    batch_size=recipe.warm_start_batch, target_accuracy=recipe.warm_start_target,
                    threads=recipe.warm_start_threads)
    return {**info, "warm_start": ws}
