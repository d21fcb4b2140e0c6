"""Hostile fixture: a seeded mutation fuzzer for JSON bodies (no dependencies).

For the `test_fuzz_*` tests: start from a valid body a service accepts, and `Mutator(seed)`
yields variants, each one to three mutations of it, that an attacker who read the code would
try: a value replaced (wrong type, integers at 0/-1/2^31/2^53/2^63/10^30, floats 1e308 and
NaN/Infinity, empty/huge/NUL/RTL/lone-surrogate text, lists of 0/1/10^5 items, nesting 10^4
deep), a number nudged (x+1, -x, x*2^32), a string truncated or grown, base64 whose decoded
bytes are truncated/extended/flipped (a proof), a list emptied/repeated/shuffled, a key
deleted/added/renamed, a key given twice in the JSON text. `Mutator(seed, typed=True)` keeps
each value's type (a hostile int for an int, a nudged list for a list), so more variants pass
a schema and reach the logic behind it. Same seed, same cases.

    for case in Mutator(seed=1).cases(body, n=200):
        case.label     # what was done, for a failure message
        case.text      # the JSON text to send as the body
        case.parsed    # what a receiver parses that text into (last duplicate key wins, as
                       # Python's json and pydantic do); `UNPARSABLE` when Python cannot (10^4 deep)

A receiver that verifies a signature over the canonical form of the parsed body accepts a
signature over `case.parsed` (see `signable`), so a signed service sees each case past its
signature check. `splice_body(envelope_json, text)` puts the text in place of an envelope's
"body" value.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

UNPARSABLE = object()
BIG_LIST = 100_000
DEEP = 10_000

INTS = [0, -1, 1, 2**31 - 1, 2**31, -(2**31) - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
        2**64, 10**18, -(10**18), 10**30, 50_257, 151_936]
FLOATS = [0.0, -0.0, 0.5, -1.5, 1e308, -1e308, 5e-324, 1e-308, 1e18, 1e30, math.nan, math.inf, -math.inf]
STRINGS = ["", " ", "\x00", "a\x00b", "\u202eevil", "\ud800", "\udfff", "\uffff", "\U0001d518", "é" * 3000,
           "x" * 100_000, "-1", "1e5", "0x10", "null", "../../etc/passwd", "%00", "\r\nX-Injected: 1",
           "{}", "[]", "AAAA", "====", "QUJD*&^"]
OTHERS = [None, True, False, [], {}, [None], {"": None}]


@dataclass(frozen=True)
class Case:
    label: str
    text: str
    parsed: Any


def _dumps(value: Any) -> str:
    # Python's json writes NaN/Infinity (not JSON, but what a careless or hostile client sends)
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return UNPARSABLE


def signable(case: Case) -> bool:
    """Whether `case.parsed` has a canonical form a signer could sign (no NaN, no lone surrogate,
    parsed at all)."""
    if case.parsed is UNPARSABLE:
        return False
    try:
        json.dumps(case.parsed, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        return False
    return True


def splice_body(envelope_json: str, body_text: str) -> str:
    """The envelope's JSON text with its "body" value replaced by `body_text` as it is."""
    env = json.loads(envelope_json)
    marker = "\u0000BODY\u0000"
    env["body"] = marker
    return json.dumps(env).replace(json.dumps(marker), body_text, 1)


def _paths(value: Any, rng: random.Random, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into `value` (for each list, its first, last and one random element)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, rng, prefix + (k,))
    elif isinstance(value, list) and value:
        for i in sorted({0, len(value) - 1, rng.randrange(len(value))}):
            yield from _paths(value[i], rng, prefix + (i,))


def _get(value: Any, path: tuple) -> Any:
    for p in path:
        value = value[p]
    return value


