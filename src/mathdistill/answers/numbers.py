"""Plain numbers as exact fractions: parsing an answer string, comparing two, and the last number of a text."""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

MAX_DIGITS = 60  # a "number" with more digits than this is not an answer anybody wrote on purpose

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"  # 1,234.5 | 1234 | .5
_CURRENCY = r"(?:\$|€|£|¥|￥|元|USD|US\$|RMB|CNY|EUR|GBP)"
_PERCENT = r"(?:\s*%|\s*percent\b|\s*per\s*cent\b|\s*个百分点)"
# a plain number answer: sign, currency, number, then a mixed/simple fraction, then percent
PLAIN = re.compile(
    rf"(?P<sign>[-+])?\s*(?:{_CURRENCY}\s*)?(?P<sign2>-)?\s*(?P<num>{_NUM})"
    rf"(?:\s*/\s*(?P<den>{_NUM})|\s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+))?"
    rf"(?P<pct>{_PERCENT})?", re.I)
_FRAC_TEX = re.compile(r"(?P<sign>-)?\s*(?P<whole>\d+)?\s*\\frac\s*(?:\{\s*(?P<n>-?\d+(?:\.\d+)?)\s*\}|(?P<n1>\d))"
                       r"\s*(?:\{\s*(?P<d>-?\d+(?:\.\d+)?)\s*\}|(?P<d1>\d))(?P<pct>%)?")
# 3.2 \times 10^{-5}, 3.2 x 10^5, 3.2e-5
_SCI = re.compile(r"(?P<sign>-)?\s*(?P<m>\d+(?:\.\d+)?)\s*(?:(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*(?P<e>[-+]?\d{1,3})\s*\}?"
                  r"|[eE](?P<e2>[-+]?\d{1,3}))")
_LAST_NUM = re.compile(rf"(?P<neg>-\s?)?(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d+)(?!\.?\d))?(?P<pct>\s?%)?")


class Num(NamedTuple):
    value: Fraction  # as written: "25%" -> 25
    pct: bool  # written with a percent sign (or "percent")
    places: int  # decimals written ("0.33" -> 2)


def _places(s: str) -> int:
    m = re.search(r"\.(\d+)", s)
    return len(m.group(1)) if m else 0


@lru_cache(maxsize=1 << 16)
def parse_number(s: str) -> Num | None:
    """A whole answer string as an exact number, or None when it is anything else (an expression, text)."""
    s = s.strip()
    if len(s) > 2 * MAX_DIGITS:
        return None
    m = PLAIN.fullmatch(s)
    if m:
        num = m.group("num").replace(",", "")
        v = Fraction(num)
        if m.group("den"):
            den = Fraction(m.group("den").replace(",", ""))
            if den == 0:
                return None
            v = v / den
        elif m.group("mnum"):  # mixed number "1 1/2"
            mden = int(m.group("mden"))
            if mden == 0 or "." in num:
                return None
            v = v + Fraction(int(m.group("mnum")), mden)
        if (m.group("sign") == "-") != (m.group("sign2") == "-"):
            v = -v
        return Num(v, bool(m.group("pct")), _places(num) if not (m.group("den") or m.group("mnum")) else 0)
    m = _FRAC_TEX.fullmatch(s)
    if m:
        n = Fraction(m.group("n") or m.group("n1"))
        d = Fraction(m.group("d") or m.group("d1"))
        if d == 0:
            return None
        v = n / d + int(m.group("whole") or 0)
        return Num(-v if m.group("sign") else v, bool(m.group("pct")), 0)
    m = _SCI.fullmatch(s)
    if m:
        v = Fraction(m.group("m")) * Fraction(10) ** int(m.group("e") or m.group("e2"))
        return Num(-v if m.group("sign") else v, False, 0)
    return None


def _terminates(v: Fraction) -> bool:
    d = v.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _close(a: Num, av: Fraction, b: Num, bv: Fraction) -> bool:
    """Exact equality, or a decimal written with >= 2 places that rounds the other side's non-terminating value."""
    if av == bv:
        return True
    for x, xv, yv in ((a, av, bv), (b, bv, av)):
        if x.places >= 2 and not _terminates(yv) and abs(xv - yv) <= Fraction(1, 2 * 10 ** x.places):
            return True
    return False


def numbers_equal(a: Num, b: Num) -> bool:
    """Percent rules: ``25%`` equals ``25`` and ``0.25``; ``25%`` vs ``0.25%`` compares 25 with 0.25."""
    if a.pct == b.pct:
        return _close(a, a.value, b, b.value)
    p, q = (a, b) if a.pct else (b, a)
    return _close(p, p.value, q, q.value) or _close(p, p.value / 100, q, q.value)


