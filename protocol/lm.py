"""The model side of the protocol: loading a policy and what "final hidden state" means.

Workers, the verifier and the trainer all go through these functions, so the hidden
states that proofs are built from and the logits that sampling is checked against are
computed the same way everywhere:

- final hidden state = the base model's `last_hidden_state` (after the final norm), which
  is the input of the LM head; logits = LM head applied to it (models with extra logit
  transforms, e.g. soft-capping, are not supported yet);
- for a completion of T tokens after a prompt of P tokens, the hidden state and logits
  "of completion token t" are those at sequence position P-1+t: the position whose output
  chose token t. So prompt + completion[:-1] is all a prefill needs.

Any transformers causal LM folder or hub id works; tokenizers are used through the
generic tokenizer API (plain text prompts, or the chat template when asked for).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from protocol.errors import MessageError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise MessageError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def quiet_transformers() -> None:
    """No progress bars or info chatter from transformers (errors still show)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(ref: str) -> Any:
    from transformers import AutoTokenizer

    quiet_transformers()

    return AutoTokenizer.from_pretrained(str(ref))


def load_model(ref: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32") -> Any:
    """A causal LM from a folder or hub id, in eval mode on `device` with `dtype`."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    dt = resolve_dtype(dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(str(ref), dtype=dt)
    return model.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()


def reload_weights(model: Any, checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> bool:
    """Load a checkpoint's safetensors into an existing `model` of the same architecture, in
    place (its dtype and device stay). For a new policy version of the same model this takes
    milliseconds where `from_pretrained` takes ~0.1 s (config, module construction, init).
    False if the tensors do not match the model's (the caller then loads afresh; the model
    may be partly overwritten and must not be used)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        state.update(load_file(str(f), device=str(device)))
    if not state:
        return False
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # a tensor of another shape
        return False
    return not unexpected and all(k.endswith("lm_head.weight") for k in missing)  # tied heads are not stored


def eos_token_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise MessageError("the tokenizer defines no EOS token; swarmrl needs one to end completions")
    return int(eos)


def encode_prompt(tokenizer: Any, text: str, chat: bool = False) -> list[int]:
    """Token ids of a task prompt: plain text, or a one-turn chat with the generation prompt."""
    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def decode_completion(tokenizer: Any, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True)


def base_model(model: Any) -> Any:
    return getattr(model, model.base_model_prefix)


def final_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """One forward pass of the base model: (final hidden states (B, L, H), model output), no
    logits. Extra kwargs (past_key_values, use_cache, position_ids) go to the base model."""
    out = base_model(model)(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return out.last_hidden_state, out


def hidden_and_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """One forward pass: (final hidden states (B, L, H), logits (B, L, V), model output).
    The logits cost L x V per sequence: callers with long sequences and a large vocabulary
    use `final_hidden` and `logits_in_chunks` instead."""
    hidden, out = final_hidden(model, input_ids, attention_mask, **kwargs)
    return hidden, model.get_output_embeddings()(hidden), out


def logits_in_chunks(model: Any, hidden: torch.Tensor, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, logits (n, V)) for `hidden` (T, H), `rows` positions at a time: the LM head
    applied to one chunk, so a caller that drops each chunk holds one chunk's logits at most."""
    head = model.get_output_embeddings()
    for a in range(0, hidden.shape[0], rows):
        yield a, head(hidden[a:a + rows])


@torch.no_grad()
def completion_hidden(model: Any, prompt_ids: list[int], completions: list[list[int]]) -> list[torch.Tensor]:
    """Prefill prompt + completion for each completion (one batch, right-padded) and return,
    per completion of T tokens, the final hidden states (T, H) at the positions that chose
    its tokens (views into the batch's output). Empty completions give empty tensors."""
    device = next(model.parameters()).device
    P = len(prompt_ids)
    seqs = [prompt_ids + c[:-1] if c else list(prompt_ids) for c in completions]
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), L, dtype=torch.long, device=device)
    mask = torch.zeros(len(seqs), L, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    hidden, _ = final_hidden(model, ids, mask)
    return [hidden[i, P - 1 : P - 1 + len(c)] for i, c in enumerate(completions)]


@torch.no_grad()
def completion_outputs(model: Any, prompt_ids: list[int], completions: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`completion_hidden` with each completion's logits (T, V) as well (T x V each: for
    short completions and small vocabularies; the verifier uses `logits_in_chunks`)."""
    head = model.get_output_embeddings()
    return [(h, head(h)) for h in completion_hidden(model, prompt_ids, completions)]
