# Frozen copy of src/mathdistill/answers.py before issue 14 (commit 1b397d1): the "previous rule set" that
# benchmarks/bench_grader.py compares against. Not imported by the package.
"""Final-answer extraction and equivalence: the grader shared by curate and eval.

Public API (a contract other tools script against)::

    extract_answer(text) -> str | None
    is_correct(output, reference) -> bool
    answers_equal(answer, reference) -> bool        # both already extracted (or plain reference strings)

Extraction order: the last ``\\boxed{...}`` (nested braces), ``#### N``, "The answer is ..." / "Final answer:",
"答案是 ..." / "最终答案 ...", then the last number; text inside ``<think>...</think>`` is ignored (an
unclosed ``<think>`` hides everything after it). Full-width digits and punctuation are read as ASCII.

Equivalence, cheapest first (README, "How the grader compares answers"):
1. equal normalized strings;
2. both sides plain numbers (thousands separators, currency and unit words dropped, fractions, mixed
   numbers, ``\\frac``, percentages): decided exactly with :class:`fractions.Fraction`, no math-verify;
3. otherwise math-verify (pinned, see pyproject) under a timeout: signal based in the main thread, a
   worker process elsewhere, so the timeout also holds in threads.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 20_000  # extraction looks at the last this-many characters of an output
MAX_ANSWER_CHARS = 400  # longer extracted answers are cut here (math-verify on huge strings is slow)
VERIFY_TIMEOUT_S = 5  # math-verify parse/verify timeout per comparison, seconds
WORKER_GRACE_S = 5  # extra seconds a worker process gets before it is killed (threads only)


@dataclass(frozen=True)
class GradeOptions:
    """Options of :func:`is_correct` / :func:`answers_equal`; frozen so a default can be shared safely."""

    float_rounding: int = 6  # math-verify: decimals compared after rounding
    use_math_verify: bool = True  # False: only the exact fast paths decide (anything else is incorrect)
    timeout_s: int = VERIFY_TIMEOUT_S  # per math-verify comparison
    raise_on_error: bool = False  # False: a grader failure or timeout is logged, counted and is incorrect


DEFAULT_OPTIONS = GradeOptions()


@dataclass
class GradeStats:
    """How each comparison was decided. Pass one to :func:`answers_equal` to count; curate reports it."""

    fast_string: int = 0  # equal normalized strings
    fast_number: int = 0  # decided exactly as numbers (or a number against text without digits)
    math_verify: int = 0  # math-verify decided
    no_answer: int = 0  # nothing extracted or no reference: incorrect, nothing to compare
    errors: int = 0  # math-verify raised or timed out: incorrect (or raised, with raise_on_error)

    def total(self) -> int:
        return self.fast_string + self.fast_number + self.math_verify + self.no_answer + self.errors

    def fast_share(self) -> float:
        """Share of comparisons (with an answer to compare) decided without math-verify."""
        compared = self.fast_string + self.fast_number + self.math_verify + self.errors
        return (self.fast_string + self.fast_number) / compared if compared else 1.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total(), "fast_share": round(self.fast_share(), 4)}


# ---------------------------------------------------------------------------------------------- text

# full-width ASCII block (digits, letters, ％＄，．：（） ...) -> ASCII; odd spaces and minus signs -> ASCII
_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_WIDTH.update({0x3000: " ", 0x00A0: " ", 0x2009: " ", 0x202F: " ", 0x2212: "-", 0xFE63: "-", 0x2044: "/"})
_WIDTH_TABLE = str.maketrans(_WIDTH)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)


def to_ascii(text: str) -> str:
    """Full-width digits and punctuation (``１２，３４５．５％``), odd spaces and the minus sign ``−`` as ASCII."""
    return text if text.isascii() else text.translate(_WIDTH_TABLE)


_HAS_THINK = re.compile(r"think>", re.I)


def strip_think(text: str) -> str:
    """Remove ``<think>...</think>`` blocks, an unclosed ``<think>`` and what follows it, and anything
    before a stray ``</think>``."""
    if not _HAS_THINK.search(text):
        return text
    text = _THINK_BLOCK.sub("", text)
    low = text.lower()
    if "</think>" in low:
        text = text[low.rfind("</think>") + len("</think>"):]
    low = text.lower()
    if "<think>" in low:
        text = text[: low.find("<think>")]
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; ``\\boxed 5`` too."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx + (6 if text.startswith("\\boxed", idx) else 5):]
    m = re.match(r"\s*\{", rest)
    if not m:
        bare = re.match(r"\s+([^\s$]+)", rest)  # "\boxed 5"
        return bare.group(1) if bare else None
    depth = 0
    for j in range(m.end() - 1, len(rest)):
        if rest[j] == "{":
            depth += 1
        elif rest[j] == "}":
            depth -= 1
            if depth == 0:
                return rest[m.end(): j].strip()
    return None  # unbalanced: the output was cut


# ------------------------------------------------------------------------------------------- numbers

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"  # 1,234.5 | 1234 | .5
_CURRENCY = r"(?:\$|€|£|¥|￥|元|USD|US\$|RMB|CNY|EUR|GBP)"
_PERCENT = r"(?:\s*%|\s*percent\b|\s*per\s*cent\b|\s*个百分点)"
# a plain number answer: sign, currency, number, then a mixed/simple fraction, then percent
_PLAIN = re.compile(
    rf"(?P<sign>[-+])?\s*(?:{_CURRENCY}\s*)?(?P<sign2>-)?\s*(?P<num>{_NUM})"
    rf"(?:\s*/\s*(?P<den>{_NUM})|\s+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+))?"
    rf"(?P<pct>{_PERCENT})?", re.I)
_FRAC_TEX = re.compile(r"(?P<sign>-)?\s*(?P<whole>\d+)?\s*\\frac\s*(?:\{\s*(?P<n>-?\d+(?:\.\d+)?)\s*\}|(?P<n1>\d))"
                       r"\s*(?:\{\s*(?P<d>-?\d+(?:\.\d+)?)\s*\}|(?P<d1>\d))(?P<pct>%)?")
_LAST_NUM = re.compile(rf"(?P<neg>-\s?)?(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d+)(?![\d.]))?(?P<pct>\s?%)?")


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
    m = _PLAIN.fullmatch(s)
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


# ---------------------------------------------------------------------------------------- extraction

_EN_PHRASE = re.compile(
    r"\b(?:final\s+answer|answer)\b\s*(?:\*\*|__)?\s*(?:is|would\s+be|will\s+be|should\s+be|[:=])\s*(?:\*\*|__)?\s*:?", re.I)
_ZH_PHRASE = re.compile(r"(?:最终答案|最后答案|答案)\s*(?:\*\*)?\s*(?:应该是|应为|是|为|[:=])\s*(?:\*\*)?\s*:?|最终答案")
_HASHES = re.compile(r"####\s*")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\\left|\\right")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree")
_MARKDOWN = re.compile(r"\*\*|__|`")
_SIMPLE = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*[.。]?\s*")
_DELIMS = re.compile(r"\\\(|\\\)|\\\[|\\\]")
_DIGIT_OR_TEX = re.compile(r"\d|\\")
_PAREN = re.compile(r"\(\s*([^(),]+?)\s*\)")
_RELATION = re.compile(r"[<>]=|\\[lg]eq?|\\neq")
_DOLLARS = re.compile(r"\$+([^$]*)\$+")
_DOLLARS_TEX = re.compile(r"\$+([^$]*[\\^{_][^$]*)\$+")
_TRAIL = " \t.。;；,，!！:：、"
# what may follow a number in an answer without making it an expression: unit words, CJK, a clause
_UNIT_TAIL = re.compile(r"(?:\s*[.,;:]?\s+[A-Za-z\u3400-\u9fff(]|\s*[\u3400-\u9fff]|[A-Za-z]{2,}|\s*\(|\s+[A-Za-z]\b)")


def _unwrap(s: str) -> str:
    for _ in range(4):  # nested \text{\textbf{...}}
        t = _TEXT_CMD.sub(r" \1 ", s)
        if t == s:
            break
        s = t
    return s


def clean_answer(span: str | None) -> str | None:
    """One answer span (a box's content, the rest of an "answer is" line, a reference) -> its answer string.

    A number followed by words (``18 dollars``, ``8 个苹果``, ``$1,234.50 per week``) becomes the number
    (``18``, ``8``, ``1234.50``); a percentage keeps its ``%``; LaTeX and expressions are kept as written,
    without delimiters, ``\\text{}`` wrappers, units after them or trailing punctuation.
    """
    if span is None:
        return None
    s = to_ascii(span)[:MAX_ANSWER_CHARS]
    simple = _SIMPLE.fullmatch(s)
    if simple:  # "72", "42.", "-5": most answers, no cleaning needed
        return simple.group(1)
    if "\\" in s:
        s = _unwrap(s).replace("\\%", "%").replace("\\$", "$").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
        s = _DELIMS.sub(" ", _SPACING.sub(" ", s))
    if "*" in s or "_" in s or "`" in s:
        s = _MARKDOWN.sub("", s)
    if "~" in s or "\xb0" in s or "\\" in s:
        s = _DEGREE.sub("", s.replace("~", " "))
    s = s.strip().strip(_TRAIL)
    # $...$ math delimiters around the whole span or around LaTeX at its start; a "$" before a
    # number is a currency sign (_PLAIN reads it)
    m = _DOLLARS.fullmatch(s) or _DOLLARS_TEX.match(s)
    if m:
        s = m.group(1)
    s = s.strip().strip(_TRAIL)
    if "=" in s and not _RELATION.search(s):
        s = s.rsplit("=", 1)[1].strip().strip(_TRAIL)  # "x = 5", "3 + 5 = 8" -> the right side
    if not s:
        return None
    paren = _PAREN.fullmatch(s)
    if paren:
        s = paren.group(1)  # "(8)", "(B)"; not "(1, 2)", an interval or a point
    m = _PLAIN.match(s)
    if m and (m.end() == len(s) or _UNIT_TAIL.match(s, m.end())):
        return _plain_text(m)
    if re.match(r"[A-Za-z\u3400-\u9fff]{2,}", s) and "\\" not in s:
        # a sentence ("John has 5 apples left", "一共 8 个"): its first number, if any
        m = next((x for x in _PLAIN.finditer(s) if not _glued(s, x)), None)
        if m and (m.end() == len(s) or _UNIT_TAIL.match(s, m.end())):
            return _plain_text(m)
    if "\\" in s:
        s = re.sub(r"(?:\s+[A-Za-z]{2,}\.?)+$", "", s)  # "\frac{3}{4} cups" -> "\frac{3}{4}"
    s = re.sub(r"\s+", " ", s).strip().strip(_TRAIL)
    return s or None


def _glued(s: str, m: re.Match) -> bool:
    return m.start() > 0 and (s[m.start() - 1].isalnum() and s[m.start() - 1].isascii())


def _plain_text(m: re.Match) -> str:
    neg = (m.group("sign") == "-") != (m.group("sign2") == "-")
    out = ("-" if neg else "") + m.group("num").replace(",", "")
    if m.group("den"):
        out += "/" + m.group("den").replace(",", "")
    elif m.group("mnum"):
        out += f" {m.group('mnum')}/{m.group('mden')}"
    return out + ("%" if m.group("pct") else "")


def _after(text: str, m: re.Match) -> str:
    """The rest of the line after a phrase, or the next non-empty line when the phrase ends its line."""
    rest = text[m.end():]
    line, _, more = rest.partition("\n")
    if line.strip():
        return line
    nxt = next((ln for ln in more.split("\n") if ln.strip()), "")
    return nxt


def _accept(ans: str | None) -> bool:
    """A phrase's answer counts when it has a digit or LaTeX, or is short text ("John", "B", "小明")."""
    if ans is None:
        return False
    return bool(_DIGIT_OR_TEX.search(ans)) or (len(ans.split()) <= 3 and len(ans) <= 24)


def last_number(text: str) -> str | None:
    """The last number in ``text`` (a ``-`` counts as a sign only where it is not a minus between terms)."""
    found = None
    for m in _LAST_NUM.finditer(text):
        found = m
    if found is None:
        return None
    m = found
    neg = False
    if m.group("neg"):
        before = text[: m.start()].rstrip()
        neg = not before or not (before[-1].isalnum() or before[-1] in ")]}")
    out = ("-" if neg else "") + m.group("num").replace(",", "")
    if m.group("den"):
        out += "/" + m.group("den")
    return out + ("%" if m.group("pct") else "")


def extract_answer(text: str | None) -> str | None:
    """The final answer written in ``text``, as a string, or None when there is none."""
    if not text:
        return None
    text = to_ascii(strip_think(text[-MAX_TEXT_CHARS:]))
    if not text.strip():
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        ans = clean_answer(boxed)
        if ans is not None:
            return ans
    for pat, needle in ((_HASHES, "####"), (_EN_PHRASE, "nswer"), (_ZH_PHRASE, "答案")):
        if needle not in text and not (needle == "nswer" and "NSWER" in text):
            continue  # a substring test is much cheaper than the regex scan
        hits = list(pat.finditer(text))
        for m in reversed(hits[-3:]):  # the last one that holds an answer
            ans = clean_answer(_after(text, m))
            if _accept(ans):
                return ans
    return last_number(text)


@lru_cache(maxsize=1 << 16)
def as_answer(s: str) -> str | None:
    """An answer-ish string as the grader compares it: extracted when it is a whole solution (has
    ``####`` or ``\\boxed``), else cleaned as one answer span."""
    if "####" in s or "\\boxed" in s or "\\fbox" in s:
        return extract_answer(s)
    return clean_answer(s)


# -------------------------------------------------------------------------------------- equivalence

_CANON_DROP = re.compile(r"\s+|\\!|\\,|\\;|\\ |\\left|\\right|\{\}")


@lru_cache(maxsize=1 << 16)
def _canon(s: str) -> str:
    return _CANON_DROP.sub("", s).rstrip(".").lower()


def _mv_compare(reference: str, answer: str, float_rounding: int, timeout: int | None) -> bool:
    """math-verify on two answer strings; raises on a parse/verify error or a timeout."""
    from math_verify import parse, verify

    gold = parse(f"${reference}$", parsing_timeout=timeout, raise_on_error=True)
    pred = parse(f"${answer}$", parsing_timeout=timeout, raise_on_error=True)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, float_rounding=float_rounding, timeout_seconds=timeout, raise_on_error=True))


