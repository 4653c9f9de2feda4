"""Built-in step-by-step solver: reference chains for the reasoning-gym arithmetic families,
which ship answers only. Parses with :mod:`ast` and walks the tree (no ``eval``); values are exact.

Chains are short on purpose (ES rewards few tokens) and end with ``#### <answer>`` like GSM-Symbolic's.
"""

from __future__ import annotations

import ast
from fractions import Fraction

from .arith import format_number

_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class SolveError(ValueError):
    pass


def _fmt(v: Fraction, paren_negative: bool = True) -> str:
    s = format_number(v, 4)
    return f"({s})" if paren_negative and v < 0 else s


def _walk(node: ast.AST, lines: list[str]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _walk(node.body, lines)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _walk(node.operand, lines)
        if isinstance(node.op, ast.UAdd):
            return v
        if not isinstance(node.operand, ast.Constant):
            lines.append(f"-({format_number(v, 4)}) = {format_number(-v, 4)}")
        return -v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a = _walk(node.left, lines)
        b = _walk(node.right, lines)
        op = _OPS[type(node.op)]
        if op == "/" and b == 0:
            raise SolveError("division by zero")
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else Fraction(0)}[op]
        lines.append(f"{_fmt(a)} {op} {_fmt(b)} = {format_number(v, 4)}")
        return v
    raise SolveError(f"unsupported syntax: {ast.dump(node)[:60]}")


def solve_expression(expr: str) -> tuple[str, Fraction]:
    """``"98 + 93 - 77"`` -> (``"98 + 93 = 191\\n191 - 77 = 114\\n#### 114"``, 114)."""
    try:
        tree = ast.parse(expr.replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as e:
        raise SolveError(f"cannot parse {expr!r}") from e
    lines: list[str] = []
    v = _walk(tree, lines)
    if not lines:
        lines.append(f"{expr.strip()} = {format_number(v, 4)}")
    lines.append(f"#### {format_number(v, 4)}")
    return "\n".join(lines), v


def _linear(node: ast.AST, var: str) -> tuple[Fraction, Fraction]:
    """(coefficient of ``var``, constant) of a linear expression tree."""
    if isinstance(node, ast.Expression):
        return _linear(node.body, var)
    if isinstance(node, ast.Name):
        if node.id != var:
            raise SolveError(f"unknown variable {node.id!r}")
        return Fraction(1), Fraction(0)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(0), Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        a, b = _linear(node.operand, var)
        return -a, -b
    if isinstance(node, ast.BinOp):
        la, lb = _linear(node.left, var)
        ra, rb = _linear(node.right, var)
        if isinstance(node.op, ast.Add):
            return la + ra, lb + rb
        if isinstance(node.op, ast.Sub):
            return la - ra, lb - rb
        if isinstance(node.op, ast.Mult):
            if la and ra:
                raise SolveError("not linear")
            return (la * rb + ra * lb, lb * rb)
        if isinstance(node.op, ast.Div) and not ra and rb:
            return la / rb, lb / rb
    raise SolveError("unsupported equation")


def solve_linear(equation: str, var: str) -> tuple[str, Fraction]:
    """``"56 - 98*e = -1218"`` -> chain isolating ``e`` step by step, and its value."""
    if equation.count("=") != 1:
        raise SolveError("expected one '='")
    left, right = equation.split("=")
    la, lb = _linear(ast.parse(left.strip(), mode="eval"), var)
    ra, rb = _linear(ast.parse(right.strip(), mode="eval"), var)
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
