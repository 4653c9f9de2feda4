"""Bootstrap intervals for every score, paired differences, and the refusal to compare unlike evals."""

import json
import math

import pytest

from conftest import write_jsonl
from mathdistill.errors import UserError
from mathdistill.evaluate import EvalConfig, compare, evaluate
from mathdistill.scores import ScoreConfig, aggregate, bootstrap_intervals, paired_bootstrap


def rows(correct, tokens=100, cqs=50.0, source="f"):
    return [{"source": source, "correct": bool(c), "tokens": tokens, "cqs": {"cqs": cqs}} for c in correct]


def test_every_score_has_an_interval_around_its_value():
    r = rows([1, 0] * 50, tokens=200) + rows([1] * 20, tokens=80, cqs=90.0, source="g")
    s = aggregate(r, model_bytes=100_000_000)
    for k in ("AS", "CQS", "ES", "MLS", "overall"):
        lo, hi = s["intervals"][k]
        assert lo <= s[k] <= hi, k
        assert s["by_family"]["f"]["intervals"][k], k
    assert s["intervals"]["MLS"][0] == s["intervals"]["MLS"][1] == s["MLS"]  # no problem-to-problem variation
    assert s["interval_method"]["samples"] == 2000 and s["interval_method"]["confidence"] == 0.95


def test_as_interval_has_the_binomial_width():
    """n = 400 at 50%: the 95% interval is about +-1.96 * sqrt(.25 / 400) = +-4.9 points."""
    iv = bootstrap_intervals(rows([1, 0] * 200), 1e8)["AS"]
    assert 50 - 6 < iv[0] < 50 - 4 and 50 + 4 < iv[1] < 50 + 6


def test_intervals_shrink_with_more_problems_and_are_reproducible():
    small = bootstrap_intervals(rows([1, 0, 0, 1, 1] * 4), 1e8)
    big = bootstrap_intervals(rows([1, 0, 0, 1, 1] * 80), 1e8)
    assert (big["AS"][1] - big["AS"][0]) < (small["AS"][1] - small["AS"][0]) / 3
    assert bootstrap_intervals(rows([1, 0, 0, 1, 1] * 4), 1e8) == small
    other = bootstrap_intervals(rows([1, 0, 0, 1, 1] * 4), 1e8, ScoreConfig(bootstrap_seed=7))
    assert other != small


def test_all_correct_has_a_point_interval_and_judge_gaps_are_left_out():
    s = aggregate(rows([1] * 10), 1e8)
    assert s["intervals"]["AS"] == [100.0, 100.0]
    r = rows([1] * 4, cqs=80.0) + [{"source": "f", "correct": True, "tokens": 100, "cqs": {"cqs": None}}]
    s = aggregate(r, 1e8, cqs_kind="judge")
    assert s["CQS"] == 80.0 and s["cqs_missing"] == 1 and s["intervals"]["CQS"] == [80.0, 80.0]


def test_es_interval_follows_the_token_formula():
    r = [{"source": "f", "correct": True, "tokens": t, "cqs": {"cqs": 0.0}} for t in [64, 4096] * 30]
    s = aggregate(r, 1e8)
    mean_t = (64 + 4096) / 2
    assert s["ES"] == pytest.approx(100 * math.log(4096 / mean_t) / math.log(64), abs=1e-3)
    lo, hi = s["intervals"]["ES"]
    assert lo < s["ES"] < hi


def test_paired_difference_sees_what_overlapping_intervals_hide():
    """B fixes 6 of A's 100 problems and breaks none: the separate intervals overlap, the paired one excludes 0."""
    a = rows([1] * 50 + [0] * 50)
    b = rows([1] * 56 + [0] * 44)
    ia, ib = bootstrap_intervals(a, 1e8)["AS"], bootstrap_intervals(b, 1e8)["AS"]
    assert ia[1] > ib[0]  # overlapping
    d = paired_bootstrap(a, b, 1e8, 1e8)
    assert d["AS"]["diff"] == pytest.approx(6.0) and d["AS"]["ci"][0] > 0 and d["AS"]["significant"]
    assert d["CQS"]["diff"] == 0 and not d["CQS"]["significant"]


def test_paired_difference_of_a_model_with_itself_is_zero():
    a = rows([1, 0, 1] * 10)
    d = paired_bootstrap(a, a, 1e8, 1e8)
    for k in ("AS", "CQS", "ES", "MLS", "overall"):
        assert d[k]["diff"] == 0 and d[k]["ci"] == [0.0, 0.0] and not d[k]["significant"]


