"""Exact arithmetic over the text models write: a safe parser (never ``eval``) and a step finder.

One piece serves the CQS proxy (are the ``a op b = c`` steps right?), curate's step check and the
built-in solver's chains. Values are :class:`fractions.Fraction`, so ``0.1 + 0.2 = 0.3`` holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache

MAX_EXPR_CHARS = 200  # longer candidate expressions are not parsed (bounded work per step)
MAX_DIGITS = 30  # results with more digits than this are not checked
MAX_NESTING = 32  # deeper parentheses are not parsed (the parser recurses once per level)

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
NUMBER = _NUM  # a number as written: 12, 1,200, 3.5, .5
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

    def __init__(self, toks: list[str], steps: list[tuple[str, tuple[Fraction, ...]]] | None = None):
        self.t, self.i, self.ops = toks, 0, 0
        self.steps = steps  # when a list: each operation as it is computed, ("+", (a, b, a + b)), ("neg", (v, -v))

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
            a, v = v, v + r if op == "+" else v - r
            self.ops += 1
            if self.steps is not None:
                self.steps.append((op, (a, r, v)))
        return v

    def term(self) -> Fraction:
        v = self.unary()
        while self.peek() in ("*", "/", "of"):
            op = self.take()
            r = self.unary()
            a = v
            if op == "/":
                if r == 0:
                    raise ArithError("division by zero")
                v = v / r
            else:
                v = v * r
            self.ops += 1
            if self.steps is not None:
                self.steps.append(("/" if op == "/" else "*", (a, r, v)))
        return v

    def unary(self) -> Fraction:
        if self.peek() == "-":
            self.take()
            group = self.peek() == "("
            if group:
                self.ops += 1  # "-(28)" negates a result: a step worth checking
            v = self.unary()
            if group and self.steps is not None:
                self.steps.append(("neg", (v, -v)))
            return -v
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


def evaluate(expr: str, steps: list[tuple[str, tuple[Fraction, ...]]] | None = None) -> tuple[Fraction, int]:
    """Value of an arithmetic expression and its number of binary operations. Raises :class:`ArithError`.

    ``steps``: a list that receives each operation in the order it is computed: ``(op, (a, b, result))`` for
    ``+ - * /`` and ``("neg", (v, -v))`` for a negated group (the built-in solver writes one chain line each)."""
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
    p = _Parser(toks, steps)
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
    # (start, end) of the right-hand side as written: in its line from find_steps, in the text from located_steps
    span: tuple[int, int] | None = field(default=None, compare=False)


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
    raw = line.split("=")  # normalize() never adds or removes an "=": the same parts, as written
    offset = 0
    for k in range(1, len(parts)):
        offset += len(raw[k - 1]) + 1
        left, right = parts[k - 1], parts[k]
        rm = _RHS_HEAD.match(right)
        if not rm:
            continue
        after = right[rm.end():]
        claimed_text = rm.group(1).replace(" ", "")
        if re.match(r"\s*[-+*/×÷^]\s*[\d(]", after):
            # the right side is an expression ("= 50 + 35 = 85"): compare values
            seg = _RHS_EXPR.match(right).group(0)
            rhs = seg.strip().rstrip(".,").replace("$", "")
            try:
                claimed, _ = evaluate(rhs)
            except ArithError:
                continue
            claimed_text = rhs
            seg = _RHS_EXPR.match(raw[k]).group(0)
            lead = len(seg) - len(seg.lstrip())
            span = (offset + lead, offset + lead + len(seg.strip().rstrip(".,")))
        else:
            claimed = parse_number(claimed_text)
            om = _RHS_HEAD.match(raw[k])
            span = (offset + om.start(1), offset + om.end(1)) if om else None
        if claimed is None:
            continue
        for cand in _lhs_candidates(left):
            try:
                value, ops = evaluate(cand)
            except ArithError:
                continue
            if ops < 1:
                break
            steps.append(Step(cand.strip(), claimed_text, value, _close(value, claimed, claimed_text), span))
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


# ------------------------------------------------------------------------------------------ repair

def located_steps(text: str, max_steps: int = 200) -> list[Step]:
    """:func:`find_steps` with each step's ``span`` counted in ``text`` (not in its line)."""
    out: list[Step] = []
    pos = 0
    for piece in text.splitlines(keepends=True):
        line = piece.splitlines()[0] if piece.strip("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029") else ""
        if "=" in line:
            for s in _line_steps(line):
                out.append(replace(s, span=(pos + s.span[0], pos + s.span[1])) if s.span else s)
                if len(out) >= max_steps:
                    return out
        pos += len(piece)
    return out


