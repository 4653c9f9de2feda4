"""Power before and after a grid: the MDE / eval-size formulas against simulated grids with a known effect,
the leaderboard's MDE and "not resolvable" label, seeds (hierarchical bootstrap), and ``ablate --plan``."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from mathdistill import power
from mathdistill.ablate_plan import estimate, format_plan, pilot_from_eval
from mathdistill.leaderboard import CellResult, compute, csv_rows, to_markdown
from mathdistill.scores import ScoreConfig, es_score, score_differences, score_stat
from mathdistill.stats import bootstrap_indices, hierarchical_draws, resample
from cli_util import run_cli as _cli


def _model(rng, n, shift, difficulty, rho_latent=0.6):
    """Per-problem columns of one simulated model: correct from a latent (difficulty shared across models),
    CQS and tokens that track it. ``shift`` raises the model's ability (a known effect)."""
    own = rng.standard_normal(n)
    latent = rho_latent * difficulty + math.sqrt(1 - rho_latent ** 2) * own + shift
    correct = (latent > 0.3).astype(float)
    cqs = np.clip(60 + 12 * latent + 8 * rng.standard_normal(n), 0, 100)
    tokens = np.clip(np.exp(4.3 - 0.15 * latent + 0.3 * rng.standard_normal(n)), 5, 4000)
    return {"correct": correct, "cqs": cqs, "tokens": tokens, "bytes": np.full(n, 1e8)}


def _overall(cols, cfg):
    """Overall of a model on all its problems (the leaderboard's statistic, no resampling)."""
    return float(score_stat(cfg)(resample(cols, np.arange(len(cols["correct"]))[None, :]))["overall"][0])


def _true_diff(shift, cfg, n=400_000):
    rng = np.random.default_rng(123)
    d = rng.standard_normal(n)
    a, b = _model(rng, n, shift, d), _model(rng, n, 0.0, d)
    return _overall(a, cfg) - _overall(b, cfg)


@pytest.mark.parametrize("alpha,pw,zs", [(0.05, 0.8, 2.8016), (0.05, 0.9, 3.2415), (0.01, 0.8, 3.4175)])
def test_z_sum_matches_the_normal_quantiles(alpha, pw, zs):
    assert power.z_sum(alpha, pw) == pytest.approx(zs, abs=1e-3)


@pytest.mark.parametrize("sd,n,delta", [(15.0, 48, None), (15.0, None, 2.0), (4.0, None, 0.5)])
def test_mde_and_n_invert_each_other(sd, n, delta):
    if n:
        m = power.mde(sd, n)
        assert power.n_for(sd, m) in (n, n + 1)
    else:
        k = power.n_for(sd, delta)
        assert power.mde(sd, k) <= delta < power.mde(sd, k - 1)


def test_per_problem_overall_averages_to_overall():
    cfg = ScoreConfig()
    rng = np.random.default_rng(0)
    cols = _model(rng, 300, 0.0, rng.standard_normal(300))
    u = power.per_problem_overall(cols, 1e8, cfg)
    assert u.mean() == pytest.approx(_overall(cols, cfg), abs=0.05)


def test_planned_n_detects_a_known_effect_in_about_80_percent_of_replicates():
    """The plan: sigma_d from a pilot of two simulated models, n for the known true difference; then fresh grids of
    n problems, each judged by the leaderboard's paired bootstrap interval: the effect is detected in ~80 %."""
    cfg = ScoreConfig()
    shift = 0.12
    delta = _true_diff(shift, cfg)
    assert 1.5 < delta < 4.0  # a small effect, the size people look for
    rng = np.random.default_rng(1)
    d = rng.standard_normal(3000)
    pa, pb = _model(rng, 3000, shift, d), _model(rng, 3000, 0.0, d)
    sd_d = power.sd_diff_observed(power.per_problem_overall(pa, 1e8, cfg), power.per_problem_overall(pb, 1e8, cfg))
    n = power.n_for(sd_d, delta)
    assert 100 < n < 3000
    reps, hits = 300, 0
    for r in range(reps):
        g = np.random.default_rng(1000 + r)
        dd = g.standard_normal(n)
        a, b = _model(g, n, shift, dd), _model(g, n, 0.0, dd)
        iv = score_differences(b, a, cfg, bootstrap_indices(n, 400, r))["overall"]  # a - b
        hits += iv.lo > 0
    # 80 % expected; 300 replicates give a binomial sd of 2.3 points
    assert 0.72 <= hits / reps <= 0.88, (hits / reps, n, delta, sd_d)