def test_paired_difference_of_mls_is_the_size_difference():
    a = rows([1] * 5)
    d = paired_bootstrap(a, a, 1e8, 1e9)
    assert d["MLS"]["diff"] < 0 and d["MLS"]["ci"][0] == d["MLS"]["ci"][1] == pytest.approx(d["MLS"]["diff"], abs=1e-3)


# ---- compare two eval folders -------------------------------------------------------------------------

PROBS = [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1), "source": "sum" if i % 2 else "odd"}
         for i in range(40)]


def _eval(tmp_path, name, right, limit=None, probs=PROBS, **cfg):
    pf = write_jsonl(tmp_path / f"{name}-eval.jsonl", probs)
    preds = write_jsonl(tmp_path / f"{name}-preds.jsonl", [
        {"problem_id": p["id"], "output": f"#### {p['answer'] if i in right else 0}", "tokens": 50 + i} for i, p in enumerate(probs)])
    c = EvalConfig(model_bytes=100_000_000, limit=limit, report=False, max_new_tokens=128, **cfg)
    evaluate(c, pf, tmp_path / name, model=None, predictions=preds, label=name)
    return tmp_path / name


def test_compare_gives_paired_differences(tmp_path):
    a = _eval(tmp_path, "a", right=set(range(0, 20)))
    b = _eval(tmp_path, "b", right=set(range(0, 30)))
    r = compare(a, b, tmp_path / "cmp")
    assert r["n"] == 40 and r["diff"]["AS"]["A"] == 50.0 and r["diff"]["AS"]["B"] == 75.0
    assert r["diff"]["AS"]["diff"] == 25.0 and r["diff"]["AS"]["significant"]
    assert r["diff"]["mean_tokens"]["diff"] == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["diff"]["AS"]["ci"] == r["diff"]["AS"]["ci"]


@pytest.mark.parametrize("change,what", [
    ({"limit": 30}, "--limit"),
    ({"max_new_tokens": 256}, "--max-new-tokens"),
    ({"seed": 3}, "--seed"),
    ({"score": ScoreConfig(w_as=0.3, w_cqs=0.4)}, "score constants"),
])
def test_compare_refuses_different_settings(tmp_path, change, what):
    a = _eval(tmp_path, "a", right={1, 2})
    kw = {"max_new_tokens": 128} | change
    pf = write_jsonl(tmp_path / "b-eval.jsonl", PROBS)
    preds = write_jsonl(tmp_path / "b-preds.jsonl", [{"problem_id": p["id"], "output": "#### 1", "tokens": 5} for p in PROBS])
    evaluate(EvalConfig(model_bytes=100_000_000, report=False, **kw), pf, tmp_path / "b", model=None, predictions=preds)
    with pytest.raises(UserError, match=f"differ in {what}") as e:
        compare(a, tmp_path / "b")
    assert "\n" not in str(e.value)


def test_compare_refuses_different_problems(tmp_path):
    a = _eval(tmp_path, "a", right={1})
    other = [dict(p, answer="7") if p["id"] == "q3" else p for p in PROBS]  # same ids, one reference changed
    b = _eval(tmp_path, "b", right={1}, probs=other)
    with pytest.raises(UserError, match=r"differ in problems \(question/answer\)"):
        compare(a, b)
    c = _eval(tmp_path, "c", right={1}, probs=PROBS[:39])
    with pytest.raises(UserError, match=r"differ in number of problems \(A: 40, B: 39\)"):
        compare(a, c)
    d = _eval(tmp_path, "d", right={1}, probs=PROBS[:39] + [dict(PROBS[39], id="z39")])
    with pytest.raises(UserError, match="differ in problem ids"):
        compare(a, d)


def test_compare_refuses_predictions_without_stated_settings(tmp_path):
    a = _eval(tmp_path, "a", right={1})
    pf = write_jsonl(tmp_path / "x.jsonl", PROBS)
    preds = write_jsonl(tmp_path / "xp.jsonl", [{"problem_id": p["id"], "output": "#### 1", "tokens": 5} for p in PROBS])
    evaluate(EvalConfig(model_bytes=10**8, report=False), pf, tmp_path / "b", model=None, predictions=preds)
    with pytest.raises(UserError, match=r"--max-new-tokens \(A: 128, B: None\).*pass --max-new-tokens/--seed"):
        compare(a, tmp_path / "b")


def test_compare_needs_eval_folders(tmp_path):
    a = _eval(tmp_path, "a", right={1})
    with pytest.raises(UserError, match="not an eval folder"):
        compare(a, tmp_path)
    (a / "predictions.jsonl").unlink()
    with pytest.raises(UserError, match="no predictions.jsonl"):
        compare(a, a)
