"""Final-answer extraction and equivalence: the grader shared by curate and eval.

Public API (a contract other tools script against)::

    extract_answer(text) -> str | None
    is_correct(output, reference) -> bool

Extraction order: the last ``\\boxed{...}`` (nested braces), ``#### N``, "The answer is ...",
"答案是 ..." / "最终答案 ...", then the last number; text inside ``<think>...</think>`` is ignored.
Equivalence: an exact fast path on normalized strings and exact rationals, then math-verify
(pinned, see pyproject) under a timeout.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from fractions import Fraction

from .arith import parse_number

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 20_000  # extraction looks at the last this-many characters of an output
VERIFY_TIMEOUT_S = 5  # math-verify parse/verify timeout (main thread only: it is signal based)


@dataclass(frozen=True)
class GradeOptions:
    """Options of :func:`is_correct`; frozen so a default can be shared safely."""

    float_rounding: int = 6  # math-verify: decimals compared after rounding
    use_math_verify: bool = True
    raise_on_error: bool = False  # False: a grader failure is logged and counts as incorrect


DEFAULT_OPTIONS = GradeOptions()

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_NUMBER = re.compile(r"-?\d+/\d+(?![\d/])|-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?%)?|-?\.\d+")
_ANSWER_PHRASES = [
    re.compile(r"####\s*([^\n]+)"),
    re.compile(r"(?:final answer|the answer)\s*(?:is|=|:)?\s*[:：]?\s*([^\n]+)", re.I),
    re.compile(r"(?:最终答案|答案)\s*(?:是|为)?\s*[:：]?\s*([^\n]+)"),
]
_FULLWIDTH = str.maketrans("０１２３４５６７８９．，－＋％＄", "0123456789.,-+%$")


def strip_think(text: str) -> str:
    """Remove ``<think>...</think>`` blocks, an unclosed leading ``<think>`` and anything before a stray ``</think>``."""
    text = _THINK_BLOCK.sub("", text)
    low = text.lower()
    if "</think>" in low:
        text = text[low.rfind("</think>") + len("</think>"):]
    low = text.lower()
    if "<think>" in low:
        text = text[: low.find("<think>")]
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    i = text.find("{", idx)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1: j].strip()
    return None


def _clean_answer(s: str) -> str | None:
    s = s.strip().translate(_FULLWIDTH)
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    s = re.sub(r"^\$+|\$+$", "", s).strip()  # LaTeX math delimiters
    s = s.rstrip(" .。;；,，!！")
    if not s:
        return None
    # a phrase answer ("18 dollars", "$1,234.") -> its first number, unless it is LaTeX
    if "\\" not in s:
        m = _NUMBER.search(s)
        if m:
            fr = re.fullmatch(r"\s*-?\d+\s*/\s*\d+\s*", s)
            return fr.group(0).replace(" ", "") if fr else m.group(0).replace("$", "").replace(" ", "")
    return s


def extract_answer(text: str | None) -> str | None:
    """The final answer written in ``text``, as a string, or None when there is none."""
    if not text:
        return None
    text = strip_think(text[-MAX_TEXT_CHARS:]).translate(_FULLWIDTH)
    boxed = last_boxed(text)
    if boxed is not None:
        return _clean_answer(boxed)
    for pat in _ANSWER_PHRASES:
        found = pat.findall(text)
        if found:
            ans = _clean_answer(found[-1])
            if ans is not None:
                return ans
    nums = _NUMBER.findall(text)
    if nums:
        return nums[-1].replace("$", "").replace(" ", "")
    return None


def _norm(s: str) -> str:
    return re.sub(r"\s+", "", s.translate(_FULLWIDTH)).rstrip(".").lower()


def _as_fraction(s: str) -> Fraction | None:
    return parse_number(s.replace("$", ""))


def _math_verify(reference: str, answer: str, opts: GradeOptions) -> bool:
    from math_verify import parse, verify

    in_main = threading.current_thread() is threading.main_thread()
    t = VERIFY_TIMEOUT_S if in_main else None  # math-verify's timeout is signal based
    gold = parse(f"${reference}$", parsing_timeout=t, raise_on_error=opts.raise_on_error)
    pred = parse(f"${answer}$", parsing_timeout=t, raise_on_error=opts.raise_on_error)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, float_rounding=opts.float_rounding, timeout_seconds=t,
                       raise_on_error=opts.raise_on_error))


def answers_equal(answer: str | None, reference: str | None, opts: GradeOptions = DEFAULT_OPTIONS) -> bool:
    """Is an extracted ``answer`` equivalent to ``reference``? (fast path first, then math-verify)"""
    if answer is None or reference is None:
        return False
    if _norm(answer) == _norm(reference):
        return True
    a, r = _as_fraction(answer), _as_fraction(reference)
    if a is not None and r is not None:
        return a == r  # both plain numbers: exact comparison decides
    if not opts.use_math_verify:
        return False
    try:
        return _math_verify(reference, answer, opts)
    except Exception as e:  # noqa: BLE001 - grader errors must not stop an eval
        if opts.raise_on_error:
            raise
        log.warning("math-verify failed on %r vs %r: %s", answer, reference, e)
        return False


def is_correct(output: str, reference: str, opts: GradeOptions = DEFAULT_OPTIONS) -> bool:
    """Does the final answer extracted from ``output`` equal ``reference``?"""
    ref = extract_answer(reference) if reference and not _as_fraction(reference) else reference
    return answers_equal(extract_answer(output), ref or reference, opts)
