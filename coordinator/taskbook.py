"""The run's tasks and tokenizer: what the coordinator needs of the model to lease and score.

`TaskBook` turns a task index (from the persistent counter) into a task of the source's
train split, encodes its prompt with the run's tokenizer (cached: prompts repeat once the
split wraps around), and scores completions by decoding them and sending them, one
submission per round trip, to the scorer sandbox (`protocol.sandbox`): worker text never
reaches a scorer in this process, which holds the coordinator's key and the database. It
also knows the vocabulary size (token ids are checked against it) and the EOS token.

The tokenizer is the only model artefact the coordinator loads (no weights): from a local
model folder or a hub id, once at start-up, when the sandbox is also started and the task's
scorer warmed (a scorer that cannot load is a start-up error). Rewards are always computed
here, never taken from a worker; a completion whose scoring fails (timeout, crash, garbage)
scores 0, and the sandbox logs why.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from coordinator.errors import ConfigError
from protocol.errors import ProtocolError
from protocol.sandbox import Sandbox, ScoreItem, shared
from protocol.tasks import Task, TaskSource, get_source


@dataclass(frozen=True)
class PreparedTask:
    index: int
    task: Task
    prompt_ids: tuple[int, ...]


class TaskBook:
    def __init__(self, tokenizer: Any, source: TaskSource, vocab_size: int, eos_token_id: int,
                 chat_template: bool = False, cache_size: int = 65_536, hidden_size: int | None = None,
                 sandbox: Sandbox | None = None):
        self.tokenizer = tokenizer
        self.sandbox = sandbox if sandbox is not None else shared()
        self.hidden_size = hidden_size
        self.source = source
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.chat_template = chat_template
        self._cache: OrderedDict[int, PreparedTask] = OrderedDict()
        self._cache_size = cache_size
        self._train_size = max(1, source.size("train"))

    @classmethod
    def load(cls, model_ref: str, task_kind: str, task_seed: int, task_options: dict,
             chat_template: bool = False) -> TaskBook:
        from protocol.lm import eos_token_id, load_tokenizer

        try:
            tokenizer = load_tokenizer(model_ref)
            eos = eos_token_id(tokenizer)
            source = get_source(task_kind, seed=task_seed, options=task_options)
            shared().start(warm=(source.kind,))  # the scorer its tasks name (option `scorer`)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the tokenizer of {model_ref!r}: {exc}") from exc
        vocab, hidden = _model_sizes(model_ref, tokenizer)
        return cls(tokenizer, source, vocab_size=vocab, eos_token_id=eos, chat_template=chat_template,
                   hidden_size=hidden)

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
        from protocol.lm import encode_prompt

        task = self.source.task("train", index)
        ids = tuple(encode_prompt(self.tokenizer, task.prompt, chat=self.chat_template))
        if not ids:
            raise ConfigError(f"task {task.id} has an empty prompt after tokenisation")
        prepared = PreparedTask(index, task, ids)
        self._cache[key] = prepared
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return prepared

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
        items = [ScoreItem(t, task.answer) for t in self.decode(completions)]
        return [r.reward for r in self.sandbox.score(task.kind, items)]


def _model_sizes(model_ref: str, tokenizer: Any) -> tuple[int, int | None]:
    """(vocabulary size, hidden size) from the model's config: the vocabulary is the
    embedding rows (else the tokenizer's length), the hidden size None when unknown."""
    try:
        from transformers import AutoConfig

        conf = AutoConfig.from_pretrained(str(model_ref))
    except (OSError, ValueError):
        return len(tokenizer), None
    conf = getattr(conf, "text_config", None) or conf
    vocab = getattr(conf, "vocab_size", None) or len(tokenizer)
    hidden = getattr(conf, "hidden_size", None)
    return int(vocab), int(hidden) if hidden else None