@lru_cache(maxsize=1 << 14)
def _mv_cached(reference: str, answer: str, float_rounding: int, timeout: int) -> bool:
    return _mv_compare(reference, answer, float_rounding, timeout)  # exceptions are not cached


class _Worker:
    """One spawned process that runs math-verify for threads (its signal timeout needs a main thread)."""

    _lock = threading.Lock()
    _pool = None

    @classmethod
    def compare(cls, reference: str, answer: str, opts: GradeOptions) -> bool:
        import multiprocessing

        with cls._lock:
            if cls._pool is None:
                cls._pool = multiprocessing.get_context("spawn").Pool(1)
            pool = cls._pool
        job = pool.apply_async(_mv_compare, (reference, answer, opts.float_rounding, opts.timeout_s))
        try:
            return job.get(timeout=2 * opts.timeout_s + WORKER_GRACE_S)
        except multiprocessing.TimeoutError:
            with cls._lock:
                if cls._pool is pool:
                    cls._pool = None
            pool.terminate()
            from math_verify.errors import TimeoutException

            raise TimeoutException(f"math-verify worker gave no answer in {2 * opts.timeout_s + WORKER_GRACE_S}s") from None


def _math_verify(reference: str, answer: str, opts: GradeOptions) -> bool:
    if threading.current_thread() is threading.main_thread():
        return _mv_cached(reference, answer, opts.float_rounding, opts.timeout_s)
    return _Worker.compare(reference, answer, opts)


