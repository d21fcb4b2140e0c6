"""What a math answer may cost to compare: shapes refused before any parser evaluates them.

`answer:math` parses worker text into sympy expressions (`protocol.tasks.answers`). Parsing
evaluates: `9**9**9**9` asks for a number of 10**369693100 digits, `(10^10)!` and
`binomial(10**9, 10**8)` for hundreds of millions, and `(x+1)^1000` takes seconds to simplify.
Big-integer arithmetic runs in C, where no signal interrupts it, so only the sandbox's wall
clock (`protocol.sandbox.Limits.item_timeout_s`) ended it, with the child's death, and a group of
such completions held one of the sandbox's slots for the whole batch limit.

`too_costly(text)` decides by the answer's shape alone — the same answer is refused by the
coordinator, the verifier and the audit alike, whatever their speed (a time limit would make
the reward depend on the machine). Two layers:

- the text (whatever the backend, LaTeX included): no power of a power (`9^9^9`, `9^{9^9}`,
  `2^9!`); no factorial of an expression or of a number above `MAX_FACTORIAL` (`(9!)!`, `10^6!`);
  `binom`, `choose`, `gamma`, `factorial`, sums, products, limits and integrals only with
  numbers up to `MAX_FACTORIAL` and no power at all;
- the expression sympy's parser would build (`sympy_code`: its transformations, which only
  rewrite tokens, then `ast.parse`, which evaluates nothing), bounded node by node: exponents of
  at most `MAX_EXPONENT`, numbers of at most `MAX_DIGITS` digits, polynomials of degree at most
  `MAX_DEGREE` and at most `MAX_TERMS` terms once expanded; with functions among its atoms
  (sympy's simplify then tries identities, the costliest of its work) at most
  `MAX_FUNCTION_CALLS` of them, `MAX_FUNCTION_TERMS` terms and degree `MAX_FUNCTION_DEGREE`;
  only arithmetic, the names in
  `NAMES` and sympy's own constructors, never an attribute, a comprehension or a lambda.

Honest answers are far inside the limits (`2^{100}`, `(x+1)^{10}`, `5!`, `\\frac{\\sqrt{3}}{2}`).
"""

from __future__ import annotations

import ast
import math
import re

MAX_EXPONENT = 10_000   # |an exponent| (2^{10000} has 3011 digits)
MAX_DIGITS = 20_000     # digits of a number the expression may build
MAX_DEGREE = 256        # degree of a polynomial it may build
MAX_TERMS = 200         # terms of a polynomial once expanded ((x+1)^{100}: 101; (x+y+z)^{18}: 190)
MAX_FUNCTION_TERMS = 8   # ... when its atoms include functions (sin x, e^x): simplify tries identities
MAX_FUNCTION_DEGREE = 12  # ... and its degree in them
MAX_FUNCTION_CALLS = 6   # function atoms in the whole answer ((sinh x + cosh x + tanh x)^2: 3)
MAX_FACTORIAL = 999     # n! only for a number n up to this (999! has 2565 digits)

# sympy names an answer may use; every other name is a symbol or an undefined function
FUNCTIONS = ("sqrt", "root", "exp", "log", "ln", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan",
             "acot", "sinh", "cosh", "tanh", "Abs")
CONSTANTS = ("pi", "E", "I", "oo")
CONSTRUCTORS = ("Symbol", "Integer", "Float", "Rational", "Function", "factorial")  # the parser's own output
NAMES = FUNCTIONS + CONSTANTS + CONSTRUCTORS

_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_HEAVY = re.compile(r"binom|choose|gamma|factorial|fib|catalan|bell|prod|sum|lim|int(?![a-z])|expand|!(?!=)",
                    re.IGNORECASE)


class Costly(ValueError):
    """An answer whose comparison could cost unbounded time or memory (scored as wrong)."""


def too_costly(text: str) -> bool:
    """Whether comparing `text` as math could cost more than a bounded little (see the module
    docstring). Text sympy's parser cannot read is judged by the text rules alone."""
    if _costly_text(text):
        return True
    try:
        code = sympy_code(text)
    except Exception:  # noqa: BLE001  (the tokenizer's errors: not sympy's to parse; the text rules hold)
        return False
    try:
        check_code(code)
    except Exception:  # noqa: BLE001  (Costly, or a bound that overflowed: refused, never evaluated)
        return True
    return False


# -- the text -----------------------------------------------------------------------------------
def _costly_text(text: str) -> bool:
    s = _SPACE.sub("", text).replace("**", "^")
    heavy = _HEAVY.search(s)
    if heavy and ("^" in s or any(_value(n) > MAX_FACTORIAL for n in _NUMBER.findall(s))):
        return True
    for m in re.finditer(r"!(?!=)", s):
        before = s[: m.start()]
        if not before or before[-1] in ")]}!":
            return True
    for m in re.finditer(r"\^", s):
        operand, end = _operand(s, m.end())
        if "^" in operand or re.search(r"!(?!=)", operand) or (end < len(s) and s[end] in "^!"):
            return True  # a power of a power, or a factorial in an exponent
    return False


