"""Chinese number words and forms as Arabic numbers: ``十二`` -> ``12``, ``三分之二`` -> ``2/3``,
``百分之二十`` -> ``20%``, ``1.2万`` -> ``12000``, ``3又1/4`` -> ``3 1/4``, ``负三`` -> ``-3``, ``零点五`` -> ``0.5``."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_SMALL = {"十": 10, "百": 100, "千": 1000}
_BIG = {"万": 10 ** 4, "亿": 10 ** 8}
_NUMERAL = "零〇一二两三四五六七八九十百千万亿"
_INT = f"[{_NUMERAL}]+"
_REAL = f"(?:负)?{_INT}(?:点[{_NUMERAL[:12]}]+)?"
_HAS_ZH = re.compile(f"[{_NUMERAL}负点分之又]")
_PCT = re.compile(f"百分之({_REAL})")
_FRACTION = re.compile(f"({_REAL}|\\d+)分之({_REAL}|\\d+)")
_MIXED = re.compile(r"(\d+)\s*又\s*(\d+\s*/\s*\d+)")
_WAN = re.compile(r"(\d+(?:\.\d+)?)\s*(万亿|万|亿)")
_RUN = re.compile(_REAL)


def _int_value(s: str) -> int:
    """``三千零五十`` -> 3050, ``十二`` -> 12, ``一二三`` (digit by digit) -> 123."""
    if all(c in _DIGITS for c in s):
        return int("".join(str(_DIGITS[c]) for c in s))
    total = section = digit = 0
    for c in s:
        if c in _DIGITS:
            digit = _DIGITS[c]
        elif c in _SMALL:
            section += (digit or 1) * _SMALL[c]
            digit = 0
        elif c in _BIG:
            total = (total + section + digit) * _BIG[c]
            section = digit = 0
    return total + section + digit


def _real_value(s: str) -> Fraction:
    neg = s.startswith("负")
    s = s.lstrip("负")
    whole, _, frac = s.partition("点")
    v = Fraction(_int_value(whole)) if whole else Fraction(0)
    if frac:
        v += Fraction(int("".join(str(_DIGITS[c]) for c in frac)), 10 ** len(frac))
    return -v if neg else v


def _fmt(v: Fraction) -> str:
    """An exact value as Arabic digits: an integer, a terminating decimal, or ``a/b``."""
    if v.denominator == 1:
        return str(v.numerator)
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d == 1:
        return format((Decimal(v.numerator) / Decimal(v.denominator)).normalize(), "f")
    return f"{v.numerator}/{v.denominator}"


def _val(s: str) -> Fraction:
    return Fraction(s) if s.isdigit() else _real_value(s)


def zh_numbers(s: str) -> str:
    """``s`` with Chinese number words and forms written as Arabic numbers (anything else kept)."""
    if not _HAS_ZH.search(s) and "万" not in s and "亿" not in s:
        return s
    s = _MIXED.sub(lambda m: f"{m.group(1)} {m.group(2).replace(' ', '')}", s)
    s = zh_multipliers(s)
    s = _PCT.sub(lambda m: _fmt(_real_value(m.group(1))) + "%", s)
    s = _FRACTION.sub(lambda m: f"{_fmt(_val(m.group(2)))}/{_fmt(_val(m.group(1)))}", s)
    s = _RUN.sub(lambda m: _fmt(_real_value(m.group(0))), s)
    return _MIXED.sub(lambda m: f"{m.group(1)} {m.group(2).replace(' ', '')}", s) if "又" in s else s


def zh_multipliers(s: str) -> str:
    """Only ``1.2万`` -> ``12000`` and ``3亿`` -> ``300000000`` (text with Arabic digits keeps its words)."""
    return _WAN.sub(lambda m: _fmt(Fraction(m.group(1)) * (10 ** 12 if m.group(2) == "万亿" else _BIG[m.group(2)])), s)