def test_assumed_rho_path_matches_a_gaussian_grid_with_that_correlation():
    """One model's pilot + an assumed rho: simulate two models whose per-problem values correlate exactly rho."""
    rng = np.random.default_rng(5)
    rho, sd, delta = 0.6, 18.0, 2.0
    pilot = 50 + sd * rng.standard_normal(5000)
    n = power.n_for(power.sd_diff_assumed(pilot, rho), delta)
    hits = 0
    for r in range(400):
        g = np.random.default_rng(r)
        z1, z2 = g.standard_normal(n), g.standard_normal(n)
        a = 50 + sd * z1
        b = 50 + delta + sd * (rho * z1 + math.sqrt(1 - rho ** 2) * z2)
        diff = b - a
        hits += diff.mean() - 1.96 * diff.std(ddof=1) / math.sqrt(n) > 0
    assert 0.73 <= hits / 400 <= 0.87


def test_mde_from_interval_is_the_formula_at_the_intervals_standard_error():
    se = 1.7
    lo, hi = 0.3 - 1.959964 * se, 0.3 + 1.959964 * se
    assert power.mde_from_interval(lo, hi) == pytest.approx(power.z_sum() * se, rel=1e-4)


def _rows(correct, tokens=20):
    return [{"problem_id": f"p{i}", "correct": bool(c), "cqs": {"cqs": 50.0}, "tokens": tokens} for i, c in enumerate(correct)]


def test_leaderboard_shows_mde_and_not_resolvable_instead_of_no_effect():
    rng = np.random.default_rng(2)
    base = rng.random(60) < 0.4
    near = base.copy()
    near[:2] = ~near[:2]  # two problems differ: a small difference, interval includes 0
    far = np.ones(60, bool)  # every problem right: resolved
    cells = [CellResult("base", {"x": 0}, predictions=_rows(base), model_bytes=10**8),
             CellResult("near", {"x": 1}, predictions=_rows(near), model_bytes=10**8),
             CellResult("far", {"x": 2}, predictions=_rows(far), model_bytes=10**8)]
    board = compute(cells, "base", ["x"], samples=500)
    rows = {r["name"]: r for r in board["rows"]}
    d = rows["near"]["diff"]["overall"]
    assert d["lo"] <= 0 <= d["hi"] and rows["near"]["resolution"] == "not resolvable at this size"
    assert rows["near"]["mde"] == pytest.approx(power.mde_from_interval(d["lo"], d["hi"]), abs=1e-3)
    assert rows["far"]["resolution"] == "resolved"
    assert rows["base"]["resolution"] == "baseline" and "mde" not in rows["base"]  # not "not resolvable", no MDE 0.0
    cols, csv_out = csv_rows(board)
    assert {r["cell"]: (r["resolution"], r["d_overall_mde"]) for r in csv_out}["base"] == ("baseline", "")
    md = to_markdown(board, "t")
    assert "MDE" in md and "not resolvable at this size" in md and "no effect" not in md.replace("not evidence of no effect", "")
    assert all("mde" in e and "resolution" in e for e in board["effects"])