def _set(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    _get(value, path[:-1])[path[-1]] = new
    return value


def _is_b64(text: str) -> bool:
    if len(text) < 24 or len(text) % 4:
        return False
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


class Mutator:
    """Seeded mutations of one JSON body (see the module docstring)."""

    def __init__(self, seed: int, max_chars: int = 1_000_000, typed: bool = False):
        self.rng = random.Random(seed)
        self.max_chars = max_chars
        self.typed = typed  # only values of the type already there: past a schema, into the logic

    def cases(self, body: Any, n: int) -> Iterator[Case]:
        for _ in range(n):
            yield self.case(body)

    def case(self, body: Any) -> Case:
        """One variant of `body` whose text is at most `max_chars` (a bigger draw is drawn again)."""
        while True:
            case = self._draw(body)
            if len(case.text) <= self.max_chars:
                return case

    def _draw(self, body: Any) -> Case:
        value = copy.deepcopy(body)
        labels: list[str] = []
        raw: list[tuple[tuple, str]] = []  # (path, JSON text) placed after encoding: deep nesting
        dup: tuple[tuple, str, str] | None = None
        for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
            paths = list(_paths(value, self.rng))
            path = self.rng.choice(paths[1:] or paths)
            what = self.rng.random()
            if self.typed:
                value, label = self._same_type(value, path)
                labels.append(label)
            elif what < 0.04 and path and dup is None:
                raw.append((path, "[" * DEEP + "]" * DEEP))
                labels.append(f"{path}=[...{DEEP} deep]")
                value = _set(value, path, [])
            elif what < 0.10:
                parent = path[:-1] if path and not isinstance(path[-1], str) else path
                target = _get(value, parent) if parent or isinstance(value, dict) else value
                if isinstance(target, dict) and target and dup is None and not raw:
                    key = self.rng.choice(list(target))
                    dup = (parent, key, _dumps(self._hostile(target[key])))
                    labels.append(f"{parent + (key,)} given twice")
                    continue
                value, label = self._replace(value, path)
                labels.append(label)
            elif what < 0.22:
                value, label = self._structural(value, path)
                labels.append(label)
            elif what < 0.55:
                value, label = self._nudge(value, path)
                labels.append(label)
            else:
                value, label = self._replace(value, path)
                labels.append(label)
        text = _dumps(value)
        for path, sub in raw:
            holder = copy.deepcopy(value)
            marker = "\u0000RAW\u0000"
            try:
                _set(holder, path, marker)
            except (KeyError, IndexError, TypeError):
                continue
            text = _dumps(holder).replace(_dumps(marker), sub, 1)
            value = holder
        if dup is not None:
            text = _with_duplicate(text, value, *dup)
        return Case(label="; ".join(labels), text=text, parsed=_loads(text))

    # -- the mutations -------------------------------------------------------------------------
    def _hostile(self, old: Any) -> Any:
        r = self.rng.random()
        if r < 0.3:
            return self.rng.choice(INTS)
        if r < 0.45:
            return self.rng.choice(FLOATS)
        if r < 0.75:
            return self.rng.choice(STRINGS)
        if r < 0.85:
            n = self.rng.choice([0, 1, 2, 10, 1000, BIG_LIST])
            item = old if isinstance(old, (int, float)) or (isinstance(old, str) and len(old) < 64) else 0
            return [item] * n
        return copy.deepcopy(self.rng.choice(OTHERS))

    def _same_type(self, value: Any, path: tuple) -> tuple[Any, str]:
        """A hostile value of the type already at `path`, or a nudge of it."""
        old = _get(value, path)
        pool = ([v for v in INTS] if isinstance(old, int) and not isinstance(old, bool) else
                [v for v in FLOATS if math.isfinite(v)] if isinstance(old, float) else
                [v for v in STRINGS if "\ud800" not in v and "\udfff" not in v] if isinstance(old, str) else [])
        if pool and self.rng.random() < 0.5:
            new = self.rng.choice(pool)
            return _set(value, path, new), f"{path}={_short(new)}"
        return self._nudge(value, path)

    def _replace(self, value: Any, path: tuple) -> tuple[Any, str]:
        new = self._hostile(_get(value, path))
        return _set(value, path, new), f"{path}={_short(new)}"

    def _nudge(self, value: Any, path: tuple) -> tuple[Any, str]:
        old = _get(value, path)
        rng = self.rng
        if isinstance(old, bool):
            new: Any = not old
        elif isinstance(old, int):
            new = rng.choice([old + 1, old - 1, -old, old * 2**32, old + 2**31, -(2**63) + old, old * 10**6])
        elif isinstance(old, float):
            new = rng.choice([-old, old * 1e300, old / 1e300, old + 1e-9, math.nextafter(old, math.inf), 1e308])
        elif isinstance(old, str) and _is_b64(old):
            new = _mutate_b64(old, rng)
        elif isinstance(old, str):
            new = rng.choice([old[: len(old) // 2], old + old, old * 50, old[::-1], old.upper(), old + "\x00",
                              "\u202e" + old, old[:-1] + "\ud800", old + " "])
        elif isinstance(old, list):
            new = rng.choice([[], old[:1], old[:-1], old + old, old * max(1, BIG_LIST // max(1, len(old))),
                              old[::-1], [old], old + [old[-1] if old else 0]])
        elif isinstance(old, dict):
            new = {k: old[k] for k in list(old)[: len(old) // 2]}
        else:
            return self._replace(value, path)
        return _set(value, path, new), f"{path}~{_short(new)}"

    def _structural(self, value: Any, path: tuple) -> tuple[Any, str]:
        """Delete, add or rename a key of the object at or around `path`."""
        parent = path[:-1] if path else path
        target = _get(value, parent)
        if not isinstance(target, dict):
            return self._replace(value, path)
        r = self.rng.random()
        if r < 0.4 and target:
            key = self.rng.choice(list(target))
            del target[key]
            return value, f"{parent + (key,)} deleted"
        if r < 0.7:
            key = self.rng.choice(["extra", "__proto__", "", "\x00", "a" * 1000, "id", "signer", "worker_id"])
            target[key] = self._hostile(None)
            return value, f"{parent + (key,)} added"
        if target:
            key = self.rng.choice(list(target))
            target[key.upper() + "_"] = target.pop(key)
            return value, f"{parent + (key,)} renamed"
        return value, "nothing"


def _mutate_b64(text: str, rng: random.Random) -> str:
    raw = bytearray(base64.b64decode(text))
    r = rng.random()
    if r < 0.2:
        raw = raw[: rng.randrange(len(raw) + 1)]
    elif r < 0.35:
        raw += bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 258, 4096])))
    elif r < 0.6 and raw:
        for _ in range(rng.choice([1, 4, 16])):
            raw[rng.randrange(min(len(raw), 16 if rng.random() < 0.5 else len(raw)))] = rng.randrange(256)
    elif r < 0.75 and len(raw) >= 16:
        raw[8:12] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x10\x00\x00", b"\x00\x00\x00\x00"])
    elif r < 0.85:
        return text[:-1] + rng.choice(["*", "=", "\x00", "é"])
    else:
        return rng.choice(["", "=", "====", text + "====", text.replace("A", "-")])
    return base64.b64encode(bytes(raw)).decode("ascii")


def _with_duplicate(text: str, value: Any, parent: tuple, key: str, other: str) -> str:
    """`text` with `key` of the object at `parent` given twice: the hostile value `other` first,
    the original last (a parser that keeps the first one sees something else than one keeping
    the last)."""
    marker = "\u0000DUP\u0000"
    holder = copy.deepcopy(value)
    try:
        target = _get(holder, parent)
        original = target[key]
        target[key] = marker
    except (KeyError, IndexError, TypeError):
        return text
    return _dumps(holder).replace(_dumps(marker), f"{other},{_dumps(key)}:{_dumps(original)}", 1)


def _short(value: Any) -> str:
    if isinstance(value, (list, str)) and len(value) > 8:
        return f"{type(value).__name__}[{len(value)}] {repr(value[:4])[:24]}…"
    return repr(value)[:60]
