"""Prompt options of every task source: an optional system prompt and a prompt template.

`get_source` takes `system_prompt` and `prompt_template` from any source's options and wraps
the source in `Prompted`: each task's prompt becomes the template with `{prompt}` replaced by
the source's prompt (and `{answer_tag}`-free: the template is plain text, not a format string,
so braces elsewhere in it stay as written), and the task carries the system prompt. The token
ids are made from that by the one prompt builder every role uses, `protocol.lm.encode_task`
(chat template: a system turn and a user turn; plain text: the system prompt, a blank line,
the prompt). The options are part of the run's task definition (`RunInfo.tasks`), so the
coordinator's leases and the trainer's held-out evaluation use the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from protocol.errors import MessageError
from protocol.tasks import Task, TaskSource

MAX_PROMPT_OPTION_CHARS = 8192
PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptFormat:
    system: str = ""
    template: str = PLACEHOLDER

    def apply(self, task: Task) -> Task:
        return replace(task, prompt=self.template.replace(PLACEHOLDER, task.prompt), system=self.system or task.system)


def prompt_format(options: dict) -> PromptFormat | None:
    """The format the options `system_prompt` / `prompt_template` ask for (None: none)."""
    if not options:
        return None
    system, template = options.get("system_prompt", ""), options.get("prompt_template", PLACEHOLDER)
    for name, value in (("system_prompt", system), ("prompt_template", template)):
        if not isinstance(value, str) or len(value) > MAX_PROMPT_OPTION_CHARS:
            raise MessageError(f"task option {name} must be text of at most {MAX_PROMPT_OPTION_CHARS} characters")
    if PLACEHOLDER not in template:
        raise MessageError(f"task option prompt_template must contain {PLACEHOLDER} where the task's prompt goes")
    return PromptFormat(system=system, template=template)


@dataclass(frozen=True)
class Prompted:
    """A source whose prompts are formatted by `fmt`."""

    source: TaskSource
    fmt: PromptFormat

    @property
    def kind(self) -> str:
        return self.source.kind

    def task(self, split: str, index: int) -> Task:
        return self.fmt.apply(self.source.task(split, index))

    def size(self, split: str) -> int:
        return self.source.size(split)
