from fractions import Fraction

import pytest

from mathdistill.arith import ArithError, evaluate, find_steps, parse_number


@pytest.mark.parametrize("text,expected", [
    # family: plain operations
    ("98 + 93 = 191", [True]),
    ("98 + 93 = 190", [False]),
    ("35 × 3 = 105 kiwi", [True]),
    ("22 x 11 = 242", [True]),
    ("2x4=8", [True]),
    ("84 ÷ 4 = 21", [True]),
    # family: separators, currency, decimals
    ("$1,200 + $300 = $1,500.", [True]),
    ("10/3 = 3.33", [True]),                   # rounded to the written places
    ("10/3 = 3.3333", [True]),
    ("10/3 = 3.5", [False]),
    ("0.1 + 0.2 = 0.3", [True]),
    ("25% of 96 = 24", [True]),
    # family: parentheses and negatives
    ("87 + (-59) = 28", [True]),
    ("(-32 / 8) = 3.33", [False]),
    ("-(28) = -28", [True]),
    # family: chained equalities compare each pair
    ("12 + 35 = 50 + 35 = 85", [False, True]),
    # family: not arithmetic, left alone
    ("3x + 2 = 11", []),
    ("6*h + 66 = 456", []),
    ("k = 5", []),
    ("on 2024-05-01 we met", []),
    ("ratio 3:4 = 0.75", []),
])
def test_find_steps(text, expected):
    assert [s.ok for s in find_steps(text)] == expected


@pytest.mark.parametrize("expr,value", [("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("-2 - -3", 1), ("1,234 + 1", 1235),
                                        ("2^10", 1024), ("50%", Fraction(1, 2))])
def test_evaluate(expr, value):
    assert evaluate(expr)[0] == value


@pytest.mark.parametrize("expr", ["1/0", "__import__('os')", "2 **", "9" * 40 + " * 9", "(" * 150 + "1" + ")" * 150])
def test_evaluate_rejects(expr):
    with pytest.raises(ArithError):
        evaluate(expr)


def test_parse_number():
    assert parse_number("1,234.5") == Fraction(2469, 2)
    assert parse_number("$12") == 12 and parse_number("3/4") == Fraction(3, 4)
    assert parse_number("2 + 3") is None and parse_number("abc") is None


from mathdistill.arith import format_like, located_steps, repair_steps  # noqa: E402


@pytest.mark.parametrize("value,claimed,expected", [
    # family: the claim's own style is kept
    (Fraction(42), "43", "42"),
    (Fraction(28), "29.0", "28.0"),                   # GSM-Symbolic writes 28.0
    (Fraction(1500), "1,600", "1,500"),              # thousands separators
    (Fraction(-3825), "-3826", "-3825"),
    (Fraction(10, 3), "3.5", "3.3"),                 # rounded to the written places
    (Fraction(10, 3), "4", "3.33"),                  # an integer claim for a fraction: 2 decimals
    (Fraction(1, 8), "0.100", "0.125"),
    # family: not a plain number, or ambiguous: no rewrite
    (Fraction(85), "50 + 35", None),
    (Fraction(20), "25%", None),                     # 0.2 * 100 = 25%: 20 or 20 %?
])
def test_format_like(value, claimed, expected):
    assert format_like(value, claimed) == expected


@pytest.mark.parametrize("text,fixed,n_fixes,reused", [
    # family: a wrong result written once (nothing reuses it): that number only
    ("7 * 6 = 43\nThe answer is 42.", "7 * 6 = 42\nThe answer is 42.", 1, 0),
    ("$1,200 + $300 = $1,600.", "$1,200 + $300 = $1,500.", 1, 0),
    # family: the chain went on with the wrong value: later uses and the steps built on them are recomputed
    ("3 + 5 = 9\nThe answer is 9.", "3 + 5 = 8\nThe answer is 8.", 1, 1),
    ("2 + 3 + 3 = 9 pizzas.\n9 * 30 = 270 pizzas.\n#### 270", "2 + 3 + 3 = 8 pizzas.\n8 * 30 = 240 pizzas.\n#### 240", 2, 2),
    ("14 x 2 = 29.0 eggs.\n29.0 - 4 = 25.0 eggs.\n#### 25.0", "14 x 2 = 28.0 eggs.\n28.0 - 4 = 24.0 eggs.\n#### 24.0", 2, 2),
    # family: a number inside a longer one is not a use of it
    ("5 + 7 = 13\n113 + 13.5 = 126.5\n#### 126.5", "5 + 7 = 12\n113 + 13.5 = 126.5\n#### 126.5", 1, 0),
    # family: nothing wrong, nothing changed
    ("98 + 93 = 191\n#### 191", "98 + 93 = 191\n#### 191", 0, 0),
])
def test_repair_steps(text, fixed, n_fixes, reused):
    rep = repair_steps(text)
    assert rep.ok and rep.text == fixed and len(rep.fixes) == n_fixes and rep.reused == reused
    assert all(s.ok for s in find_steps(rep.text))


@pytest.mark.parametrize("text,reason", [
    ("12 + 35 = 50 + 35 = 85", "expression"),   # the wrong right side is an expression: no single number to fix
    ("0.2 * 100 = 25%", "format"),
])
def test_repair_steps_refuses(text, reason):
    rep = repair_steps(text)
    assert not rep.ok and rep.reason == reason and rep.text == text


def test_repair_steps_is_bounded_and_start_keeps_earlier_steps():
    chain = "\n".join(f"{i} + 1 = {i + 2}" for i in range(30))
    rep = repair_steps(chain, propagate=False, max_fixes=5)
    assert not rep.ok and rep.reason == "too_many" and len(rep.fixes) == 5
    text = "2 + 2 = 5\n3 + 3 = 7"
    rep = repair_steps(text, start=text.index("\n"))
    assert rep.ok and rep.text == "2 + 2 = 5\n3 + 3 = 6"


def test_located_steps_spans_point_at_the_written_result():
    text = "Olivia hides 7 x 12 = 84 eggs.\r\nSo 25% of 96 = 24, and 12 + 35 = 50 + 35 = 85"
    got = [text[s.span[0]:s.span[1]] for s in located_steps(text)]
    assert got == ["84", "24", "50 + 35", "85"]


def test_deep_parentheses_are_refused_not_a_recursion_error():
    from mathdistill.arith import ArithError, evaluate, find_steps

    with pytest.raises(ArithError):
        evaluate("(" * 150 + "1" + ")" * 49)
    assert evaluate("(" * 20 + "1 + 2" + ")" * 20)[0] == 3
    assert find_steps("(" * 150 + "1 = 1") == []