def test_seeds_widen_the_interval_and_average_the_score():
    """A cell trained with three seeds that disagree: its interval covers seeds and problems, so it is wider than
    any one seed's, and its score is the seeds' mean."""
    rng = np.random.default_rng(3)
    base = rng.random(80) < 0.3
    seeds = [rng.random(80) < p for p in (0.3, 0.5, 0.7)]
    one = compute([CellResult("b", {"x": 0}, predictions=_rows(base), model_bytes=10**8),
                   CellResult("s", {"x": 1}, predictions=_rows(seeds[1]), model_bytes=10**8)], "b", ["x"], samples=800)
    multi = CellResult("s", {"x": 1}, predictions=_rows(seeds[0]), model_bytes=10**8,
                       seed_predictions=[_rows(s) for s in seeds], seeds=[0, 1, 2])
    three = compute([CellResult("b", {"x": 0}, predictions=_rows(base), model_bytes=10**8), multi], "b", ["x"], samples=800)
    r1 = next(r for r in one["rows"] if r["name"] == "s")
    r3 = next(r for r in three["rows"] if r["name"] == "s")
    mean_as = float(np.mean([100 * s.mean() for s in seeds]))
    assert r3["scores"]["AS"]["point"] == pytest.approx(mean_as, abs=1e-3)
    w1 = r1["diff"]["overall"]["hi"] - r1["diff"]["overall"]["lo"]
    w3 = r3["diff"]["overall"]["hi"] - r3["diff"]["overall"]["lo"]
    assert w3 > 1.3 * w1 and r3["mde"] > r1["mde"]
    assert r3["seeds"] == [0, 1, 2]


def test_hierarchical_draws_with_one_seed_are_the_problem_draws():
    x = np.random.default_rng(9).random(30)
    idx = bootstrap_indices(30, 50, 4)
    point, draws = hierarchical_draws([x], indices=idx, seed=1)
    assert point[0] == pytest.approx(x.mean()) and np.array_equal(draws, x[idx].mean(axis=-1))


def test_estimate_and_time_from_a_pilot():
    rows = _rows(np.random.default_rng(4).random(40) < 0.5)
    pil = pilot_from_eval(rows, {"model_bytes": 10**8, "meta": {"gen_wall_s": 80.0, "gen_tokens_per_s": 10}},
                          ScoreConfig(), 0.5, "pilot")
    pil["train_s"], pil["train_basis"] = 300.0, "recorded"
    est = estimate(pil, 48, 14, 1, 2.0)
    assert est["mde"] == pytest.approx(power.mde(pil["sd_d"], 48), abs=1e-3)
    assert est["n_needed"] == power.n_for(pil["sd_d"], 2.0)
    t = est["time_at_n_needed"]  # 15 evals (14 cells + base) x n x 2 s/problem + 14 trainings x 300 s
    assert t["total_s"] == pytest.approx(15 * est["n_needed"] * 2.0 + 14 * 300.0)


@pytest.mark.parametrize("n,spread", [(4, True), (40, False)])
def test_a_pilot_that_cannot_size_an_eval_is_flagged_not_trusted(n, spread):
    """A tiny pilot is a rough guess; a pilot with no spread (every output the same, e.g. all cut at the token
    limit) must not say that 2 problems resolve any effect."""
    correct = np.arange(n) % 2 == 0 if spread else np.zeros(n, bool)
    pil = pilot_from_eval(_rows(correct), {"model_bytes": 10**8, "meta": {"gen_wall_s": 8.0, "gen_tokens_per_s": 10}},
                          ScoreConfig(), 0.5, "pilot")
    est = estimate(pil, 48, 4, 1, 2.0)
    text = "\n".join(format_plan(est, pil))
    if spread:
        assert est["n_needed"] >= 2 and "only 4 problems" in text
    else:
        assert est["n_needed"] is None and "no spread" in text and "n = ceil" not in text
        assert "time_at_n_needed" not in est