_PLAIN = re.compile(rf"-?(?:{_NUM})%?")


def format_like(value: Fraction, claimed: str) -> str | None:
    """``value`` written the way ``claimed`` is: its decimal places (``24.0``), thousands separators (``1,200``);
    a claim without decimals gives an integer, or up to 2 decimals when the value is not whole. None when
    ``claimed`` is not a plain number (``50 + 35``) or is a percentage (``0.2 * 100 = 25%`` may mean 20 or 20 %)."""
    s = claimed.strip().replace(" ", "").replace("−", "-")
    if not _PLAIN.fullmatch(s) or s.endswith("%"):
        return None
    m = re.search(r"\.(\d+)$", s)
    if m:
        places = len(m.group(1))
    elif value.denominator == 1:
        places = 0
    else:
        return format_number(value, 2) if "," not in s else None
    q = int(abs(value) * 10**places + Fraction(1, 2))  # rounded half away from zero
    whole, frac = divmod(q, 10**places)
    out = (f"{whole:,}" if "," in s else str(whole)) + (f".{frac:0{places}d}" if places else "")
    return ("-" if value < 0 and q else "") + out


def whole_number(old: str) -> re.Pattern:
    """``old`` as a whole number: not inside a longer number (``12`` in ``112`` or ``12.5``)."""
    return re.compile(rf"(?<![\d.,]){re.escape(old)}(?!\d|[.,]\d)")


@dataclass(frozen=True)
class Fix:
    expr: str  # left-hand side of the step
    old: str  # the wrong result as written
    new: str  # the exact value, in the same style
    reused: int  # later occurrences of ``old`` that became ``new`` too


@dataclass(frozen=True)
class Repair:
    text: str
    fixes: tuple[Fix, ...]
    ok: bool  # every step (from ``start`` on) holds in ``text``
    reason: str | None = None  # why not: "expression" (a wrong step's right side is an expression),
    #                            "format" (the value cannot be written in the claim's style), "too_many"

    @property
    def reused(self) -> int:
        return sum(f.reused for f in self.fixes)


def repair_steps(text: str, propagate: bool = True, start: int = 0, max_fixes: int = 20) -> Repair:
    """Replace wrong ``a op b = c`` results with the exact value, first wrong step first, each in its own style.

    With ``propagate``, later occurrences of the wrong number (as a whole number, e.g. a step that reused it, or
    the final answer line) become the new value too, and the next round re-checks every later step on the new
    text: a chain that went on with a wrong value is recomputed from it. Steps whose result starts before
    ``start`` are left as written. Bounded: at most ``max_fixes`` rounds, each one ``find_steps`` pass.
    """
    fixes: list[Fix] = []
    while True:
        bad = next((s for s in located_steps(text) if not s.ok and s.span and s.span[0] >= start), None)
        if bad is None:
            return Repair(text, tuple(fixes), True)
        if len(fixes) >= max_fixes:
            return Repair(text, tuple(fixes), False, "too_many")
        a, b = bad.span  # type: ignore[misc]
        old = text[a:b]
        new = format_like(bad.value, old)
        if new is None:
            return Repair(text, tuple(fixes), False, "expression" if _PLAIN.fullmatch(old.replace(" ", "")) is None
                          else "format")
        if not _close(bad.value, parse_number(new) or Fraction(0), new) or new == old:
            return Repair(text, tuple(fixes), False, "format")
        tail, n = whole_number(old).subn(new, text[b:]) if propagate else (text[b:], 0)
        text = text[:a] + new + tail
        fixes.append(Fix(bad.expr, old, new, n))
