"""The run's tasks and tokenizer: what the coordinator needs of the model to lease and score.

`TaskBook` turns a task index (from the persistent counter) into a task of the source's
train split, encodes its prompt with the run's tokenizer (cached: prompts repeat once the
split wraps around), and scores completions by decoding them and sending them, one
submission per round trip, to the scorer sandbox (`protocol.sandbox`): worker text never
reaches a scorer in this process, which holds the coordinator's key and the database. It
also knows the vocabulary size (token ids are checked against it) and the EOS tokens (every
end the model declares: `protocol.lm.eos_token_ids`; leases carry them all).

At load it also refuses what would go wrong later: a model family whose logits the protocol
does not compute (`protocol.lm.check_model_config`), and prompts that leave no room for
`max_tokens` in the model's context (every prompt of both splits up to `CONTEXT_CHECK_TASKS`
is encoded and measured; a longer source is checked on its first ones, and `prepare` refuses
any later prompt that does not fit). A task that cannot be prepared (that prompt, an empty one,
data over the protocol's bound, a source that fails on it) is not leasable: `draw` refuses it
without raising, logs it once and remembers it (the latest SKIP_MEMORY of them), so leasing
passes over it (`coordinator.service.work`) instead of failing on it for ever. The digests of the task definition that the trainer and
verifier compare with theirs are computed here (`digests`, `protocol.tasks.digest`).

The tokenizer is the only model artefact the coordinator loads (no weights): from a local
model folder or a hub id, once at start-up, when the sandbox is also started and the task's
scorer warmed (a scorer that cannot load is a start-up error). Rewards are always computed
here, never taken from a worker; a completion whose scoring fails (timeout, crash, garbage)
scores 0, and the sandbox logs why.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from coordinator.errors import ConfigError
from protocol.errors import ProtocolError
from protocol.sandbox import Sandbox, ScoreItem, shared
from protocol.tasks import Task, TaskSource, get_source

CONTEXT_CHECK_TASKS = 20_000
SKIP_MEMORY = 65_536   # unleasable tasks remembered (their train keys), the latest kept

log = logging.getLogger("swarmrl.coordinator")


@dataclass(frozen=True)
class PreparedTask:
    index: int
    task: Task
    prompt_ids: tuple[int, ...]


@dataclass(frozen=True)
class Refused:
    """A task that cannot be leased (`TaskBook.draw`): why, and whether this draw found it
    (False: it was known already)."""

    index: int
    reason: str
    new: bool


class TaskBook:
    def __init__(self, tokenizer: Any, source: TaskSource, vocab_size: int, eos_token_id: int,
                 chat_template: bool = False, cache_size: int = 65_536, hidden_size: int | None = None,
                 sandbox: Sandbox | None = None, eos_token_ids: tuple[int, ...] = (),
                 context_length: int | None = None, max_tokens: int = 0, digests: dict[str, str] | None = None):
        self.tokenizer = tokenizer
        self.eos_token_ids = tuple(eos_token_ids) or (eos_token_id,)
        self.context_length = context_length
        self.max_tokens = max_tokens
        self.digests = dict(digests or {})
        self.sandbox = sandbox if sandbox is not None else shared()
        self.hidden_size = hidden_size
        self.source = source
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.chat_template = chat_template
        self._cache: OrderedDict[int, PreparedTask] = OrderedDict()
        self._cache_size = cache_size
        self._refused: OrderedDict[int, str] = OrderedDict()   # train key -> why it cannot be leased
        self._train_size = max(1, source.size("train"))

    @classmethod
    def load(cls, model_ref: str, task_kind: str, task_seed: int, task_options: dict,
             chat_template: bool = False, max_tokens: int = 0) -> TaskBook:
        from protocol.lm import eos_token_ids, load_tokenizer
        from protocol.tasks.digest import digest_parts

        try:
            tokenizer = load_tokenizer(model_ref)
            eos = eos_token_ids(tokenizer, model_ref)
            vocab, hidden, context = _model_sizes(model_ref, tokenizer)
            source = get_source(task_kind, seed=task_seed, options=task_options)
            shared().start(warm=(source.kind,))  # the scorer its tasks name (option `scorer`)
            digests = digest_parts(task_kind, task_seed, dict(task_options), chat_template, source.kind)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the tokenizer of {model_ref!r}: {exc}") from exc
        book = cls(tokenizer, source, vocab_size=vocab, eos_token_id=eos[0], chat_template=chat_template,
                   hidden_size=hidden, eos_token_ids=tuple(eos), context_length=context, max_tokens=max_tokens,
                   digests=digests)
        book.check_context()
        return book

    def check_context(self) -> None:
        """ConfigError when a prompt (of the first CONTEXT_CHECK_TASKS of each split) plus
        max_tokens exceeds the model's context."""
        if not self.context_length or not self.max_tokens:
            return
        if self.max_tokens >= self.context_length:
            raise ConfigError(f"sampling.max_tokens = {self.max_tokens} leaves no room for a prompt in the model's "
                              f"context of {self.context_length} tokens; lower it")
        from protocol.lm import encode_task

        for split in ("train", "eval"):
            longest, where = 0, ""
            for i in range(min(self.source.size(split), CONTEXT_CHECK_TASKS)):
                task = self.source.task(split, i)
                n = len(encode_task(self.tokenizer, task, chat=self.chat_template))
                if n > longest:
                    longest, where = n, task.id
            if longest + self.max_tokens > self.context_length:
                raise ConfigError(f"task {where} has a prompt of {longest} tokens; with sampling.max_tokens = "
                                  f"{self.max_tokens} it exceeds the model's context of {self.context_length} "
                                  "tokens; lower max_tokens or shorten the prompts")

    def task(self, index: int) -> Task:
        """The task at `index` without encoding its prompt (answers and kinds for the verifier)."""
        hit = self._cache.get(index % self._train_size)
        return hit.task if hit is not None else self.source.task("train", index)

    def prepare(self, index: int) -> PreparedTask:
        key = index % self._train_size
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return PreparedTask(index, hit.task, hit.prompt_ids)
        from protocol.lm import encode_task

        task = self.source.task("train", index)
        ids = tuple(encode_task(self.tokenizer, task, chat=self.chat_template))
        if not ids:
            raise ConfigError(f"task {task.id} has an empty prompt after tokenisation")
        if self.context_length and self.max_tokens and len(ids) + self.max_tokens > self.context_length:
            raise ConfigError(f"task {task.id} has a prompt of {len(ids)} tokens, too long for the model's context "
                              f"of {self.context_length} with sampling.max_tokens = {self.max_tokens}")
        prepared = PreparedTask(index, task, ids)
        self._cache[key] = prepared
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return prepared

    def draw(self, index: int) -> PreparedTask | Refused:
        """`prepare(index)`, or Refused for a task that cannot be prepared: any error of the
        source or of the prompt's checks. A task found so is logged (error) and remembered by
        its place in the split, so it is not prepared again, wherever the draw meets it."""
        key = index % self._train_size
        known = self._refused.get(key)
        if known is not None:
            return Refused(index, known, False)
        try:
            return self.prepare(index)
        except Exception as exc:  # noqa: BLE001 - a plugin source may fail in any way on one task
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ProtocolError) else str(exc)
        self._refused[key] = reason
        while len(self._refused) > SKIP_MEMORY:
            self._refused.popitem(last=False)
        log.error("the task at train index %d cannot be leased and is skipped: %s", index, reason)
        return Refused(index, reason, True)

    @property
    def train_size(self) -> int:
        """Distinct tasks of the train split (indices wrap around)."""
        return self._train_size

    def decode(self, completions: list[list[int]]) -> list[str]:
        """Texts of completions, exactly as `protocol.lm.decode_completion` gives them (the
        verifier scores with that). A fast tokenizer without clean-up decodes in its Rust
        backend directly: transformers' wrapper walks every token id in Python first, which
        costs more than everything else in intake for long completions."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and not getattr(self.tokenizer, "clean_up_tokenization_spaces", True):
            # one call per sequence: decode_batch's thread pool costs more than it saves here
            return [backend.decode(c, skip_special_tokens=True) for c in completions]
        return [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]

    def rewards(self, task: Task, completions: list[list[int]]) -> list[float]:
        """One reward per completion, scored in the sandbox in one round trip."""
        items = [ScoreItem(t, task.answer, task.metadata) for t in self.decode(completions)]
        return [r.reward for r in self.sandbox.score(task.kind, items)]


def _model_sizes(model_ref: str, tokenizer: Any) -> tuple[int, int | None, int | None]:
    """(vocabulary size, hidden size, context length) from the model's config: the vocabulary
    is the embedding rows (else the tokenizer's length), the others None when unknown.
    MessageError for a family whose logits the protocol does not compute."""
    from protocol.lm import check_model_config, context_length

    try:
        from transformers import AutoConfig

        full = AutoConfig.from_pretrained(str(model_ref))
    except (OSError, ValueError):
        return len(tokenizer), None, None
    check_model_config(full)
    conf = getattr(full, "text_config", None) or full
    vocab = getattr(conf, "vocab_size", None) or len(tokenizer)
    hidden = getattr(conf, "hidden_size", None)
    return int(vocab), int(hidden) if hidden else None, context_length(full)
