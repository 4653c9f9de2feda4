"""The grader, as tables in the Math-Verify style: (reference, output, expected), one comment per family.

Every bug report about grading becomes a row here.
"""

import threading

import pytest

from mathdistill.answers import (GradeOptions, GradeStats, answers_equal, extract_answer, is_correct, last_boxed,
                                 strip_think)

CASES = [
    # --- boxed: the last \boxed{} wins, nested braces, text and units inside
    ("18", r"So $\boxed{18}$.", True),
    ("18", r"First \boxed{12}, corrected: \boxed{18}", True),
    ("12", r"First \boxed{12}, corrected: \boxed{18}", False),
    (r"\frac{1}{2}", r"The answer is \boxed{\frac{1}{2}}", True),
    ("0.5", r"\boxed{\dfrac{1}{2}}", True),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{\frac{\sqrt{3}}{2}}", True),
    ("18", r"\boxed{18 \text{ dollars}}", True),
    ("18", r"\boxed{\$18.00}", True),
    ("5", r"\boxed{x = 5}", True),
    ("3", r"\fbox{3}", True),
    ("7", r"the sum is \boxed 7", True),
    ("1, 2", r"\boxed{1, 2}", True),
    (r"\{1, 2\}", r"\boxed{\{2, 1\}}", True),
    ("18", r"\boxed{19}", False),
    # --- #### (GSM8K style), the last one wins; the reference may be a whole solution too
    ("72", "48 + 24 = 72\n#### 72", True),
    ("72", "#### 70\nWait, recount.\n#### 72", True),
    ("72", "48 + 24 = 72\n#### 71", False),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "She sold 72 clips.\n#### 72", True),
    ("1234", "#### 1,234", True),
    # --- "The answer is ...", "Final answer:", markdown, next line
    ("42", "The answer is 42.", True),
    ("42", "So the final answer is: 42", True),
    ("42", "**Final Answer:** 42", True),
    ("42", "Final answer:\n\n42", True),
    ("42", "Answer: 41", False),
    ("42", "The answer is 42. Check: 40 + 2 = 42, and 6 * 7 = 42 too; 43 is wrong", True),
    ("8", "The answer is 3 + 5 = 8", True),
    ("John", "The answer is John.", True),
    ("John", "The answer is Mary.", False),
    # --- Chinese answer phrases
    ("8", "3 + 5 = 8\n答案是 8", True),
    ("8", "答案：8 个苹果。", True),
    ("8", "所以最终答案是8。", True),
    ("8", "最终答案\n8", True),
    ("8", "故答案为 9", False),
    ("小明", "答案是小明。", True),
    ("20", "一共有 20 元。", True),
    # --- last number fallback
    ("114", "98 + 93 = 191\n191 - 77 = 114", True),
    ("114", "98 + 93 = 191\n191 - 77 = 115", False),
    ("12", "He has 12 apples left.", True),
    ("7", "There are 3 cats and 7 dogs", True),
    # --- <think> is ignored; an unclosed <think> hides everything after it
    ("8", "<think>maybe 9? \\boxed{9}</think>The answer is 8.", True),
    ("9", "<think>maybe 9? \\boxed{9}</think>The answer is 8.", False),
    ("8", "<think>let me think... the answer is 8", False),
    ("8", "half a thought 9</think>\n#### 8", True),
    ("8", "<THINK>a</THINK><think>b 9</think> 8", True),
    # --- thousands separators
    ("1234567", "The total is 1,234,567.", True),
    ("1,234", "#### 1234", True),
    ("1234", "The answer is 1,235", False),
    # --- currency and unit words
    ("18", "The answer is $18.", True),
    ("18", "She earns 18 dollars per week.", True),
    ("18.5", "The answer is $18.50 per hour.", True),
    ("20", "答案是 20 元", True),
    ("5", "The answer is 5 km.", True),
    ("3.5", "The answer is 3.5 hours", True),
    ("45", r"\boxed{45^\circ}", True),
    ("45", "The angle is 45°.", True),
    ("250", "The answer is €250", True),
    # --- trailing periods and punctuation
    ("5", "The answer is 5.", True),
    ("5", "The answer is 5!", True),
    ("5", "答案是 5。", True),
    ("5.5", "The answer is 5.5.", True),
    # --- fractions, decimals, mixed numbers
    ("3/4", "The answer is 0.75", True),
    ("0.75", r"\boxed{\frac{3}{4}}", True),
    ("3/4", "The answer is 4/3", False),
    ("1 1/2", "The answer is 1.5 cups", True),
    ("3/2", r"\boxed{1\frac{1}{2}}", True),
    ("1/3", "The answer is 0.33", True),  # a decimal with >= 2 places that rounds a non-terminating value
    ("1/3", "The answer is 0.3", False),  # one place is not enough
    ("0.125", "The answer is 0.13", False),  # 0.125 terminates: rounding is not accepted
    ("2", "The answer is 2.0", True),
    # --- percentages: 25% equals 25 and 0.25
    ("25", "The answer is 25%.", True),
    ("25%", "The answer is 25", True),
    ("0.25", "The answer is 25%", True),
    ("25%", "The answer is 0.25", True),
    ("25%", "The answer is 25 percent", True),
    ("25%", r"\boxed{25\%}", True),
    ("25%", "The answer is 0.25%", False),
    ("25", "The answer is 2.5%", False),
    # --- negative numbers (ASCII and Unicode minus), not a range dash
    ("-5", "The answer is -5.", True),
    ("-5", "The answer is −5", True),
    ("-5", "The temperature is 5", False),
    ("5", "The answer is -5", False),
    ("-3", "3 - 6 = -3", True),
    ("12", "pages 10-12", True),
    ("-0.5", r"\boxed{-\frac{1}{2}}", True),
    # --- LaTeX expressions that need math-verify
    (r"2\sqrt{3}", r"\boxed{\sqrt{12}}", True),
    (r"\frac{\sqrt{2}}{2}", r"The answer is $\frac{1}{\sqrt{2}}$.", True),
    (r"\pi", r"\boxed{2\pi}", False),
    ("(1, 2)", r"\boxed{(1,2)}", True),
    # --- full-width digits and punctuation (Chinese input methods)
    ("123", "答案是１２３", True),
    ("1234.5", "答案：１，２３４．５元", True),
    ("25%", "答案是２５％", True),
    ("-7", "答案是－７", True),
    ("8", "所以答案是（８）", True),
    # --- nothing to grade
    ("8", "", False),
    ("8", "I don't know.", False),
    (None, "The answer is 8", False),
]


