"""Answer extraction and the `answer:` scorers on hand-written right, wrong, malformed and hostile text.

The math comparison parses worker text into expressions, so it is also run in a real sandbox
(`protocol.sandbox.Sandbox`) on hostile text: the payload does not run and scores 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from protocol.errors import MessageError
from protocol.sandbox import Limits, Sandbox, ScoreItem
from protocol.tasks import describe, get_source, load_scorer, score
from protocol.tasks.answers import ScorerSpec, math_equal, numeric_equal, parse_number, parse_ref, _sympy_equal
from protocol.tasks.extract import MAX_ANSWER_CHARS, MAX_SCAN_CHARS, boxed, extract, last_line, last_number, tags


# -- extractors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("I think <answer>42</answer>", "42"),
    ("<answer>1</answer> no wait <answer> 7 </answer>", "7"),           # the last pair, stripped
    ("<answer>unclosed", None),
    ("</answer>42<answer>", None),                                      # closing before opening
    ("<answer></answer>", None),                                        # empty
    ("<ANSWER>3</ANSWER>", None),                                       # tags are case-sensitive
])
def test_tags_take_the_last_complete_pair(text, want):
    assert tags(text) == want


def test_tags_with_another_name_and_a_bad_name():
    assert tags("<final>x=2</final>", "final") == "x=2"
    with pytest.raises(ValueError, match="plain name"):
        tags("x", "a|b")


@pytest.mark.parametrize("text,want", [
    (r"so \boxed{12}", "12"),
    (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),            # nested braces, the last box
    (r"\boxed{unbalanced", None),
    (r"no box", None),
])
def test_boxed(text, want):
    assert boxed(text) == want


@pytest.mark.parametrize("text,want", [
    ("the answer is 1,234 apples", "1234"),
    ("-5 then 3.25", "3.25"),
    ("ratio 2/3.", "2/3"),
    ("tiny 1e-3", "1e-3"),
    ("no digits here", None),
])
def test_last_number(text, want):
    assert last_number(text) == want


def test_last_line_and_order():
    assert last_line("work\n\n  result: 5  \n\n") == "result: 5"
    assert extract("<answer>9</answer> 10", ("tags", "last_number")) == "9"
    assert extract("just 10", ("tags", "last_number")) == "10"
    assert extract("just text", ("tags", "boxed")) is None
    with pytest.raises(ValueError, match="unknown answer extractor"):
        extract("x", ("tags", "regex"))


def test_hostile_text_is_bounded_and_linear():
    huge = "<answer>" * 200_000 + "1" * 100_000          # 1.7 MB of openings and digits, no closing tag
    t0 = time.monotonic()
    assert tags(huge) is None
    assert boxed("\\boxed{" * 300_000) is None
    assert last_number("9" * 1_000_000) is None          # a 16k-digit number is too long to be an answer
    assert extract(huge, ("tags", "boxed", "last_number", "last_line", "all")) is None
    assert time.monotonic() - t0 < 5.0                   # generous: quadratic scans take minutes here
    # an answer is only looked for in the tail, and long finds count as nothing
    assert tags("<answer>1</answer>" + "x" * MAX_SCAN_CHARS) is None
    assert tags("<answer>" + "7" * (MAX_ANSWER_CHARS + 1) + "</answer>") is None


# -- comparisons --------------------------------------------------------------------------------
@pytest.mark.parametrize("got,want,equal", [
    ("42", "42", True), ("42.0", "42", True), ("1,000", "1000", True), ("2/4", "0.5", True),
    ("-3", "3", False), ("0.333", "1/3", False), ("0.3333333", "1/3", True), ("1e2", "100", True), ("$5", "5", True),
    ("abc", "5", False), ("1/0", "0", False), ("", "0", False),
])
def test_numeric_equal(got, want, equal):
    assert numeric_equal(got, want) is equal


def test_numbers_that_would_blow_up_are_not_numbers():
    assert parse_number("1e999999999") is None            # Fraction would build a billion-digit integer
    assert parse_number("9" * 65) is None
    assert parse_number("1e999") is not None               # three exponent digits are allowed


@pytest.mark.parametrize("got,want,equal", [
    ("0.5", r"\frac{1}{2}", True), ("2(x+1)", "2x+2", True), ("x^2", "x*x", True),
    ("sqrt(2)/2", "1/sqrt(2)", True), ("3", "4", False), ("x+1", "x+2", False), ("))((", "1", False),
])
def test_math_equal_with_math_verify_or_sympy(got, want, equal):
    assert math_equal(got, want) is equal
    assert _sympy_equal(got, want) is equal or got == "0.5"  # the fallback reads plain text, not LaTeX


def test_answer_refs_parse_and_print_canonically():
    spec = parse_ref("answer:numeric?extract=tags,last_number&format=0.1")
    assert spec == ScorerSpec("numeric", ("tags", "last_number"), "answer", 0.1)
    assert parse_ref(spec.ref) == spec and spec.pure
    assert parse_ref("answer:math").pure is False and describe("answer:math") is False
    for bad in ("answer:fuzzy", "answer:exact?extract=regex", "answer:exact?format=2", "answer:exact?colour=red"):
        with pytest.raises(MessageError):
            describe(bad)


@pytest.mark.parametrize("ref,text,want", [
    ("answer:exact", "<answer>paris</answer>", 1.0),
    ("answer:exact", "<answer>Paris</answer>", 0.0),
    ("answer:numeric", "so the total is 42.", 1.0),          # default order: tags, boxed, last number
    ("answer:numeric", "<answer>41</answer> or 42", 0.0),     # the tag wins over a later number
    ("answer:numeric?extract=tags", "42", 0.0),              # no tags: nothing extracted
    ("answer:numeric?extract=tags&format=0.2", "<answer>41</answer>", 0.2),   # well formed, wrong
    ("answer:numeric?extract=tags,last_number&format=0.2", "42", 0.8),       # right, not in tags
    ("answer:numeric?extract=tags&format=0.2", "<answer>42</answer>", 1.0),
    ("answer:math", r"\boxed{\frac{84}{2}}", 1.0),
])
def test_answer_scorers(ref, text, want):
    assert score(ref, "42" if ref != "answer:exact" else "paris", text) == pytest.approx(want)


def test_a_jsonl_source_names_its_scorer_from_its_options(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("".join(f'{{"prompt": "q{i}", "answer": {i}}}\n' for i in range(10)))
    src = get_source("jsonl", options={"path": str(f), "compare": "numeric", "extract": "tags,last_number",
                                       "format_reward": 0.1})
    assert src.kind == "answer:numeric?extract=tags,last_number&format=0.1"
    fn, pure = load_scorer(src.kind)
    assert pure and fn("<answer>3</answer>", "3", {}) == 1.0


# -- the math scorer in a real sandbox, on hostile text ------------------------------------------
@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(Limits(item_timeout_s=10.0, batch_timeout_s=60.0, spares=1, max_children=2))
    try:
        sb.start(warm=("answer:math",))
        yield sb
    finally:
        sb.close()


def test_math_scoring_in_the_sandbox_runs_no_payload(sandbox, tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
    items = [ScoreItem(r"\boxed{\frac{1}{2}}", "0.5"), ScoreItem("<answer>0.75</answer>", "3/4"),
             ScoreItem(f"<answer>{payload}</answer>", "1"), ScoreItem(f"\\boxed{{{payload}}}", "1"),
             ScoreItem("<answer>" + "(" * 150 + "</answer>", "1"), ScoreItem("wrong: 7", "8")]
    got = [r.reward for r in sandbox.score("answer:math", items)]
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert not Path(marker).exists()


# -- math answers that cost unbounded time -------------------------------------------------------
# Each was parsed and evaluated by sympy (`9**9**9**9` builds a number of 10**369693100 digits;
# `(x+1)^1000` takes seconds to simplify): a completion held a scorer slot until the item's
# wall clock killed its process, and a group of them held one of the 8 slots for the whole
# 20 s batch limit. They are now refused by their shape, before any parser sees them.
COSTLY = ["9**9**9**9", "9^9^9^9", "9^(9^9)", r"9^{9^{9}}", "10^(10^10)", "(10^10)!", "(9!)!", "2^9!",
          "9**(9*9*9*9*9*9*9*9*9)", "factorial(10**6)", "gamma(10**7)", "binomial(10**9, 10**8)",
          "pow(9, pow(9, 9))", "(x+1)^1000", "(x+y+z)^40", r"\binom{1000000000}{500000000}", "100000!",
          "x**(10**9)", "expand((x+1)**300)", "().__class__.__base__", "[0 for a in (1,)*10**9]"]


@pytest.fixture(scope="module")
def tight_sandbox():
    sb = Sandbox(Limits(item_timeout_s=2.0, batch_timeout_s=8.0, spares=1, max_children=2))
    try:
        sb.start(warm=("answer:math",))
        yield sb
    finally:
        sb.close()


def test_costly_math_answers_are_scored_wrong_at_once_in_the_sandbox(tight_sandbox):
    items = [ScoreItem(f"<answer>{a}</answer>", "1") for a in COSTLY[:8]]
    got = tight_sandbox.score("answer:math", items)
    assert [r.reward for r in got] == [0.0] * len(items)
    # the scorer's own 0, not a process killed at its item limit (2 s): each answered in time
    assert [r.reason for r in got] == [""] * len(items)


@pytest.mark.parametrize("got", COSTLY)
def test_costly_math_answers_are_refused_before_parsing(got, monkeypatch):
    """Refused by their shape (`mathcost.too_costly`): `math_equal` never hands them to a parser
    (this was a timed assert, < 0.5 s, which a loaded machine failed at 0.99 s; what the
    sandbox's time limits make of them is the test above). `_sympy_equal` on its own evaluates
    only bounded code (`gamma(10**7)` reads as the product of a symbol and an integer)."""
    import sympy.parsing.sympy_parser as parser

    from protocol.tasks.mathcost import too_costly

    evaluated: list[str] = []
    real = parser.eval_expr
    monkeypatch.setattr(parser, "eval_expr", lambda code, *a, **k: evaluated.append(code) or real(code, *a, **k))
    assert too_costly(got)
    assert math_equal(got, "1") is False
    assert evaluated == []
    assert _sympy_equal(got, "1") is False


@pytest.mark.parametrize("got,want", [
    ("2^{10}", "1024"), ("2**100", "1267650600228229401496703205376"), ("10^{18}", "1000000000000000000"),
    ("(x+1)^2", "x^2+2x+1"), ("(x+1)^{10}", "(1+x)^10"), ("x^2 y^3", "y^3 x^2"), ("5!", "120"), ("n!/n", "(n-1)!"),
    (r"\frac{x}{2}", "x/2"), (r"\sqrt{12}", "2\\sqrt{3}"), ("2^{-3}", "1/8"), ("3^{1/2}", "sqrt(3)"), ("sin(pi/6)", "1/2"),
    ("e^{i pi}", "e^{i pi}"), ("(x-1)(x+1)", "x^2-1"), ("0.[3]", "1/3"), ("2x^2 y^3", "2 y^3 x^2"),
])
def test_honest_math_answers_still_score_right(got, want):
    assert math_equal(got, want) is True