def _operand(s: str, p: int) -> tuple[str, int]:
    """The exponent starting at s[p] (a bracketed group, a LaTeX command with its groups, or an
    atom) and the index just after it."""
    while p < len(s) and s[p] in "+-":
        p += 1
    if p >= len(s):
        return "", p
    if s[p] in "({[":
        depth, q = 0, p
        while q < len(s):
            if s[q] in "({[":
                depth += 1
            elif s[q] in ")}]":
                depth -= 1
                if depth == 0:
                    return s[p + 1: q], q + 1
            q += 1
        return s[p + 1:], len(s)
    q = p
    if s[q] == "\\":
        q += 1
        while q < len(s) and s[q].isalpha():
            q += 1
        while q < len(s) and s[q] == "{":
            _, q = _operand(s, q)
        return s[p:q], q
    if s[q].isdigit() or s[q] == ".":  # a number: 2^10x is 2^{10} x
        while q < len(s) and (s[q].isdigit() or s[q] == "."):
            q += 1
    else:  # a name
        while q < len(s) and (s[q].isalnum() or s[q] == "_"):
            q += 1
        q = max(q, p + 1)
    return s[p:q], q


def _value(number: str) -> float:
    try:
        return float(number)
    except (ValueError, OverflowError):
        return math.inf


# -- the expression -----------------------------------------------------------------------------
_NS: list[dict] = []


def namespace() -> dict:
    """The names sympy's parser may resolve (`NAMES`), and no builtins."""
    if not _NS:
        import sympy

        ns = {name: getattr(sympy, name) for name in NAMES if name != "ln"}
        ns["ln"] = sympy.log
        ns["__builtins__"] = {}
        _NS.append(ns)
    return dict(_NS[0])


