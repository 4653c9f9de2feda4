"""Final-answer extraction and equivalence: the grader shared by curate and eval.

Public API (a contract other tools script against)::

    extract_answer(text) -> str | None
    is_correct(output, reference) -> bool
    answers_equal(answer, reference) -> bool        # both already extracted (or plain reference strings)
    grade(output, reference, *, finish_reason=None) -> Grade(answer, correct, rule)

Modules: :mod:`.text` (clean-up, truncation), :mod:`.numbers` (exact numbers), :mod:`.chinese` (number
words), :mod:`.choice` (multiple choice), :mod:`.extract` (which part is the answer), :mod:`.verdict`
(equivalence and the verdict). README, "How the grader compares answers", says which forms count as equal.
"""

from .chinese import zh_numbers
from .choice import output_choice, reference_choice
from .extract import MAX_ANSWER_CHARS, MAX_TEXT_CHARS, as_answer, clean_answer, extract_answer, find_answer
from .verdict import (DEFAULT_OPTIONS, RULE_CHOICE, RULE_ERROR, RULE_LENGTH, RULE_MATH_VERIFY, RULE_NUMBER,
                    RULE_STRING, VERIFY_TIMEOUT_S, WORKER_GRACE_S, Grade, GradeOptions, GradeStats, answers_equal,
                    grade, is_correct)
from .numbers import Num, last_number, numbers_equal, parse_number
from .text import cut_tail, expand_shorthand, last_boxed, looks_cut, strip_think, to_ascii

__all__ = [
    "DEFAULT_OPTIONS", "MAX_ANSWER_CHARS", "MAX_TEXT_CHARS", "RULE_CHOICE", "RULE_ERROR", "RULE_LENGTH",
    "RULE_MATH_VERIFY", "RULE_NUMBER", "RULE_STRING", "VERIFY_TIMEOUT_S", "WORKER_GRACE_S", "Grade", "GradeOptions",
    "GradeStats", "Num", "answers_equal", "as_answer", "clean_answer", "cut_tail", "expand_shorthand",
    "extract_answer", "find_answer", "grade", "is_correct", "last_boxed", "last_number", "looks_cut",
    "numbers_equal", "output_choice", "parse_number", "reference_choice", "strip_think", "to_ascii", "zh_numbers",
]
