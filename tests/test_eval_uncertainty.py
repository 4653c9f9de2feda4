"""Bootstrap intervals for every score, paired differences, and the refusal to compare unlike evals."""

import json
import math

import numpy as np
import pytest

from conftest import write_jsonl
from mathdistill.errors import UserError
from mathdistill.evaluate import EvalConfig, compare, evaluate
from mathdistill.scores import ScoreConfig, aggregate, bootstrap_intervals, paired_bootstrap


def rows(correct, tokens=100, cqs=50.0, source="f"):
    return [{"source": source, "correct": bool(c), "tokens": tokens, "cqs": {"cqs": cqs}} for c in correct]


def test_every_score_has_an_interval():
    r = rows([1, 0] * 50, tokens=200) + rows([1] * 20, tokens=80, cqs=90.0, source="g")
    s = aggregate(r, model_bytes=100_000_000)
    for k in ("AS", "CQS", "ES", "overall"):
        lo, hi = s["intervals"][k]
        assert lo < hi, k  # these scores vary from problem to problem
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


# ---- one bootstrap: eval, --compare and the leaderboard agree; scipy agrees -----------------------------

def _pred_rows(correct, cqs, tokens):
    return [{"problem_id": f"q{i}", "source": "f", "correct": bool(c), "tokens": t, "cqs": {"cqs": q}}
            for i, (c, q, t) in enumerate(zip(correct, cqs, tokens))]


rng = np.random.default_rng(11)
TABLE = {  # name: (rows of model A, rows of model B, bytes A, bytes B)
    "coin flips": (_pred_rows(rng.integers(0, 2, 60), rng.uniform(0, 100, 60), rng.integers(20, 300, 60)),
                   _pred_rows(rng.integers(0, 2, 60), rng.uniform(0, 100, 60), rng.integers(20, 300, 60)), 1e8, 3e8),
    "B better": (_pred_rows([1] * 20 + [0] * 30, [40.0] * 50, [128] * 50),
                 _pred_rows([1] * 32 + [0] * 18, [70.0] * 50, [90] * 50), 2e8, 2e8),
    "judge gaps": (_pred_rows([1, 0, 1, 1] * 10, [None, 50.0, 80.0, None] * 10, [64, 100, 80, 500] * 10),
                   _pred_rows([1, 1, 0, 1] * 10, [90.0, None, 10.0, 60.0] * 10, [64, 90, 70, 400] * 10), 1e8, 1e8),
}


@pytest.mark.parametrize("name", sorted(TABLE))
@pytest.mark.parametrize("seed", [0, 5])
def test_eval_compare_and_leaderboard_give_the_same_intervals(name, seed):
    from mathdistill.leaderboard import CellResult, compute

    a, b, ba, bb = TABLE[name]
    cfg = ScoreConfig(bootstrap_seed=seed)
    board = compute([CellResult("A", {"x": 0}, predictions=a, model_bytes=int(ba), score=cfg),
                     CellResult("B", {"x": 1}, predictions=b, model_bytes=int(bb), score=cfg)], "A", ["x"])
    assert board["samples"] == cfg.bootstrap_samples == 2000 and board["seed"] == seed  # defaults from ScoreConfig
    row = {r["name"]: r for r in board["rows"]}
    for label, rws, size in (("A", a, ba), ("B", b, bb)):
        ev = aggregate(rws, size, cfg)["intervals"]
        for k in ("AS", "CQS", "ES", "MLS", "overall"):
            s = row[label]["scores"][k]
            assert [s["lo"], s["hi"]] == ev[k], (label, k)
    d = paired_bootstrap(a, b, ba, bb, cfg)  # what eval --compare A B prints
    for k in ("AS", "CQS", "ES", "MLS", "overall"):
        lb = row["B"]["diff"][k]
        assert lb["point"] == d[k]["diff"] and [lb["lo"], lb["hi"]] == d[k]["ci"], k


