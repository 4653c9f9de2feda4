"""The leaderboard's numbers against hand-computed values, and the bootstrap helpers of mathdistill.stats."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from mathdistill.leaderboard import CellResult, compute, pareto_front, write
from mathdistill.scores import ScoreConfig, aggregate, es_score, score_columns, score_stat
from mathdistill.stats import bootstrap, paired_bootstrap, resample

MB50 = 50_000_000  # MLS = 100 at or below 50 MB


def preds(correct, cqs, tokens):
    return [{"problem_id": f"p{i}", "source": "chain_sum", "correct": bool(c), "cqs": {"cqs": q}, "tokens": t,
             "finish_reason": "stop"} for i, (c, q, t) in enumerate(zip(correct, cqs, tokens))]


# Cell A: AS 50, CQS 50, ES 100 (64 tokens), MLS 100 -> Overall 0.4*50 + 0.3*50 + 0.2*100 + 0.1*100 = 65
A = preds([1, 1, 0, 0], [50] * 4, [64] * 4)
# Cell B: AS 75, CQS 60, ES 100*log(4096/128)/log(4096/64) = 500/6, MLS 100 -> Overall 30 + 18 + 100/6 + 10
B = preds([1, 1, 1, 0], [60] * 4, [128] * 4)
OV_B = 30 + 18 + 0.2 * 500 / 6 + 10


def test_scores_and_paired_difference_match_hand_computed_values(tmp_path):
    cells = [CellResult("A", {"x": 0}, predictions=A, model_bytes=MB50),
             CellResult("B", {"x": 1}, predictions=B, model_bytes=MB50),
             CellResult("C", {"x": 2}, status="failed", reason="train: training diverged to NaN/inf")]
    board = compute(cells, "A", ["x"], samples=2000, seed=1)
    rows = {r["name"]: r for r in board["rows"]}
    assert [r["name"] for r in board["rows"]] == ["B", "A"]  # best first
    assert rows["A"]["scores"]["overall"]["point"] == pytest.approx(65.0)
    assert rows["B"]["scores"]["overall"]["point"] == pytest.approx(OV_B, abs=1e-4)
    d = rows["B"]["diff"]
    assert d["AS"]["point"] == pytest.approx(25.0) and d["CQS"]["point"] == pytest.approx(10.0)
    assert d["ES"]["point"] == pytest.approx(500 / 6 - 100, abs=1e-4) and d["MLS"]["point"] == 0
    assert d["overall"]["point"] == pytest.approx(OV_B - 65, abs=1e-4)
    # Per problem, B - A differs only in the third answer: a resample holding it k times (k ~ Binomial(4, 1/4))
    # gives 10k + 3 - 10/3. P(k=0) = 0.32 > 2.5 %; P(k <= 2) = 0.949 < 97.5 % < P(k <= 3): the interval is k = 0 .. 3.
    assert d["overall"]["lo"] == pytest.approx(3 - 10 / 3, abs=1e-4)
    assert d["overall"]["hi"] == pytest.approx(30 + 3 - 10 / 3, abs=1e-4)
    assert rows["B"]["diff_significant"] is False
    assert rows["A"]["diff"]["overall"] == {"point": 0.0, "lo": 0.0, "hi": 0.0}
    assert board["failed"] == [{"name": "C", "values": {"x": "2"}, "reason": "train: training diverged to NaN/inf"}]

    paths = write(board, tmp_path, "hand")
    md = paths["md"].read_text()
    assert "| 1 | B | 1 |" in md and "| +9.7 [-0.3, +29.7] |" in md
    assert "## Failed cells" in md and "| C | train: training diverged to NaN/inf |" in md
    rows_csv = list(csv.DictReader(paths["csv"].open()))
    assert [r["cell"] for r in rows_csv] == ["B", "A", "C"]
    assert float(rows_csv[0]["d_overall"]) == pytest.approx(OV_B - 65, abs=1e-3)
    assert float(rows_csv[0]["d_overall_lo"]) == pytest.approx(3 - 10 / 3, abs=1e-3)
    assert rows_csv[2]["status"] == "failed" and rows_csv[2]["reason"].startswith("train: training diverged")
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "<table>" in page and "http" not in page.replace("http-equiv", "")


def test_effect_of_a_field_is_averaged_over_the_others():
    # 2 x 2 grid, AS only differs: x0y0 0 %, x1y0 25 %, x0y1 50 %, x1y1 100 %
    same = ([50] * 4, [64] * 4)
    cells = [CellResult("x0y0", {"x": 0, "y": 0}, predictions=preds([0, 0, 0, 0], *same), model_bytes=MB50),
             CellResult("x1y0", {"x": 1, "y": 0}, predictions=preds([1, 0, 0, 0], *same), model_bytes=MB50),
             CellResult("x0y1", {"x": 0, "y": 1}, predictions=preds([1, 1, 0, 0], *same), model_bytes=MB50),
             CellResult("x1y1", {"x": 1, "y": 1}, predictions=preds([1, 1, 1, 1], *same), model_bytes=MB50)]
    eff = {(e["field"], e["value"]): e for e in compute(cells, "x0y0", ["x", "y"], samples=200)["effects"]}
    assert eff[("x", "1")]["effect"]["point"] == pytest.approx((0.4 * 25 + 0.4 * 50) / 2)  # pairs (x1y0-x0y0, x1y1-x0y1)
    assert eff[("y", "1")]["effect"]["point"] == pytest.approx((0.4 * 50 + 0.4 * 75) / 2)
    assert eff[("x", "1")]["basis"] == "2 matched pairs" and eff[("x", "1")]["vs"] == "0"


def test_set_valued_field_gets_one_effect_per_member():
    cells = [CellResult("a", {"use": ["a"]}, predictions=preds([0, 0, 0, 0], [0] * 4, [64] * 4), model_bytes=MB50),
             CellResult("b", {"use": ["b"]}, predictions=preds([1, 0, 0, 0], [0] * 4, [64] * 4), model_bytes=MB50),
             CellResult("ab", {"use": ["a", "b"]}, predictions=preds([1, 1, 1, 0], [0] * 4, [64] * 4), model_bytes=MB50)]
    eff = {(e["field"], e["value"]): e for e in compute(cells, "ab", ["use"], samples=200)["effects"]}
    assert eff[("use", "+a")]["effect"]["point"] == pytest.approx(0.4 * 50)  # ab - b
    assert eff[("use", "+b")]["effect"]["point"] == pytest.approx(0.4 * 75)  # ab - a
    assert eff[("use", "a")]["vs"] == "a+b" and eff[("use", "a")]["effect"]["point"] == pytest.approx(-0.4 * 75)


def test_failed_baseline_falls_back_to_the_first_scored_cell():
    cells = [CellResult("base", {"x": 0}, status="failed", reason="eval: boom"),
             CellResult("A", {"x": 1}, predictions=A, model_bytes=MB50)]
    board = compute(cells, "base", ["x"], samples=50)
    assert board["baseline"] == "A" and "has no scores" in board["baseline_note"]


def test_pareto_front():
    # (tokens, Overall): the 2nd is beaten by the 1st on both; the 4th ties the 3rd's Overall at more tokens
    assert pareto_front([(50, 60), (80, 55), (120, 70), (130, 70), (40, 30)]) == [0, 2, 4]


# ---------------------------------------------------------------------------------------------- stats

def test_bootstrap_of_two_values_spans_both():
    # resampled means of [0, 10] are 0, 5, 10 with probability 1/4, 1/2, 1/4: the 95 % interval is [0, 10]
    iv = bootstrap([0.0, 10.0], samples=4000)
    assert (iv.point, iv.lo, iv.hi) == (5.0, 0.0, 10.0)


def test_paired_difference_of_a_constant_shift_has_no_width():
    rng = np.random.default_rng(0)
    a = rng.normal(50, 20, 200)
    iv = paired_bootstrap(a, a + 3.0)  # B - A
    assert iv.point == pytest.approx(3.0) and iv.lo == pytest.approx(3.0) and iv.hi == pytest.approx(3.0)
    assert paired_bootstrap(a + 3.0, a).point == pytest.approx(-3.0)
    unpaired = bootstrap(a + 3.0)
    assert unpaired.hi - unpaired.lo > 4  # each run alone varies a lot; the pairing removes it


def test_paired_bootstrap_requires_the_same_problems():
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_score_stat_equals_scores_aggregate():
    rows = preds([1, 0, 1, 1, 0], [80, 20, 60, 100, 0], [30, 500, 90, 64, 4096])
    cfg = ScoreConfig()
    agg = aggregate(rows, 3 * MB50, cfg)
    s = score_stat(cfg)(resample(score_columns(rows, 3 * MB50), np.arange(5)[None, :]))
    for k in ("AS", "CQS", "ES", "MLS", "overall"):
        assert s[k][0] == pytest.approx(agg[k], abs=1e-3), k
    assert s["ES"][0] == pytest.approx(es_score(sum([30, 500, 90, 64, 4096]) / 5), abs=1e-9)
    assert not math.isnan(s["overall"][0])


# ------------------------------------------------------------------- a judge that leaves chains unscored

def test_judge_eval_with_unscored_chains_goes_through_ablate_to_a_leaderboard(tiny_model, tmp_path):
    """eval.cqs: judge where the judge cannot score some chains (NaN CQS): every cell is scored and the
    leaderboard is written (it used to crash in the bootstrap after every cell had run)."""
    import json
    import re

    from ablate_util import tiny_base
    from mathdistill.ablate import GridSpec, ablate
    from test_eval_endpoint import Endpoint

    class Picky(Endpoint):
        """Refuses to grade the chains of problems with an even reference answer."""

        def reply(self, body):
            status, out = super().reply(body)
            msgs = body["messages"]
            if msgs[0]["content"].startswith("You grade"):
                ref = re.search(r"Reference answer: (.*)", msgs[1]["content"]).group(1).strip()
                if int(float(ref)) % 2 == 0:
                    out["choices"][0]["message"]["content"] = "I would rather not say."
            return status, out

    judge = Picky()
    try:
        base = tiny_base(tiny_model)
        base["eval"] |= {"cqs": "judge", "judge": {"base_url": judge.url, "model": "judge-m"}}
        summary = ablate(GridSpec.model_validate({"name": "j", "base": base, "grid": {"eval.max_new_tokens": [4, 6]}}),
                         tmp_path / "grid", cache_dir=tmp_path / "cache")
    finally:
        judge.close()
    assert summary["counts"]["ok"] == 2
    refs = [json.loads(x)["answer"] for x in open(summary["eval_file"]) if x.strip()]
    unscored = sum(int(float(r)) % 2 == 0 for r in refs)
    assert 0 < unscored < len(refs), refs  # the eval set holds both kinds
    board = json.loads((tmp_path / "grid" / "leaderboard.json").read_text())
    assert len(board["rows"]) == 2 and board["rows"][0]["cqs_kind"] == "judge"
    for c in summary["cells"]:
        s = json.loads((Path(c["stages"]["eval student"]["dir"]) / "scores.json").read_text())
        assert s["cqs_missing"] == unscored and s["cqs_kind"] == "judge"
        row = next(r for r in board["rows"] if r["name"] == c["name"])
        assert [row["scores"]["CQS"]["lo"], row["scores"]["CQS"]["hi"]] == s["intervals"]["CQS"]  # same bootstrap
    assert "judge" in (tmp_path / "grid" / "leaderboard.md").read_text()
