"""A task plugin as another package would ship it: a source factory and a scorer (for the tests)."""

from __future__ import annotations

from protocol.tasks import Task


class Countdown:
    """Tasks "count down from n" with answer n-1; its own scorer below."""

    def __init__(self, seed: int = 0, start: int = 10, pad: int = 0):
        self.kind = "tests.taskplugin:last_word_scorer"
        self.start = start
        self.pad = pad  # characters of filler metadata (a task as large as a code task's test cases)

    def size(self, split: str) -> int:
        return 5 if split == "eval" else 20

    def task(self, split: str, index: int) -> Task:
        n = self.start + index % self.size(split) + (100 if split == "eval" else 0)
        return Task(id=f"cd-{split}-{index % self.size(split)}", prompt=f"before {n}:", answer=str(n - 1),
                    kind=self.kind, metadata={"n": n, **({"pad": "x" * self.pad} if self.pad else {})})


def make_source(seed: int = 0, **options):
    return Countdown(seed=seed, **options)


def last_word_scorer(completion: str, answer: str, metadata: dict) -> float:
    words = completion.split()
    return 1.0 if words and words[-1] == answer and int(answer) == metadata["n"] - 1 else 0.0


def tagged_sum(completion: str, answer: str, metadata: dict) -> float:
    """The number in the completion's <answer> tags, when it is the sum the task's metadata
    describes (so a reward of 1 proves the metadata reached the scorer, wherever it ran)."""
    from protocol.tasks.extract import tags

    got = tags(completion)
    want = int(metadata["a"]) + int(metadata["b"])
    return 1.0 if got is not None and got.lstrip("-").isdigit() and int(got) == want == int(answer) else 0.0
