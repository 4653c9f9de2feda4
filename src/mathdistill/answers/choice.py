"""Multiple choice: the letter a reference names, and the letter an output finally chooses.

A reference is a choice when it is a letter A-E alone or marked as one: ``B``, ``(B)``, ``\\text{(D)}``,
``\\text{(D) } 12``, ``B. 12``. An output's choice is the last *anchored* one: a ``\\boxed{}`` that starts
with a letter, "the answer is (C)", "Answer: C", "option C is correct", "故选 A", "答案为 B"; else an output
that opens with a marked letter ("A. Because ...", "(C) 12, since ..."); a bare letter elsewhere ("A is
wrong") is never a choice.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .text import last_boxed

_L = r"\(?\s*((?-i:[A-E]))\s*\)?"  # a letter, maybe in parentheses
_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_MARKUP = re.compile(r"\*\*|__|`|\$|\\[()\[\]]")
# a whole reference (or box) that is a choice: the letter, then maybe its option text
_REF_STRICT = re.compile(r"\s*\(?([A-E])\)?\s*(?:$|[.:)\s]\s*(.*))", re.S)
# anchored choices in an output, in the order they may appear; the last match in the text wins
_ANCHORED = re.compile("|".join([
    r"(?:answer|choice|option)\s*(?:is|would be|should be|will be|[:=：])?\s*(?:option\s+|choice\s+)?:?\s*" + _L + r"(?![A-Za-z])",
    r"(?:option|choice)\s+" + _L + r"\s+is\s+(?:the\s+)?(?:correct|right|true|the answer)",
    r"(?:select|choose|pick)\s+(?:option\s+|choice\s+)?" + _L + r"(?![A-Za-z])",
    r"(?:故|所以|因此)?(?:应|只能)?选(?:择|项)?(?:为|是)?\s*[:：]?\s*" + _L,
    r"答案\s*(?:应该|应)?(?:是|为|选)?\s*[:：]?\s*" + _L + r"(?![A-Za-z])",
]), re.I)


# an output that opens with its marked choice and then explains it
_OPENING = re.compile(r"\s*(?:\(([A-E])\)|([A-E])\s*[.:)、,，])(?=\s*\S)")


def _plain(s: str) -> str:
    for _ in range(3):
        t = _TEXT.sub(r"\1", s)
        if t == s:
            break
        s = t
    return _MARKUP.sub("", s).strip()


@lru_cache(maxsize=1 << 14)
def reference_choice(reference: str) -> tuple[str, str] | None:
    """``(letter, option text)`` when ``reference`` names a choice (``(B)``, ``\\text{(D) } 12``), else None."""
    if len(reference) > 200:
        return None
    s = _plain(reference)
    m = _REF_STRICT.fullmatch(s)
    if not m:
        return None
    rest = (m.group(2) or "").strip()
    # "A is ..." or "B 12" is not a bare letter unless it was marked as one: "(B) 12", "B. 12", "B: 12"
    if rest and not re.match(r"\s*\(?[A-E]\)?\s*[.:)]", s) and not s.lstrip().startswith("("):
        return None
    return m.group(1), rest


def output_choice(text: str) -> str | None:
    """The letter ``text`` finally chooses, or None when it chooses none (see the module doc)."""
    box = last_boxed(text)
    if box is not None:
        s = _plain(box)
        m = _REF_STRICT.fullmatch(s)
        if m and (not m.group(2) or s.startswith("(") or re.match(r"[A-E]\s*[.:)]", s)):
            return m.group(1)
    tail = text[-3000:]
    last = None
    for m in _ANCHORED.finditer(_MARKUP.sub("", tail)):
        last = m
    if last is not None:
        return next(g for g in last.groups() if g)
    s = _plain(text).strip(" .。") if len(text) <= 60 else ""
    m = re.fullmatch(r"\(?([A-E])\)?", s)  # an output that is only a letter: "(B)", "C."
    if m:
        return m.group(1)
    m = _OPENING.match(_MARKUP.sub("", text[:200]))  # "A. Because B is not valid", "(C) 12, since ..."
    return (m.group(1) or m.group(2)) if m else None
