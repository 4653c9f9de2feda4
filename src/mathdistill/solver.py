"""Built-in step-by-step solver: reference chains for the reasoning-gym arithmetic families,
which ship answers only. Values come from :func:`mathdistill.arith.evaluate` (exact fractions, no ``eval``),
which reports each operation as it computes it; each becomes one chain line.

Chains are short on purpose (ES rewards few tokens) and end with ``#### <answer>`` like GSM-Symbolic's.
"""

from __future__ import annotations

import re
from fractions import Fraction

from .arith import ArithError, evaluate, format_number


class SolveError(ValueError):
    pass


def _fmt(v: Fraction, paren_negative: bool = True) -> str:
    s = format_number(v, 4)
    return f"({s})" if paren_negative and v < 0 else s


def _evaluate(expr: str, steps: list | None = None) -> Fraction:
    try:
        return evaluate(expr, steps)[0]
    except ArithError as e:
        raise SolveError(f"cannot evaluate {expr.strip()[:60]!r}: {e}") from None


def solve_expression(expr: str) -> tuple[str, Fraction]:
    """``"98 + 93 - 77"`` -> (``"98 + 93 = 191\n191 - 77 = 114\n#### 114"``, 114). :class:`SolveError` when
    the expression is not arithmetic (or divides by zero)."""
    steps: list = []
    v = _evaluate(expr, steps)
    lines = []
    for op, vals in steps:
        if op == "neg":
            lines.append(f"-({format_number(vals[0], 4)}) = {format_number(vals[1], 4)}")
        else:
            a, b, r = vals
            lines.append(f"{_fmt(a)} {op} {_fmt(b)} = {format_number(r, 4)}")
    if not lines:
        lines.append(f"{expr.strip()} = {format_number(v, 4)}")
    lines.append(f"#### {format_number(v, 4)}")
    return "\n".join(lines), v


_PROBES = (Fraction(0), Fraction(1), Fraction(2), Fraction(-3), Fraction(1, 7))  # where a linear side is checked


def _linear(side: str, var: str) -> tuple[Fraction, Fraction]:
    """(coefficient of ``var``, constant) of a linear expression: evaluated with ``var`` set to a few values,
    which must lie on one line (``x ** 2`` or ``1/x`` is :class:`SolveError`)."""
    name = re.compile(rf"(?<![\w.]){re.escape(var)}(?!\w)")
    values = [_evaluate(name.sub(f"({x.numerator}/{x.denominator})", side)) for x in _PROBES]
    b = values[0]
    a = values[1] - b
    if any(v != a * x + b for x, v in zip(_PROBES, values)):
        raise SolveError(f"not linear in {var}: {side.strip()[:60]!r}")
    return a, b


def solve_linear(equation: str, var: str) -> tuple[str, Fraction]:
    """``"56 - 98*e = -1218"`` -> chain isolating ``e`` step by step, and its value."""
    if equation.count("=") != 1:
        raise SolveError("expected one '='")
    left, right = equation.split("=")
    la, lb = _linear(left, var)
    ra, rb = _linear(right, var)
    a, b, c = la - ra, lb, rb  # a*var + b = c  (variable terms moved left, constants kept apart)
    if a == 0:
        raise SolveError("no unique solution")
    lines = [equation.strip()]
    rhs = c - b
    if b != 0:
        move = f"{_fmt(c, False)} - {_fmt(b)}" if b > 0 else f"{_fmt(c, False)} + {_fmt(-b)}"
        lines.append(f"{format_number(a, 4)}*{var} = {move} = {format_number(rhs, 4)}")
    value = rhs / a
    if a != 1:
        lines.append(f"{var} = {format_number(rhs, 4)} / {_fmt(a)} = {format_number(value, 4)}")
    lines.append(f"#### {format_number(value, 4)}")
    return "\n".join(lines), value
