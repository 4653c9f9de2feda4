"""Equivalence of two answers and the verdict on one output: exact fast paths first, then math-verify.

1. equal normalized strings;
2. a choice reference (``(B)``, ``\\text{(D) } 12``) against the output's chosen letter;
3. both sides plain numbers (thousands separators, currency and unit words dropped, fractions, mixed
   numbers, ``\\frac``, percentages, ``a \\times 10^{b}``): decided exactly with :class:`fractions.Fraction`;
4. otherwise math-verify (pinned, see pyproject) under a timeout: signal based in the main thread, a
   worker process elsewhere, so the timeout also holds in threads. Sets and lists compare in any order,
   ``\\pm`` expands to both values, an inequality equals its interval, equations of the same line or
   plane written differently are equal.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import asdict, dataclass
from functools import lru_cache

from . import extract as ex
from .choice import output_choice, reference_choice
from .extract import as_answer, find_answer, prepare
from .numbers import decimal_comma, numbers_equal, parse_number
from .text import says_undetermined

log = logging.getLogger(__name__)

VERIFY_TIMEOUT_S = 5  # math-verify parse/verify timeout per comparison, seconds
WORKER_GRACE_S = 5  # extra seconds a worker process gets before it is killed (threads only)

# the rule that decided a verdict (Grade.rule, predictions.jsonl's grade_rule)
RULE_STRING = "fast path: string"
RULE_NUMBER = "fast path: number"
RULE_MATH_VERIFY = "math-verify"
RULE_CHOICE = "choice letter"
RULE_ERROR = "grader error"
RULE_NO_REFERENCE = "no reference"
RULE_LENGTH = "no answer: token limit"
_NO_ANSWER = {ex.EMPTY: "no answer: empty", ex.TRUNCATED: "no answer: truncated",
              ex.UNDETERMINED: "no answer: cannot be determined", ex.TOO_LONG: "no answer: too long",
              ex.NONE_FOUND: "no answer: none found"}


@dataclass(frozen=True)
class GradeOptions:
    """Options of :func:`grade` / :func:`is_correct` / :func:`answers_equal`; frozen so a default can be shared."""

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
    choice: int = 0  # a choice reference decided by the letter

    def total(self) -> int:
        return self.fast_string + self.fast_number + self.math_verify + self.no_answer + self.errors + self.choice

    def fast_share(self) -> float:
        """Share of comparisons (with an answer to compare) decided without math-verify."""
        compared = self.fast_string + self.fast_number + self.math_verify + self.errors + self.choice
        return (self.fast_string + self.fast_number + self.choice) / compared if compared else 1.0

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total(), "fast_share": round(self.fast_share(), 4)}


@dataclass(frozen=True)
class Grade:
    """The verdict on one output: what was read as its answer, whether it is correct, and the rule that
    decided (``fast path: string``, ``fast path: number``, ``math-verify``, ``choice letter``,
    ``no answer: truncated``, ``no answer: token limit``, ...)."""

    answer: str | None
    correct: bool
    rule: str


# ------------------------------------------------------------------------------------------ math-verify

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
    ok = bool(verify(gold, pred, float_rounding=float_rounding, timeout_seconds=timeout, raise_on_error=True,
                     allow_set_relation_comp=True))
    return ok and not _tiny_apart(gold[0], pred[0], float_rounding)


def _tiny_apart(g, p, float_rounding: int) -> bool:
    """Two numbers (one small) math-verify found equal only because both round alike at ``float_rounding``
    decimals (``1/2^{99}`` vs ``1/2^{98}``, ``1/2004!`` vs ``1/2006!``): apart when their ratio is not ~1."""
    import sympy

    try:
        if not (isinstance(g, sympy.Expr) and isinstance(p, sympy.Expr) and g.is_number and p.is_number):
            return False
        gv, pv = abs(sympy.N(g, 30)), abs(sympy.N(p, 30))
        if min(gv, pv) >= sympy.Float(10) ** (-float_rounding + 2) or gv == 0 or pv == 0:
            return False  # neither is small: math-verify's rounding decides
        return bool(abs(sympy.N(p - g, 30)) > sympy.Float(10) ** (-float_rounding) * max(gv, pv))
    except (TypeError, ValueError, ArithmeticError):
        return False


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


# ------------------------------------------------------------------------------------------ equivalence

_DIGIT_OR_TEX = re.compile(r"[\d\\]")
_ELLIPSIS = re.compile(r"\\[lc]?dots|\\ldotp|\.\.\.|…")


def _compare(a: str, r: str, opts: GradeOptions, st: GradeStats) -> tuple[bool, str]:
    """Two cleaned answer strings: (equal?, rule)."""
    if _canon(a) == _canon(r):
        st.fast_string += 1
        return True, RULE_STRING
    rc = reference_choice(r)
    if rc is not None:
        ac = reference_choice(a)
        if ac is not None or not rc[1]:
            st.choice += 1
            return ac is not None and ac[0] == rc[0], RULE_CHOICE
        r = ex.clean_answer(rc[1]) or rc[1]  # a letter with its option text: the output gave the value
        if _canon(a) == _canon(r):
            st.fast_string += 1
            return True, RULE_STRING
    if "," in a or "," in r:
        a, r = decimal_comma(a, r)
    na, nr = parse_number(a), parse_number(r)
    if na is not None and nr is not None:
        st.fast_number += 1
        return numbers_equal(na, nr), RULE_NUMBER
    if (na is not None and not _DIGIT_OR_TEX.search(r)) or (nr is not None and not _DIGIT_OR_TEX.search(a)):
        st.fast_number += 1  # a number against text without digits or LaTeX ("John", "yes")
        return False, RULE_NUMBER
    if _ELLIPSIS.search(a) or _ELLIPSIS.search(r):  # "1, 2, \\ldots, n": a pattern math-verify cannot read
        st.fast_string += 1
        return _ELLIPSIS.sub("...", _canon(a)) == _ELLIPSIS.sub("...", _canon(r)), RULE_STRING
    if not opts.use_math_verify:
        st.fast_string += 1
        return False, RULE_STRING
    try:
        ok = _math_verify(r, a, opts)
    except BaseException as e:  # noqa: BLE001 - math-verify's TimeoutException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)) or opts.raise_on_error:
            raise
        st.errors += 1
        log.warning("math-verify failed on %r vs %r: %s: %s", a, r, type(e).__name__, e)
        return False, RULE_ERROR
    st.math_verify += 1
    return ok, RULE_MATH_VERIFY


def answers_equal(answer: str | None, reference: str | None, opts: GradeOptions = DEFAULT_OPTIONS,
                  stats: GradeStats | None = None) -> bool:
    """Is an extracted ``answer`` equivalent to ``reference``? (exact fast paths first, then math-verify)"""
    st = stats if stats is not None else GradeStats()
    a = as_answer(answer) if answer else None
    r = as_answer(reference) if reference else None
    if a is None or r is None:
        st.no_answer += 1
        return False
    return _compare(a, r, opts, st)[0]


def grade(output: str | None, reference: str | None, *, finish_reason: str | None = None,
          opts: GradeOptions = DEFAULT_OPTIONS, stats: GradeStats | None = None) -> Grade:
    """The verdict on ``output`` against ``reference``, with the answer read and the rule that decided.

    ``finish_reason`` as the backend reported it: ``"length"`` (cut at the token limit) is a miss with rule
    ``no answer: token limit``, any other reason but ``"stop"``/None a miss named after it. A reference
    that names a choice (``(B)``, ``\\text{(D) } 12``) is decided by the letter the output finally chose.
    Never raises on odd input (unless ``opts.raise_on_error``); math-verify runs under ``opts.timeout_s``.
    """
    st = stats if stats is not None else GradeStats()
    answer, how = find_answer(output)
    if finish_reason not in (None, "stop"):
        st.no_answer += 1
        return Grade(answer, False, RULE_LENGTH if finish_reason == "length" else f"no answer: {finish_reason}")
    r = as_answer(reference) if reference else None
    if r is None:
        st.no_answer += 1
        return Grade(answer, False, RULE_NO_REFERENCE)
    rc = reference_choice(r)
    if rc is not None and output:
        letter = output_choice(prepare(output))
        if letter is not None:
            st.choice += 1
            return Grade(letter, letter == rc[0], RULE_CHOICE)
    if answer is None:
        if how == ex.UNDETERMINED and says_undetermined(r):  # the reference says so too
            st.fast_string += 1
            return Grade(r, True, RULE_STRING)
        st.no_answer += 1
        return Grade(None, False, _NO_ANSWER.get(how, "no answer"))
    a = as_answer(answer)
    if a is None:
        st.no_answer += 1
        return Grade(answer, False, _NO_ANSWER[ex.NONE_FOUND])
    ok, rule = _compare(a, r, opts, st)
    return Grade(answer, ok, rule)


def is_correct(output: str, reference: str, opts: GradeOptions = DEFAULT_OPTIONS,
               stats: GradeStats | None = None) -> bool:
    """Does the final answer extracted from ``output`` equal ``reference``?

    ``reference`` may be a bare answer (``"18"``, ``"\\frac{1}{2}"``) or a whole solution ending in
    ``#### 18`` or a ``\\boxed{}``.
    """
    return grade(output, reference, opts=opts, stats=stats).correct
