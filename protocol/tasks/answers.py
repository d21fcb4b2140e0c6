"""The `answer:` scorers: extract the answer from a completion, compare it with the reference.

A scorer reference (a task's kind, `protocol.tasks`) of the form

    answer:<compare>[?extract=<e1>,<e2>...&tag=<name>&format=<weight>]

e.g. `answer:numeric`, `answer:math?extract=boxed,tags&format=0.1`. Everything that decides a
reward is in the reference itself, so the coordinator, the verifier and the audit, which get
only the task's kind, answer and metadata, score alike. `ScorerSpec.ref` writes the one
canonical spelling of a spec and `parse_ref` reads it back.

| compare | reward 1 when | pure |
|---|---|---|
| `exact` | the extracted text equals the answer (surrounding whitespace ignored) | yes |
| `numeric` | both parse as numbers (decimals, fractions `2/3`, thousands commas, exponents up to 3 digits) and are equal within 1e-6 relative; an answer written as an integer only exactly (in value: `42.0` is 42) | yes |
| `math` | mathematically equivalent (`1/2` = `0.5` = `\\frac{1}{2}`, `2x+2` = `2(x+1)`): math-verify when installed, else sympy (`parse_expr` + `simplify`) | no: both parse worker text into expressions, so it runs sandboxed, one batch per process |

A `math` answer whose shape could cost unbounded time or memory to compare (`9**9**9**9`,
`(10^10)!`, `(x+1)^1000`: `protocol.tasks.mathcost`) is wrong at once, before either backend
parses it; the sympy fallback resolves no name outside `mathcost.NAMES` (no builtins).

`format` (0..1, default 0) is the weight of a format reward: the completion gets
`(1 - format) * correct + format * well_formed`, where well-formed means the first extractor
of the list found something (e.g. an `<answer>` pair). Extraction: `protocol.tasks.extract`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from protocol.tasks.extract import DEFAULT_ORDER, check_order, extract
from protocol.tasks.mathcost import check_code, namespace, sympy_code, too_costly

COMPARES = ("exact", "numeric", "math")
PURE_COMPARES = ("exact", "numeric")
_REF = re.compile(r"answer:(exact|numeric|math)(?:\?([A-Za-z0-9_.,=&]{1,200}))?")
MAX_MATH_CHARS = 200  # longer answers are not parsed as math (reward 0)


@dataclass(frozen=True)
class ScorerSpec:
    compare: str = "exact"
    extract: tuple[str, ...] = DEFAULT_ORDER
    tag: str = "answer"
    format: float = 0.0

    def __post_init__(self) -> None:
        if self.compare not in COMPARES:
            raise ValueError(f"unknown comparison {self.compare!r}; use one of {COMPARES}")
        check_order(self.extract)
        extract("", self.extract, self.tag)  # checks the tag name
        if not (math.isfinite(self.format) and 0.0 <= self.format <= 1.0):
            raise ValueError(f"format reward weight {self.format!r} must be in [0, 1]")

    @property
    def ref(self) -> str:
        """The canonical reference string (defaults left out)."""
        params = []
        if self.extract != DEFAULT_ORDER:
            params.append("extract=" + ",".join(self.extract))
        if self.tag != "answer":
            params.append(f"tag={self.tag}")
        if self.format:
            params.append(f"format={self.format:g}")
        return f"answer:{self.compare}" + ("?" + "&".join(params) if params else "")

    @property
    def pure(self) -> bool:
        return self.compare in PURE_COMPARES


def is_answer_ref(ref: str) -> bool:
    return ref.startswith("answer:")


def parse_ref(ref: str) -> ScorerSpec:
    """The spec a reference names; ValueError saying what is wrong."""
    m = _REF.fullmatch(ref)
    if not m:
        raise ValueError(f"{ref!r} is not an answer scorer; write answer:<{'|'.join(COMPARES)}>"
                         "[?extract=tags,boxed,last_number&tag=answer&format=0.1]")
    kwargs: dict = {"compare": m.group(1)}
    for part in (m.group(2) or "").split("&") if m.group(2) else []:
        key, _, value = part.partition("=")
        if key == "extract":
            kwargs["extract"] = tuple(v for v in value.split(",") if v)
        elif key == "tag":
            kwargs["tag"] = value
        elif key == "format":
            try:
                kwargs["format"] = float(value)
            except ValueError:
                raise ValueError(f"format={value!r} in {ref!r} is not a number") from None
        else:
            raise ValueError(f"unknown parameter {key!r} in {ref!r}; use extract, tag or format")
    return ScorerSpec(**kwargs)


def spec_from_options(options: dict) -> ScorerSpec:
    """A spec from a task source's options `compare`, `extract` (list or comma string),
    `answer_tag`, `format_reward` (the options are removed from the dict)."""
    extract_opt = options.pop("extract", DEFAULT_ORDER)
    if isinstance(extract_opt, str):
        extract_opt = [e.strip() for e in extract_opt.split(",") if e.strip()]
    return ScorerSpec(compare=str(options.pop("compare", "exact")), extract=tuple(extract_opt),
                      tag=str(options.pop("answer_tag", "answer")), format=float(options.pop("format_reward", 0.0)))


# -- comparisons ------------------------------------------------------------------------------
_INTEGER = re.compile(r"[-+]?\d+")


def _clean(text: str) -> str:
    return text.strip().replace(",", "").rstrip(".").removeprefix("$").strip()


def parse_number(text: str) -> Fraction | None:
    """A number written as an integer, decimal, fraction or with a short exponent; else None.
    Exact (Fraction), bounded: at most 64 characters, exponents of at most 3 digits."""
    s = _clean(text)
    if not s or len(s) > 64 or not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d{1,3})?(/\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def numeric_equal(got: str, want: str, rel: float = 1e-6) -> bool:
    """Equal within `rel` relative, for rounded decimals (0.3333333 for 1/3); a reference written
    as an integer (a count, a sum) is matched exactly, or 1000001 would be right for 1000000."""
    a, b = parse_number(got), parse_number(want)
    if a is None or b is None:
        return False
    if a == b:
        return True
    if _INTEGER.fullmatch(_clean(want)):
        return False
    return abs(a - b) <= Fraction(rel) * max(abs(a), abs(b))


def exact_equal(got: str, want: str) -> bool:
    return got.strip() == want.strip()


def math_equal(got: str, want: str) -> bool:
    """Mathematical equivalence; impure (parses the text into expressions): sandbox only."""
    if exact_equal(got, want) or numeric_equal(got, want):
        return True
    if len(got) > MAX_MATH_CHARS or len(want) > MAX_MATH_CHARS:
        return False
    if too_costly(got):  # by its shape alone: `9**9**9**9` never reaches a parser
        return False
    math_verify = _math_verify()
    if math_verify is None:
        return _sympy_equal(got, want)
    # math-verify reads LaTeX between $...$; bare text would be read as its first number only
    gold, pred = (math_verify.parse(t if "$" in t else f"${t}$") for t in (want, got))
    return bool(gold and pred and math_verify.verify(gold, pred))


_MV: list = []  # [module or None], decided once per process


def _math_verify():
    """math-verify when installed, else None; decided on first use, which is when the scorer is
    loaded and warmed before the sandbox confines its children (they may not read new files,
    and a failed import is retried, not cached, by Python)."""
    if not _MV:
        try:
            import math_verify
        except Exception:  # noqa: BLE001  (ImportError, or a broken install: use sympy)
            math_verify = None
        _MV.append(math_verify)
    return _MV[0]


def _sympy_expr(text: str):
    """The expression sympy's parser makes of `text`, evaluated only when its shape is bounded
    (`protocol.tasks.mathcost`), with no name but `mathcost.NAMES` (no builtins: `pow`, `eval`
    or `__import__` are symbols); Costly or the parser's error otherwise."""
    from sympy.parsing.sympy_parser import eval_expr

    code = sympy_code(text)
    check_code(code)
    return eval_expr(code, {}, namespace())


def _sympy_equal(got: str, want: str) -> bool:
    import sympy

    try:
        a, b = _sympy_expr(got), _sympy_expr(want)
        return bool(sympy.simplify(a - b) == 0)
    except Exception:  # noqa: BLE001  (any parse or algebra failure of worker text: not equal)
        return False


_COMPARE = {"exact": exact_equal, "numeric": numeric_equal, "math": math_equal}


def score_spec(spec: ScorerSpec, completion: str, answer: str) -> float:
    """The reward of `completion` for the reference `answer` under `spec` (in [0, 1])."""
    got = extract(completion, spec.extract, spec.tag)
    correct = got is not None and _COMPARE[spec.compare](got, answer)
    if not spec.format:
        return 1.0 if correct else 0.0
    well_formed = extract(completion, spec.extract[:1], spec.tag) is not None
    return (1.0 - spec.format) * float(correct) + spec.format * float(well_formed)


def answer_scorer(ref: str):
    """The scorer function `(completion, answer, metadata) -> reward` for an `answer:` reference."""
    spec = parse_ref(ref)
    if spec.compare == "math":
        _math_verify()

    def scorer(completion: str, answer: str, metadata: dict) -> float:
        return score_spec(spec, completion, answer)

    return scorer