def sympy_code(text: str) -> str:
    """The Python expression sympy's parser makes of `text` (LaTeX fractions, roots and
    operators rewritten first), before anything is evaluated."""
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        standard_transformations,
        stringify_expr,
    )

    s = text.strip().strip("$")
    s = re.sub(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
    s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi").replace("{", "(").replace("}", ")")
    s = s.replace("\\left", "").replace("\\right", "").replace("\\", "")
    return stringify_expr(s, {}, namespace(),
                          standard_transformations + (implicit_multiplication_application, convert_xor))


class _Bound:
    """Upper bounds on what a node builds: digits of its numbers (`h`), its polynomial degree
    and expanded terms; for a number, |value| (`v`) and 1/|value| (`iv`), else None."""

    __slots__ = ("calls", "deg", "h", "iv", "terms", "v")

    def __init__(self, h: float = 0.0, deg: float = 0.0, terms: float = 1.0, v: float | None = None,
                 iv: float | None = None, calls: int = 0):
        self.h, self.deg, self.terms, self.v, self.iv, self.calls = h, deg, terms, v, iv, calls

    @property
    def number(self) -> bool:
        return self.v is not None


def _atom(h: float = 0.0, calls: int = 0) -> _Bound:
    return _Bound(h=h, deg=1.0, calls=calls)


def _power(a: float, n: float) -> float:
    try:
        return a ** n
    except OverflowError:
        return math.inf


def _mul(a: float, b: float) -> float:
    try:
        return a * b
    except OverflowError:
        return math.inf


def check_code(code: str) -> None:
    """Costly when the expression `code` (from `sympy_code`) could build more than the limits allow."""
    try:
        tree = ast.parse(code, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise Costly("not an expression") from None
    try:
        b = _bound(tree.body)
    except RecursionError:
        raise Costly("nested too deeply") from None
    _limit(b)


def _limit(b: _Bound) -> _Bound:
    if not (b.h <= MAX_DIGITS and b.deg <= (MAX_FUNCTION_DEGREE if b.calls else MAX_DEGREE)
            and b.terms <= (MAX_FUNCTION_TERMS if b.calls else MAX_TERMS) and b.calls <= MAX_FUNCTION_CALLS):
        raise Costly(f"builds {b.h:.0f} digits, degree {b.deg:.0f}, {b.terms:.0f} terms, {b.calls} functions")
    return b


def _bound(node: ast.AST) -> _Bound:
    return _limit(_node(node))


def _node(node: ast.AST) -> _Bound:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return _integer(str(node.value))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return _atom(1.0)
        if node.id in FUNCTIONS:
            return _atom(calls=1)
        raise Costly(f"name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _bound(node.operand)
    if isinstance(node, ast.BinOp):
        return _binop(node)
    if isinstance(node, ast.Call) and not node.keywords:
        return _call(node)
    raise Costly(f"{type(node).__name__} in a math answer")


def _integer(digits: str) -> _Bound:
    digits = digits.strip().lstrip("+-")
    if not digits.isdigit():
        raise Costly("not an integer")
    v = _value(digits)
    return _Bound(h=float(len(digits.lstrip("0")) or 1), v=v, iv=1.0 if v else math.inf)


def _call(node: ast.Call) -> _Bound:
    f = node.func
    if isinstance(f, ast.Call) and isinstance(f.func, ast.Name) and f.func.id == "Function":
        calls = sum(_bound(a).calls for a in node.args)  # an undefined function of the answer's: f(x)
        return _limit(_atom(calls=calls + 1))
    if not isinstance(f, ast.Name):
        raise Costly("a call of something other than a name")
    args = node.args
    if f.id in ("Symbol", "Function"):
        if len(args) != 1 or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
            raise Costly(f"{f.id} of something other than a name")
        return _atom()
    if f.id == "Integer":
        if len(args) != 1:
            raise Costly("Integer of several things")
        a = args[0]
        if isinstance(a, ast.Constant) and isinstance(a.value, (int, str)) and not isinstance(a.value, bool):
            return _integer(str(a.value))
        return _bound(a)  # Integer(Integer(0)): the parser's repeated decimals
    if f.id == "Float":
        if len(args) != 1 or not isinstance(args[0], ast.Constant) or not isinstance(args[0].value, str):
            raise Costly("Float of something other than a literal")
        return _Bound(h=1.0)  # fixed precision: its size costs nothing, and it is no exact exponent
    if f.id == "Rational":
        if len(args) != 2:
            raise Costly("Rational of other than two numbers")
        p, q = (_bound(a) for a in args)
        if not (p.number and q.number):
            raise Costly("Rational of other than numbers")
        return _Bound(h=p.h + q.h, v=_mul(p.v, q.iv), iv=_mul(q.v, p.iv))
    if f.id == "factorial":
        (n,) = args if len(args) == 1 else (None,)
        if n is None:
            raise Costly("factorial of several things")
        b = _bound(n)
        if not b.number:
            return _atom(calls=b.calls + 1)  # n!, unevaluated
        if b.v > MAX_FACTORIAL:
            raise Costly("factorial of a large number")
        k = max(b.v, 1.0)
        return _Bound(h=k * math.log10(k) + 1, v=_power(k, k), iv=1.0)
    if f.id in FUNCTIONS:
        bs = [_bound(a) for a in args]
        return _limit(_atom(max((b.h for b in bs), default=0.0), calls=sum(b.calls for b in bs) + 1))
    raise Costly(f"a call of {f.id!r}")


def _binop(node: ast.BinOp) -> _Bound:
    a, op = _bound(node.left), node.op
    if isinstance(op, ast.Pow):
        return _pow(a, _bound(node.right))
    b = _bound(node.right)
    both = a.number and b.number
    calls = a.calls + b.calls
    if isinstance(op, (ast.Add, ast.Sub)):
        return _Bound(h=max(a.h, b.h) + 1, deg=max(a.deg, b.deg), terms=a.terms + b.terms,
                      v=a.v + b.v if both else None, iv=math.inf if both else None, calls=calls)
    if isinstance(op, ast.Mult):
        return _Bound(h=a.h + b.h, deg=a.deg + b.deg, terms=_mul(a.terms, b.terms),
                      v=_mul(a.v, b.v) if both else None, iv=_mul(a.iv, b.iv) if both else None, calls=calls)
    if isinstance(op, ast.Div):
        return _Bound(h=a.h + b.h, deg=a.deg + b.deg, terms=_mul(a.terms, b.terms),
                      v=_mul(a.v, b.iv) if both else None, iv=_mul(a.iv, b.v) if both else None, calls=calls)
    raise Costly(f"operator {type(op).__name__}")


def _pow(base: _Bound, exp: _Bound) -> _Bound:
    if not exp.number:
        return _atom(base.h, calls=base.calls + exp.calls + 1)  # 2^x, x^{1.5}: unexpanded, an atom
    n = exp.v
    if not n <= MAX_EXPONENT:
        raise Costly("a large exponent")
    k = math.ceil(n) if n >= 1 else 1
    if base.terms <= 1:
        terms = 1.0
    elif k > MAX_TERMS:  # at least k + 1 terms
        terms = math.inf
    else:  # the terms of a t-term sum to the k-th power: C(k + t - 1, t - 1)
        terms = float(math.comb(k + int(base.terms) - 1, int(base.terms) - 1))
    v = iv = None
    if base.number:
        v, iv = _power(base.v, n), _power(base.iv, n)
    if base.number and 1.0 <= base.v < math.inf:  # an integer's power: n log10(base) digits
        h = n * max(math.log10(base.v), base.h if base.iv > 1 else 0.0) + 1
    else:
        h = base.h * max(n, 1.0) + 1
    return _Bound(h=h, deg=base.deg * k, terms=terms, v=v, iv=iv, calls=base.calls)