def test_plan_cli_prints_the_estimate_and_never_trains(tmp_path, capsys):
    """--plan with --pilot (a previous eval's predictions): MDE, n for --detect, the formula; nothing trained."""
    import yaml

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "p", "base": {"problems": {"seed": 3, "families": {"chain_sum": {
        "n_train": 10, "n_eval": 30, "params": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}}}}},
        "grid": {"train.lora_r": [4, 8]}, "seeds": [0, 1]}))
    ev = tmp_path / "ev"
    ev.mkdir()
    rows = _rows(np.random.default_rng(6).random(30) < 0.5)
    (ev / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ev / "scores.json").write_text(json.dumps({"model_bytes": 10**8, "mean_tokens": 20,
                                                "meta": {"gen_wall_s": 30.0, "gen_tokens_per_s": 20}}))
    out = tmp_path / "o"
    assert _cli(["ablate", grid, "--plan", "--pilot", ev, "--detect", "2.0", "--out", out]) == 0, capsys.readouterr().err
    text = capsys.readouterr()
    text = text.out + text.err
    plan = json.loads((out / "plan" / "plan.json").read_text())["estimate"]
    assert plan["cells"] == 2 and plan["seeds"] == 2 and plan["n_eval"] == 30
    assert re.search(r"MDE = .* = \d+\.\d+ Overall points", text) and f"= {plan['n_needed']} eval problems" in text
    assert "train time unknown" in text
    assert "1.00 s/problem (from pilot: 30s for 30 problems" in text  # every time next to the figures it comes from
    assert not (out / "cache" / "train").exists() and not (out / "cells").exists()


@pytest.mark.parametrize("args,msg", [(["--detect", "2"], "--detect and --pilot go with --plan"),
                                      (["--plan", "--detect", "0"], "--detect must be above 0")])