_TEX_FRAC_IN_TEXT = re.compile(r"(-\s?)?\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_WORD_BEFORE = re.compile(r"(?:[A-Za-z]{2,}|[\u3400-\u9fff])$")  # a word (or a CJK character) just before


def _is_sign(text: str, start: int, attached: bool) -> bool:
    """Is the ``-`` at ``text[start]`` a sign (not a minus between two terms)? ``attached``: no space between
    the ``-`` and the digits."""
    before = text[:start]
    stripped = before.rstrip()
    if not stripped:
        return True
    last = stripped[-1]
    word = _WORD_BEFORE.search(stripped)
    if word and last.isascii():
        # "is -7": an English word, a space, then a sign glued to the number; "\circ - 1", "\pi -1": a minus
        command = stripped[: word.start()].endswith("\\")
        return attached and stripped is not before and not command
    if last.isdigit() or last in ")]}|!" or (last.isalpha() and last.isascii()):
        return False  # "3 - 6", "(a+b) - 2", "x - 7": a minus between terms
    return True  # "= -3", "(-2", ": -5", "为-5"


def _inside_word(text: str, m: re.Match) -> bool:
    a, b = m.start(), m.end()
    return 0 < a and b < len(text) and text[a - 1].isascii() and text[a - 1].isalpha() \
        and text[b].isascii() and text[b].isalpha()


_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")


def decimal_comma(a: str, b: str) -> tuple[str, str]:
    """``1,22`` against ``1.22``: a single comma is read as a decimal point when the other side is a decimal
    written with a point (a list ``1,2`` against an integer stays a list)."""
    if _DECIMAL_COMMA.fullmatch(a) and re.fullmatch(r"-?\d*\.\d+", b) and not re.fullmatch(r"-?[1-9]\d{0,2}(,\d{3})+", a):
        return a.replace(",", "."), b
    if _DECIMAL_COMMA.fullmatch(b) and re.fullmatch(r"-?\d*\.\d+", a) and not re.fullmatch(r"-?[1-9]\d{0,2}(,\d{3})+", b):
        return a, b.replace(",", ".")
    return a, b


_GLUED_COMMA = re.compile(r"(?<![\d,.])(-?\d+),$")


def last_number(text: str) -> str | None:
    """The last number in ``text``: ``-`` counts as a sign where it is not a minus between terms ("is -7"
    keeps it, "3 - 6" does not); ``a/b`` stays a fraction. None when there is none, or it has too many digits."""
    found = []
    for m in _LAST_NUM.finditer(text):
        found.append(m)
    # a number glued into a word on both sides ("AZYUK2A", "H2O") is not an answer
    while found and _inside_word(text, found[-1]):
        found.pop()
    if not found:
        return None
    m = found[-1]
    if len(m.group("num")) > MAX_DIGITS:
        return None
    glued = _GLUED_COMMA.search(text, max(0, m.start() - 24), m.start())
    if glued and not m.group("neg") and not m.group("den") and re.fullmatch(r"\d{1,2}", m.group("num")):
        # "2,74 $": a decimal comma (or a list written without spaces) is kept whole; the comparison
        # decides with the reference (decimal_comma): "2,74" equals 2.74, not 74
        return glued.group(1) + "," + m.group("num")
    neg = bool(m.group("neg")) and _is_sign(text, m.start(), m.group("neg") == "-")
    out = ("-" if neg else "") + m.group("num").replace(",", "")
    if m.group("den"):
        out += "/" + m.group("den")
    return out + ("%" if m.group("pct") else "")


_ONES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                    "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10 ** 6, "billion": 10 ** 9}
_WORD_SPLIT = re.compile(r"[\s-]+")


def words_number(s: str) -> str | None:
    """An answer written in English number words ("twelve", "twenty-one", "one hundred and five", "minus
    three") as digits, or None when ``s`` is anything else."""
    words = [w for w in _WORD_SPLIT.split(s.strip().lower().rstrip(".!")) if w and w != "and"]
    if not words or len(words) > 8:
        return None
    neg = words[0] in ("minus", "negative")
    words = words[1:] if neg else words
    total = part = 0
    seen = False
    for w in words:
        if w in _ONES:
            part += _ONES[w]
        elif w in _TENS:
            part += _TENS[w]
        elif w in _SCALES and seen:
            if _SCALES[w] == 100:
                part *= 100
            else:
                total, part = total + part * _SCALES[w], 0
        else:
            return None
        seen = True
    if not seen:
        return None
    return ("-" if neg else "") + str(total + part)
