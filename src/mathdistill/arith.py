"""Exact arithmetic over the text models write: a safe parser (never ``eval``) and a step finder.

One piece serves the CQS proxy (are the ``a op b = c`` steps right?), curate's step check and the
built-in solver's chains. Values are :class:`fractions.Fraction`, so ``0.1 + 0.2 = 0.3`` holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

MAX_EXPR_CHARS = 200  # longer candidate expressions are not parsed (bounded work per step)
MAX_DIGITS = 30  # results with more digits than this are not checked
MAX_NESTING = 32  # deeper parentheses are not parsed (the parser recurses once per level)

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_TOKEN = re.compile(rf"\s*(?:(?P<num>{_NUM})|(?P<op>\*\*|[-+*/×÷·−–()%^])|(?P<of>of\b))")
# "x" multiplies only between numbers ("22 x 11", "3x4"); "3x + 2" is algebra
_TIMES_X = re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])")
_PCT_OF = re.compile(r"%\s*of\s+")


def normalize(expr: str) -> str:
    return _PCT_OF.sub("% × ", _TIMES_X.sub(" × ", expr))


class ArithError(ValueError):
    pass


def _tokenize(expr: str) -> list[str]:
    toks: list[str] = []
    pos = 0
    expr = normalize(expr).rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ArithError(f"unexpected {expr[pos:pos + 10]!r}")
        pos = m.end()
        if m.group("num"):
            toks.append(m.group("num").replace(",", ""))
        elif m.group("of"):
            toks.append("of")
        else:
            op = m.group("op")
            toks.append({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"}.get(op, op))
    return toks


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ;
    unary := '-' unary | '+' unary | power ; power := atom ('^' unary)? ; atom := num '%'? ('of')? | '(' expr ')'"""

    def __init__(self, toks: list[str]):
        self.t, self.i, self.ops = toks, 0, 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.t[self.i]
        self.i += 1
        return tok

    def expr(self) -> Fraction:
        v = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            r = self.term()
            v = v + r if op == "+" else v - r
            self.ops += 1
        return v

    def term(self) -> Fraction:
        v = self.unary()
        while self.peek() in ("*", "/", "of"):
            op = self.take()
            r = self.unary()
            if op == "/":
                if r == 0:
                    raise ArithError("division by zero")
                v = v / r
            else:
                v = v * r
            self.ops += 1
        return v

    def unary(self) -> Fraction:
        if self.peek() == "-":
            self.take()
            if self.peek() == "(":
                self.ops += 1  # "-(28)" negates a result: a step worth checking
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> Fraction:
        v = self.atom()
        if self.peek() in ("^", "**"):
            self.take()
            e = self.unary()
            if e.denominator != 1 or abs(e) > 64:
                raise ArithError("exponent too large or not whole")
            v = v ** int(e)
            self.ops += 1
        return v

    def atom(self) -> Fraction:
        tok = self.peek()
        if tok is None:
            raise ArithError("unexpected end")
        if tok == "(":
            self.take()
            v = self.expr()
            if self.peek() != ")":
                raise ArithError("unbalanced parenthesis")
            self.take()
            return v
        if tok[0].isdigit() or tok[0] == ".":
            self.take()
            v = Fraction(int(tok)) if tok.isdigit() else Fraction(tok)  # the int path is 3x faster
            if self.peek() == "%":
                self.take()
                v = v / 100
            return v
        raise ArithError(f"unexpected {tok!r}")


def evaluate(expr: str) -> tuple[Fraction, int]:
    """Value of an arithmetic expression and its number of binary operations. Raises :class:`ArithError`."""
    if len(expr) > MAX_EXPR_CHARS:
        raise ArithError("expression too long")
    toks = _tokenize(expr)
    if not toks:
        raise ArithError("empty")
    depth = 0
    for t in toks:
        depth += (t == "(") - (t == ")")
        if depth > MAX_NESTING:
            raise ArithError("parentheses nested too deeply")
    p = _Parser(toks)
    v = p.expr()
    if p.i != len(toks):
        raise ArithError(f"trailing {toks[p.i]!r}")
    if len(str(abs(v.numerator))) > MAX_DIGITS or len(str(v.denominator)) > MAX_DIGITS:
        raise ArithError("result too large")
    return v, p.ops


