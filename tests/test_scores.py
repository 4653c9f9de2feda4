import math

import pytest

from mathdistill.scores import ScoreConfig, aggregate, cqs_proxy, es_score, mls_score, overall


@pytest.mark.parametrize("t,expected", [
    (64, 100.0), (32, 100.0), (1, 100.0),          # at and below T_lo: full marks
    (4096, 0.0), (10_000, 0.0),                     # at and beyond T_hi: zero
    (512, 50.0),                                    # geometric middle of 64..4096
    (128, 100 * math.log(32) / math.log(64)),
])
def test_es_edges(t, expected):
    assert es_score(t) == pytest.approx(expected)


@pytest.mark.parametrize("s,expected", [
    (50e6, 100.0), (1e6, 100.0),
    (16e9, 0.0), (64e9, 0.0),
    (math.sqrt(50e6 * 16e9), 50.0),
])
def test_mls_edges(s, expected):
    assert mls_score(s) == pytest.approx(expected)


def test_overall_weights_and_edition_weights():
    assert overall(100, 0, 0, 0) == pytest.approx(40)
    assert overall(0, 100, 0, 0) == pytest.approx(30)
    assert overall(50, 50, 50, 50) == pytest.approx(50)
    other = ScoreConfig(w_as=0.3, w_cqs=0.4)
    assert overall(100, 0, 0, 0, other) == pytest.approx(30)


def test_cqs_proxy_components():
    good = cqs_proxy("98 + 93 = 191\n191 - 77 = 114\n#### 114", "What is 98 + 93 - 77?")
    assert good["cqs"] == 100.0 and good["steps"] == 2
    wrong_step = cqs_proxy("98 + 93 = 190\n190 - 77 = 113\n#### 113", "q")
    assert wrong_step["step_accuracy"] == 0.5 and wrong_step["cqs"] < 100
    inconsistent = cqs_proxy("98 + 93 = 191\n191 - 77 = 114\n#### 7", "q")
    assert inconsistent["consistent"] == 0.0
    loop = cqs_proxy("\n".join(["we add the numbers again and again"] * 5), "q")
    assert loop["no_repetition"] == 0.0 and loop["has_steps"] == 0.0
    zh = cqs_proxy("3 + 5 = 8\n#### 8", "小明有 3 个苹果,又买了 5 个,一共几个?")
    assert zh["same_language"] == 0.0


def test_aggregate_by_family():
    rows = [
        {"source": "a", "correct": True, "tokens": 64, "cqs": {"cqs": 100.0, "steps": 1, "steps_ok": 1}},
        {"source": "a", "correct": False, "tokens": 64, "cqs": {"cqs": 50.0, "steps": 1, "steps_ok": 0}},
        {"source": "b", "correct": True, "tokens": 4096, "cqs": {"cqs": 0.0}},
    ]
    s = aggregate(rows, model_bytes=50_000_000)
    assert s["n"] == 3 and s["AS"] == pytest.approx(200 / 3, abs=1e-3)
    assert s["by_family"]["a"]["AS"] == 50.0 and s["by_family"]["a"]["ES"] == 100.0
    assert s["by_family"]["b"]["ES"] == 0.0
    assert s["MLS"] == 100.0 and s["cqs_kind"] == "proxy"
    assert s["step_accuracy"] == 50.0


def test_step_accuracy_per_family_in_scores_and_report(tmp_path):
    """`step_accuracy` (share of checked a op b = c steps that hold) overall and per family, and the report's
    per-family tables show it (n/a for a family without steps)."""
    import json

    from mathdistill.report import report

    rows = [
        {"problem_id": "1", "source": "arith", "correct": True, "tokens": 64, "output": "2 + 2 = 4\n#### 4",
         "cqs": {"kind": "proxy", "cqs": 100.0, "steps": 3, "steps_ok": 2}},
        {"problem_id": "2", "source": "arith", "correct": True, "tokens": 64, "output": "1 + 1 = 2\n#### 2",
         "cqs": {"kind": "proxy", "cqs": 100.0, "steps": 1, "steps_ok": 1}},
        {"problem_id": "3", "source": "words", "correct": False, "tokens": 64, "output": "no idea",
         "cqs": {"kind": "proxy", "cqs": 0.0, "steps": 0, "steps_ok": 0}},
    ]
    s = aggregate(rows, model_bytes=50_000_000)
    assert s["step_accuracy"] == 75.0
    assert s["by_family"]["arith"]["step_accuracy"] == 75.0 and s["by_family"]["words"]["step_accuracy"] is None
    (tmp_path / "scores.json").write_text(json.dumps(s))
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    md = report(tmp_path).read_text()
    arith = md.split("### arith", 1)[1].split("###", 1)[0]
    words = md.split("### words", 1)[1].split("##", 1)[0]
    assert "steps ok %" in arith and "| 75.0 |" in arith
    assert "steps ok %" in words and "| n/a |" in words


def test_math500_levels_are_families_too():
    """A benchmark with difficulty levels (MATH-500's meta.level) is scored per level as well as per subject."""
    from mathdistill.benchmarks import load
    from mathdistill.evaluate import score_outputs
    from mathdistill.records import Problem

    probs = [Problem(**r) for r in load("math500@60")]
    outs = [{"output": f"The answer is \\boxed{{{p.answer}}}." if i % 3 else "no idea", "tokens": 30,
             "finish_reason": "stop"} for i, p in enumerate(probs)]
    preds = [p.model_dump() for p in score_outputs(probs, outs)]
    assert [p["level"] for p in preds] == [p.meta["level"] for p in probs]
    scores = aggregate(preds, 1e8)
    for lv in sorted({p.meta["level"] for p in probs}):
        rows = [r for r in preds if r["level"] == lv]
        fam = scores["by_family"][f"math500/level {lv}"]
        assert fam["n"] == len(rows)
        assert fam["AS"] == pytest.approx(100 * sum(r["correct"] for r in rows) / len(rows), abs=1e-3)
    subjects = {p.source for p in probs}
    assert subjects <= set(scores["by_family"]) and sum(scores["by_family"][s]["n"] for s in subjects) == len(probs)
