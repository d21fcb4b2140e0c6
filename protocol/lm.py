"""The model side of the protocol: loading a policy and what "final hidden state" means.

Workers, the verifier and the trainer all go through these functions, so the hidden
states that proofs are built from and the logits that sampling is checked against are
computed the same way everywhere:

- final hidden state = the base model's `last_hidden_state` (after the final norm), which
  is the input of the LM head; logits = LM head applied to it, nothing else. Model families
  whose logits get another transform (final soft-capping: Gemma-2/3; logit scaling: Cohere,
  Granite) are refused at every role's start (`check_model_config`, called by `load_model`
  and the coordinator's tokenizer load); implemented and tested: the plain head, tied or
  untied (Qwen2, Llama);
- for a completion of T tokens after a prompt of P tokens, the hidden state and logits
  "of completion token t" are those at sequence position P-1+t: the position whose output
  chose token t. So prompt + completion[:-1] is all a prefill needs.

Prompts: `encode_task` is the one function that turns a task into prompt ids, for the
coordinator's leases, the trainer's evaluation and the demo's warm start alike: the chat
template (a system turn when the task has a system prompt, one user turn, the generation
prompt), or plain text with the tokenizer's own leading special token (BOS, for Llama-style
tokenizers; nothing for Qwen2's). Ends: `eos_token_ids` lists every id the model declares as
an end (the tokenizer's EOS and the generation_config's list); leases carry them all.

Any transformers causal LM folder or hub id works; tokenizers are used through the
generic tokenizer API.
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


# Config attributes of families whose logits are not `lm_head(final hidden state)`: the
# protocol computes logits itself (`hidden_and_logits`), so these would silently differ from
# what the model's own forward samples from. (value: what the attribute does)
_LOGIT_TRANSFORMS = {"final_logit_softcapping": "soft-caps its logits", "logit_scale": "scales its logits",
                     "logits_scaling": "divides its logits by a constant"}
_TRANSFORM_FAMILIES = ("gemma2", "gemma3", "cohere", "granite")


def check_model_config(config: Any) -> None:
    """MessageError when the model's logits need a transform the protocol does not implement."""
    conf = getattr(config, "text_config", None) or config
    kind = str(getattr(conf, "model_type", "") or getattr(config, "model_type", ""))
    for attr, what in _LOGIT_TRANSFORMS.items():
        value = getattr(conf, attr, None)
        if value is not None and not (attr != "final_logit_softcapping" and float(value) == 1.0):
            raise MessageError(f"model type {kind!r} {what} ({attr} = {value}); swarmrl's logits are the LM head "
                               "applied to the final hidden state and nothing else, so it cannot run this family "
                               "(supported: plain heads such as Qwen2 and Llama)")
    if kind.startswith(_TRANSFORM_FAMILIES):
        raise MessageError(f"model type {kind!r} transforms its logits (soft-capping or scaling), which swarmrl's "
                           "protocol does not implement; use a family with a plain LM head (e.g. Qwen2, Llama)")


def context_length(config: Any) -> int | None:
    """The longest sequence the model takes (max_position_embeddings), None when unknown."""
    conf = getattr(config, "text_config", None) or config
    n = getattr(conf, "max_position_embeddings", None)
    return int(n) if n else None


def load_model(ref: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32") -> Any:
    """A causal LM from a folder or hub id, in eval mode on `device` with `dtype` (MessageError
    for a family whose logits the protocol does not compute, `check_model_config`)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    check_model_config(AutoConfig.from_pretrained(str(ref)))
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


def eos_token_ids(tokenizer: Any, model_ref: str | None = None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS first, then the ids the model's
    generation_config declares (an int or a list; e.g. Llama-3 instruct: <|eot_id|> too)."""
    ids = [eos_token_id(tokenizer)]
    if model_ref is not None:
        from transformers import GenerationConfig

        try:
            declared = GenerationConfig.from_pretrained(str(model_ref)).eos_token_id
        except (OSError, ValueError):
            declared = None
        for i in declared if isinstance(declared, (list, tuple)) else [declared]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` as a continuation (no special tokens): answers, completions."""
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def encode_prompt(tokenizer: Any, text: str, chat: bool = False, system: str = "") -> list[int]:
    """Token ids of a prompt: a chat (optional system turn, one user turn, the generation
    prompt) with the tokenizer's template, or plain text (the system prompt and a blank line
    before it) led by the tokenizer's own BOS when its tokenizer adds one."""
    if chat:
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        try:
            ids = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # noqa: BLE001  (jinja errors: no template, no system role, ...)
            raise MessageError(f"the tokenizer's chat template cannot encode this prompt: {exc}") from exc
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = f"{system}\n\n{text}" if system else text
    ids = encode_text(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        lead = tokenizer(text, add_special_tokens=True)["input_ids"]
        if lead and int(lead[0]) == int(bos):  # the tokenizer's own rule says BOS leads
            ids = [int(bos), *ids]
    return ids


def encode_task(tokenizer: Any, task: Any, chat: bool = False) -> list[int]:
    """The prompt ids of a `protocol.tasks.Task`: the one prompt builder every role uses."""
    return encode_prompt(tokenizer, task.prompt, chat=chat, system=getattr(task, "system", ""))


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