def answers_equal(answer: str | None, reference: str | None, opts: GradeOptions = DEFAULT_OPTIONS,
                  stats: GradeStats | None = None) -> bool:
    """Is an extracted ``answer`` equivalent to ``reference``? (exact fast paths first, then math-verify)"""
    st = stats if stats is not None else GradeStats()
    a = as_answer(answer) if answer else None
    r = as_answer(reference) if reference else None
    if a is None or r is None:
        st.no_answer += 1
        return False
    if _canon(a) == _canon(r):
        st.fast_string += 1
        return True
    na, nr = parse_number(a), parse_number(r)
    if na is not None and nr is not None:
        st.fast_number += 1
        return numbers_equal(na, nr)
    if (na is not None and not re.search(r"[\d\\]", r)) or (nr is not None and not re.search(r"[\d\\]", a)):
        st.fast_number += 1  # a number against text without digits or LaTeX ("John", "yes")
        return False
    if not opts.use_math_verify:
        st.fast_string += 1
        return False
    try:
        ok = _math_verify(r, a, opts)
    except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)) or opts.raise_on_error:
            raise
        st.errors += 1
        log.warning("math-verify failed on %r vs %r: %s: %s", answer, reference, type(e).__name__, e)
        return False
    st.math_verify += 1
    return ok


def is_correct(output: str, reference: str, opts: GradeOptions = DEFAULT_OPTIONS,
               stats: GradeStats | None = None) -> bool:
    """Does the final answer extracted from ``output`` equal ``reference``?

    ``reference`` may be a bare answer (``"18"``, ``"\\frac{1}{2}"``) or a whole solution ending in
    ``#### 18`` or a ``\\boxed{}``.
    """
    return answers_equal(extract_answer(output), reference, opts, stats)