def test_plan_flag_errors_are_one_line(tmp_path, capsys, args, msg):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: p\ngrid: {train.lora_r: [4, 8]}\n")
    assert _cli(["ablate", grid, *args, "--out", tmp_path / "o"]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("kw,line", [
    ({"grid": {"train.lora_r": [4]}, "seeds": []}, "seeds: give distinct seeds, e.g. [0, 1, 2] (got [])"),
    ({"grid": {"train.lora_r": [4]}, "seeds": [1, 1]}, "seeds: give distinct seeds, e.g. [0, 1, 2] (got [1, 1])"),
    ({"grid": {"train.seed": [1, 2]}, "seeds": [0, 1]}, "grid.train.seed: seeds: already varies the training seed; drop one of them"),
])
def test_invalid_seeds_are_one_line(kw, line):
    from mathdistill.ablate import GridError, GridSpec, expand

    with pytest.raises(GridError) as e:
        expand(GridSpec.model_validate({"name": "t", **kw}), "g.yaml")
    assert str(e.value) == f"g.yaml: {line}"


def test_seed_runs_set_train_seed_per_cell():
    from mathdistill.ablate import GridSpec, expand, seed_runs

    plan = expand(GridSpec.model_validate({"name": "t", "grid": {"train.lora_r": [4, 8]}, "seeds": [0, 1, 2],
                                           "cells": [{"name": "one", "set": {"train.lora_r": 16}, "seeds": [7]}]}))
    runs = seed_runs(plan.cells)
    assert [(r.group, r.seed, r.config.train.seed) for r in runs] == [
        ("lora_r=4", 0, 0), ("lora_r=4", 1, 1), ("lora_r=4", 2, 2), ("lora_r=8", 0, 0), ("lora_r=8", 1, 1),
        ("lora_r=8", 2, 2), ("one", 7, 7)]
    assert len({r.folder for r in runs}) == len(runs)


def test_a_grid_with_seeds_runs_every_seed_and_scores_cells_over_them(tiny_model, tmp_path, capfd):
    """Two cells x two seeds: four trainings (train.seed differs), one leaderboard row per cell over both seeds."""
    from mathdistill.ablate import GridSpec, ablate

    from ablate_util import count, tiny_base

    spec = GridSpec.model_validate({"name": "t", "base": tiny_base(tiny_model), "bootstrap": {"samples": 100},
                                    "grid": {"curate.keep_think": [False, True]}, "seeds": [0, 1]})
    s = ablate(spec, tmp_path / "g")
    assert s["counts"]["ok"] == 4 and count(tmp_path / "g" / "cache")["train"] == 4
    err = capfd.readouterr().err  # the counts at the start and at the end speak of the same things
    assert "(4 trainings: cells x seeds)" in err and "4 of 4 trainings (2 cells x seeds) scored" in err
    assert sorted((r["cell"], r["seed"]) for r in s["cells"]) == [("keep_think=false", 0), ("keep_think=false", 1),
                                                                  ("keep_think=true", 0), ("keep_think=true", 1)]
    board = json.loads((tmp_path / "g" / "leaderboard.json").read_text())
    assert sorted(r["name"] for r in board["rows"]) == ["keep_think=false", "keep_think=true"]
    assert all(r["seeds"] == [0, 1] for r in board["rows"])
    md = (tmp_path / "g" / "leaderboard.md").read_text()
    assert "hierarchical bootstrap" in md and "MDE" in md
    # the finished grid as the pilot of a plan: sigma_d observed between its cells, rates recorded by it
    from mathdistill.ablate_plan import plan_grid

    before = count(tmp_path / "g" / "cache")
    res = plan_grid(spec, tmp_path / "g", pilot=tmp_path / "g", detect=1.0, pilot_n=0)
    pil, est = res["pilot"], res["estimate"]
    assert pil["kind"] == "grid" and pil["sd_d_basis"].startswith("observed")
    assert pil["train_s"] > 0 and pil["eval_s_per_problem"] > 0
    assert est["seeds"] == 2 and est["time_at_n_eval"]["trainings"] == 4 and est["time_at_n_eval"]["total_s"] > 0
    assert count(tmp_path / "g" / "cache") == before  # planning ran no stage


def test_plan_from_a_committed_leaderboard_reads_sigma_from_its_intervals(tmp_path, capsys):
    """--pilot a previous grid's leaderboard (the committed seed grid): sigma_d from its paired intervals."""
    import csv
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    lb = root / "examples" / "seed_ablation" / "leaderboard.csv"
    rows = [r for r in csv.DictReader(lb.open()) if r["status"] == "ok" and r["d_overall_lo"]]
    n = int(rows[0]["n"])  # the eval problems every cell was scored on
    implied = sorted((float(r["d_overall_hi"]) - float(r["d_overall_lo"])) / (2 * 1.959964) * math.sqrt(n) for r in rows
                     if float(r["d_overall_hi"]) > float(r["d_overall_lo"]))
    code = _cli(["ablate", root / "examples" / "seed_ablation.yaml", "--plan", "--pilot", lb.parent, "--pilot-n", "0",
                 "--detect", "2", "--out", tmp_path / "o"])
    assert code == 0, capsys.readouterr().err
    est = json.loads((tmp_path / "o" / "plan" / "plan.json").read_text())["estimate"]
    assert est["sd_d"] == pytest.approx(float(np.median(implied)), abs=1e-3)
    assert est["n_eval"] == n == 200 and est["n_needed"] == power.n_for(est["sd_d"], 2.0)
    assert not (tmp_path / "o" / "cells").exists()


def test_a_seeded_cell_reports_the_length_of_every_seed():
    """Tokens per problem of a cell with seeds is the mean over all its seeds' outputs, as its scores are, not the
    first seed's (the leaderboard's tokens column, its CSV and the Pareto plot read it)."""
    ok = np.ones(40, bool)
    multi = CellResult("s", {"x": 1}, predictions=_rows(ok, 100), model_bytes=10**8,
                       seed_predictions=[_rows(ok, t) for t in (100, 200, 600)], seeds=[0, 1, 2])
    board = compute([CellResult("b", {"x": 0}, predictions=_rows(ok, 50), model_bytes=10**8), multi], "b", ["x"],
                    samples=200)
    rows = {r["name"]: r for r in board["rows"]}
    assert rows["s"]["mean_tokens"] == pytest.approx(300.0) and rows["b"]["mean_tokens"] == pytest.approx(50.0)
    # its ES is the seeds' mean ES, each seed's from its own lengths; the tokens column is every seed's too
    assert rows["s"]["scores"]["ES"]["point"] == pytest.approx(np.mean([es_score(t) for t in (100, 200, 600)]), abs=1e-3)
    assert "| 300 |" in to_markdown(board, "t")