@pytest.mark.parametrize("name", sorted(TABLE))
def test_intervals_agree_with_scipy_percentile_bootstrap(name):
    """scipy.stats.bootstrap(method="percentile") draws its own resamples: the ends agree within Monte Carlo
    error (both at 20,000 resamples: the standard error of an end is about 0.1 point here) plus, for AS, one step
    of its grid (100/n points: an end that sits where two values meet may round to either)."""
    stats = pytest.importorskip("scipy.stats")
    a, b, _, _ = TABLE[name]
    cfg = ScoreConfig(bootstrap_samples=20000)
    correct_a = np.array([float(r["correct"]) for r in a])
    correct_b = np.array([float(r["correct"]) for r in b])
    step = 100 / len(a) + 0.5
    ours = bootstrap_intervals(a, 1e8, cfg)["AS"]
    ref = stats.bootstrap((100 * correct_a,), np.mean, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert ours == pytest.approx([ref.low, ref.high], abs=step)
    diff = paired_bootstrap(a, b, 1e8, 1e8, cfg)["AS"]["ci"]
    ref = stats.bootstrap((100 * correct_a, 100 * correct_b), lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis),
                          paired=True, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert diff == pytest.approx([ref.low, ref.high], abs=step)
    tok_a = np.array([float(r["tokens"]) for r in a])  # a non-linear statistic: ES of the mean tokens
    es = lambda t, axis=-1: 100 * np.clip(np.log(4096 / np.mean(t, axis=axis)) / np.log(64), 0, 1)  # noqa: E731
    ref = stats.bootstrap((tok_a,), es, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert bootstrap_intervals(a, 1e8, cfg)["ES"] == pytest.approx([ref.low, ref.high], abs=1.0)


def test_no_clamping_an_interval_may_exclude_its_point():
    """A statistic the resampling biases (distinct values among 30 distinct ones: a resample holds about 63 %
    of them) has its point outside the percentile interval; the interval is reported as drawn, not stretched."""
    from mathdistill.stats import bootstrap

    distinct = lambda x: np.array([len(np.unique(r)) for r in np.atleast_2d(x)], dtype=float)  # noqa: E731
    iv = bootstrap(np.arange(30.0), distinct, samples=2000)
    assert iv.point == 30 and 14 < iv.lo <= iv.hi < 25


# ---- MLS unknown ----------------------------------------------------------------------------------------

def test_unknown_model_size_gives_null_mls_and_a_three_term_overall(tmp_path):
    pf = write_jsonl(tmp_path / "p.jsonl", PROBS)
    preds = write_jsonl(tmp_path / "x.jsonl", [{"problem_id": p["id"], "output": f"#### {p['answer']}", "tokens": 64}
                                                for p in PROBS])
    s = evaluate(EvalConfig(report=True), pf, tmp_path / "ev", model=None, predictions=preds)
    written = json.loads((tmp_path / "ev" / "scores.json").read_text())
    cfg = ScoreConfig()
    for block in (written, written["by_family"]["sum"]):
        assert block["MLS"] is None and block["model_bytes"] is None and block["overall_terms"] == ["AS", "CQS", "ES"]
        expected = (cfg.w_as * block["AS"] + cfg.w_cqs * block["CQS"] + cfg.w_es * block["ES"]) / (cfg.w_as + cfg.w_cqs + cfg.w_es)
        assert block["overall"] == pytest.approx(expected, abs=1e-3)
        assert block["intervals"]["MLS"] is None
    assert s["overall"] < 100 and written["intervals"]["overall"][0] <= written["intervals"]["overall"][1]
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "size unknown" in md
    known = evaluate(EvalConfig(report=False, model_bytes=10**8), pf, tmp_path / "ev2", model=None, predictions=preds)
    assert known["MLS"] == pytest.approx(100 * math.log(160) / math.log(320)) and known["overall_terms"] == ["AS", "CQS", "ES", "MLS"]
    with pytest.raises(UserError, match="no model size"):
        compare(tmp_path / "ev", tmp_path / "ev2")


def test_tokenizer_counts_tokens_without_setting_the_size(tmp_path, tiny_model):
    pf = write_jsonl(tmp_path / "p.jsonl", PROBS[:4])
    preds = write_jsonl(tmp_path / "x.jsonl", [{"problem_id": p["id"], "output": f"#### {p['answer']}"} for p in PROBS[:4]])
    s = evaluate(EvalConfig(report=False), pf, tmp_path / "ev", model=None, predictions=preds, tokenizer=str(tiny_model))
    assert s["MLS"] is None and s["model_bytes"] is None and s["mean_tokens"] > 1
    assert s["meta"]["tokenizer"] == str(tiny_model)
    with_model = evaluate(EvalConfig(report=False), pf, tmp_path / "ev2", model=str(tiny_model), predictions=preds)
    assert with_model["MLS"] is not None and with_model["model_bytes"] > 0 and with_model["mean_tokens"] == s["mean_tokens"]
    with pytest.raises(UserError, match="--tokenizer"):
        evaluate(EvalConfig(report=False), pf, tmp_path / "ev3", model=None, predictions=preds)