@pytest.mark.parametrize("reference,output,expected", CASES)
def test_is_correct(reference, output, expected):
    assert is_correct(output, reference) is expected


EXTRACT = [
    # --- what extract_answer returns (eval stores it as extracted_answer)
    (r"So \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{\boxed{3}}", "3"),
    (r"\boxed{\frac{1}{2} \text{ cups}}", r"\frac{1}{2}"),
    ("#### 1,234", "1234"),
    ("The answer is $1,234.50.", "1234.50"),
    ("The answer is 25 percent.", "25%"),
    ("The answer is −5.", "-5"),
    ("答案是 8 个", "8"),
    ("答案：１２３", "123"),
    ("pages 10-12", "12"),
    ("所以答案是（８）", "8"),
    (r"\boxed{\text{(B)}}", "B"),
    ("x is 3/4 of the cake", "3/4"),
    ("<think>9</think>", None),
    ("no numbers here", None),
    (None, None),
    (r"\boxed{", None),  # a cut box: no answer from it, nothing else either
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_strip_think_and_last_boxed():
    assert strip_think("<think>a</think>b<think>c") == "b"
    assert last_boxed(r"\boxed{a{b}c} and \boxed{d}") == "d"
    assert last_boxed(r"\boxed{a{b}c}") == "a{b}c"


def test_fast_path_is_counted():
    st = GradeStats()
    assert answers_equal("18", "18", stats=st)
    assert answers_equal("1,234", "1234", stats=st)
    assert not answers_equal("17", "18", stats=st)
    assert answers_equal(r"\sqrt{12}", r"2\sqrt{3}", stats=st)
    assert not answers_equal(None, "3", stats=st)
    assert (st.fast_string, st.fast_number, st.math_verify, st.no_answer, st.errors) == (2, 1, 1, 1, 0)
    assert st.fast_share() == 0.75


def test_without_math_verify_only_exact_paths_decide():
    opts = GradeOptions(use_math_verify=False)
    assert answers_equal("0.5", r"\frac{1}{2}", opts)
    assert not answers_equal(r"\sqrt{12}", r"2\sqrt{3}", opts)


HUGE = "2^{2^{2^{2^{2^{10}}}}}"  # sympy cannot compare this with 5 in time


def test_raise_on_error_propagates():
    from math_verify.errors import TimeoutException

    with pytest.raises(TimeoutException):
        answers_equal("5", HUGE, GradeOptions(raise_on_error=True, timeout_s=1))


def test_grader_error_is_counted_and_incorrect_by_default():
    st = GradeStats()
    assert answers_equal("5", HUGE, GradeOptions(timeout_s=1), stats=st) is False
    assert st.errors == 1


def test_math_verify_from_a_thread_keeps_its_timeout():
    """math-verify's timeout is signal based (main thread only); from a thread a worker process runs it."""
    out = {}

    def work():
        out["ok"] = answers_equal(r"\frac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}")
        st = GradeStats()
        out["huge"] = answers_equal("5", HUGE, GradeOptions(timeout_s=1), stats=st)
        out["errors"] = st.errors

    t = threading.Thread(target=work)
    t.start()
    t.join(120)
    assert out == {"ok": True, "huge": False, "errors": 1}