def parse_number(text: str) -> Fraction | None:
    """``"1,234.50"``, ``"-3"``, ``"$12"``, ``"25%"`` (-> 1/4), ``"3/4"`` -> Fraction; None when not a number."""
    s = text.strip().replace("−", "-").lstrip("$€£¥")
    s = s.rstrip(".")
    try:
        v, ops = evaluate(s)
    except ArithError:
        return None
    return v if ops <= 1 and re.fullmatch(rf"-?\s*(?:{_NUM})\s*(?:/\s*(?:{_NUM}))?\s*%?", s) else None


def format_number(v: Fraction, decimals: int = 2) -> str:
    """Integer when whole, else a decimal with at most ``decimals`` places (trailing zeros trimmed)."""
    if v.denominator == 1:
        return str(v.numerator)
    s = f"{float(v):.{decimals}f}".rstrip("0").rstrip(".")
    return s


@dataclass(frozen=True)
class Step:
    expr: str  # left-hand side as written
    claimed: str  # right-hand side as written
    value: Fraction  # exact value of the left-hand side
    ok: bool


_LHS_TAIL = re.compile(r"[\d\s.,+\-−–*/×÷·()%^$]*$")
_RHS_EXPR = re.compile(r"[\d\s.,+\-−–*/×÷·()%^$]*")
_RHS_HEAD = re.compile(r"\s*\$?\s*(-?\s*(?:" + _NUM + r")(?:\s*%)?)")


def _lhs_candidates(left: str):
    m = _LHS_TAIL.search(left)
    tail = m.group(0) if m else ""
    # a letter glued to the tail ("3x") means algebra, not arithmetic
    start = len(left) - len(tail)
    if start > 0 and left[start - 1].isalnum() and tail[:1] not in (" ", "(", ""):
        return
    tail = tail.replace("$", "")
    toks = tail.split()
    # try the longest tail first, dropping leading pieces until it parses
    for i in range(len(toks)):
        cand = " ".join(toks[i:])
        if cand and not cand.lstrip().startswith((")", "*", "/", "×", "÷", "%")):
            yield cand


def find_steps(text: str, max_steps: int = 200) -> list[Step]:
    """Every ``<arithmetic expression> = <number>`` in ``text`` whose left side has an operator.

    Left sides with variables (``3x + 2 = 11``), dates or ratios are skipped, not counted as wrong.
    A claimed decimal is right when it equals the exact value rounded to its written places.
    """
    steps: list[Step] = []
    for line in text.splitlines():
        if "=" not in line:
            continue
        steps.extend(_line_steps(line))
        if len(steps) >= max_steps:
            return steps[:max_steps]
    return steps


@lru_cache(maxsize=1 << 16)
def _line_steps(line: str) -> tuple[Step, ...]:
    """The steps of one line; cached, since samples of one problem repeat their lines (curate checks 100k chains)."""
    steps: list[Step] = []
    parts = normalize(line).split("=")
    for k in range(1, len(parts)):
        left, right = parts[k - 1], parts[k]
        rm = _RHS_HEAD.match(right)
        if not rm:
            continue
        after = right[rm.end():]
        claimed_text = rm.group(1).replace(" ", "")
        if re.match(r"\s*[-+*/×÷^]\s*[\d(]", after):
            # the right side is an expression ("= 50 + 35 = 85"): compare values
            rhs = _RHS_EXPR.match(right).group(0).strip().rstrip(".,").replace("$", "")
            try:
                claimed, _ = evaluate(rhs)
            except ArithError:
                continue
            claimed_text = rhs
        else:
            claimed = parse_number(claimed_text)
        if claimed is None:
            continue
        for cand in _lhs_candidates(left):
            try:
                value, ops = evaluate(cand)
            except ArithError:
                continue
            if ops < 1:
                break
            steps.append(Step(cand.strip(), claimed_text, value, _close(value, claimed, claimed_text)))
            break
    return tuple(steps)


def _close(value: Fraction, claimed: Fraction, claimed_text: str) -> bool:
    if value == claimed:
        return True
    m = re.search(r"\.(\d+)", claimed_text)
    if not m or "%" in claimed_text:
        return False
    places = len(m.group(1))
    return abs(value - claimed) <= Fraction(1, 2 * 10**places)
