"""Answer extraction: the part of a completion that a scorer compares with the reference answer.

Used by the `answer:` scorers (`protocol.tasks.answers`) and by reasoning-gym tasks
(`protocol.tasks.gym`), inside the scorer sandbox. Extractors are tried in the configured
order; the first that finds something wins:

| name | takes |
|---|---|
| `tags` | the text of the last `<answer>...</answer>` pair (the tag name is configurable) |
| `boxed` | the content of the last `\\boxed{...}` (nested braces balanced) |
| `last_number` | the last number (`-12`, `3.5`, `1,234`, `2/3`, `1e-3`) |
| `last_line` | the last non-empty line |
| `all` | the whole completion, stripped |

Completion text is hostile. Every extractor is linear in the text (plain `str.rfind` scans
and one regex without nested quantifiers, never a backtracking pattern over the whole text),
looks only at the last `MAX_SCAN_CHARS` characters, and returns at most `MAX_ANSWER_CHARS`
characters (longer finds count as "nothing found"): a scorer never parses a megabyte of text.
"""

from __future__ import annotations

import re
from typing import Callable

MAX_SCAN_CHARS = 16_384
MAX_ANSWER_CHARS = 512
EXTRACTORS = ("tags", "boxed", "last_number", "last_line", "all")
DEFAULT_ORDER = ("tags", "boxed", "last_number")
_TAG = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
# one number: optional sign, digits with optional thousands commas, fraction or decimals, exponent
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+|/\d+)?(?:[eE][-+]?\d{1,3})?")


def _tail(text: str) -> str:
    return text[-MAX_SCAN_CHARS:]


def _fit(found: str | None) -> str | None:
    if found is None:
        return None
    found = found.strip()
    return found if found and len(found) <= MAX_ANSWER_CHARS else None


def tags(text: str, tag: str = "answer") -> str | None:
    """The text inside the last complete `<tag>...</tag>`."""
    if not _TAG.fullmatch(tag):
        raise ValueError(f"answer tag {tag!r} must be a plain name (letters, digits, _; at most 32)")
    text = _tail(text)
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    opening = text.rfind(f"<{tag}>", 0, close)
    if opening < 0:
        return None
    return _fit(text[opening + len(tag) + 2 : close])


def boxed(text: str, tag: str = "") -> str | None:
    """The content of the last `\\boxed{...}`, braces balanced (unbalanced: nothing)."""
    text = _tail(text)
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, min(len(text), i + MAX_ANSWER_CHARS + 1)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return _fit(text[i:j])
    return None


def last_number(text: str, tag: str = "") -> str | None:
    """The last number in the text, thousands commas removed."""
    found = None
    for m in _NUMBER.finditer(_tail(text)):
        found = m.group(0)
    return _fit(found.replace(",", "")) if found else None


def last_line(text: str, tag: str = "") -> str | None:
    for line in reversed(_tail(text).splitlines()):
        if line.strip():
            return _fit(line)
    return None


def whole(text: str, tag: str = "") -> str | None:
    return _fit(_tail(text)) if len(text) <= MAX_SCAN_CHARS else None


_BY_NAME: dict[str, Callable[[str, str], str | None]] = {
    "tags": tags, "boxed": boxed, "last_number": last_number, "last_line": last_line, "all": whole}


def check_order(order: tuple[str, ...]) -> tuple[str, ...]:
    """`order` if every name is an extractor; ValueError naming the bad one otherwise."""
    if not order:
        raise ValueError(f"name at least one answer extractor of {EXTRACTORS}")
    for name in order:
        if name not in _BY_NAME:
            raise ValueError(f"unknown answer extractor {name!r}; use some of {EXTRACTORS}")
    return order


def extract(text: str, order: tuple[str, ...] = DEFAULT_ORDER, tag: str = "answer") -> str | None:
    """The answer the first extractor of `order` finds in `text`, or None."""
    for name in check_order(order):
        found = _BY_NAME[name](text, tag)
        if found is not None:
            return found
    return None
