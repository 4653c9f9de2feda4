"""``ablate GRID --plan``: before any training, what the grid can resolve and what resolving more would cost.

From a pilot (a fresh eval of the base model on a seeded sample of the grid's eval set, or ``--pilot`` a
previous eval folder, predictions file or grid folder) it estimates the spread of per-problem paired Overall
differences (:mod:`power`), and prints:

- the minimum detectable Overall difference (MDE; paired, 80 % power, 95 % two-sided) at the configured eval size;
- the eval size needed to detect ``--detect`` points;
- the wall time of the grid at both sizes on this machine, from measured rates: eval seconds per problem (the
  pilot's, or those recorded by a previous grid) and seconds per training (recorded in the stage cache or a
  previous grid; a plan never trains, so without a record the training time is reported as unknown).

Where ``sigma_d`` comes from: a previous grid folder gives it *observed* (the median over cells of the spread of
per-problem differences to the baseline cell); a previous grid's ``leaderboard.csv`` alone gives it from its
paired intervals (``sigma_d = (hi - lo) / (2 z_{1-a/2}) · sqrt(n)``, median over cells); a single model's
outputs give it from an *assumed* correlation ``rho`` between two models' per-problem values (``--rho``,
default :data:`RHO`).
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from . import power
from .errors import UserError
from .io import read_json, read_jsonl, write_json, write_jsonl
from .progress import info

RHO = 0.5  # assumed correlation of two cells' per-problem Overall values when only one model's outputs are known
PILOT_N = 32


def _cols(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    from .scores import score_columns

    return score_columns(rows)


def _eval_folder(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """predictions.jsonl rows and scores.json (or {}) of an eval folder or a predictions file."""
    if path.is_dir():
        if not (path / "predictions.jsonl").is_file():
            raise UserError(f"--pilot {path}: no predictions.jsonl there; give an eval folder, a predictions.jsonl "
                            "or a previous grid folder (with ablate.json)")
        scores = read_json(path / "scores.json") if (path / "scores.json").is_file() else {}
        return read_jsonl(path / "predictions.jsonl"), scores
    if not path.is_file():
        raise UserError(f"--pilot {path}: not found")
    side = path.with_name("scores.json")
    return read_jsonl(path), (read_json(side) if side.is_file() else {})


def _u(rows: list[dict[str, Any]], scores: dict[str, Any], score_cfg) -> np.ndarray:
    return power.per_problem_overall(_cols(rows), float(scores.get("model_bytes") or 0), score_cfg)


def pilot_from_grid(folder: Path, score_cfg) -> dict[str, Any]:
    """sigma_d observed between a previous grid's cells and its baseline; its recorded eval and train times."""
    summary = read_json(folder / "ablate.json")
    ok = [c for c in summary["cells"] if c["status"] == "ok" and "eval student" in c.get("stages", {})]
    if len(ok) < 2:
        raise UserError(f"--pilot {folder}: fewer than two scored cells; a pilot grid needs two to compare")
    runs = {}
    for c in ok:
        d = Path(c["stages"]["eval student"]["dir"])
        rows, scores = _eval_folder(d)
        runs[c["name"]] = (rows, scores, c)
    base_name = summary.get("baseline") if summary.get("baseline") in runs else next(iter(runs))
    b_rows, b_scores, _ = runs[base_name]
    ids = [r["problem_id"] for r in b_rows]
    ub = _u(b_rows, b_scores, score_cfg)
    sds, rhos = [], []
    for name, (rows, scores, _) in runs.items():
        if name == base_name or [r["problem_id"] for r in rows] != ids:
            continue
        ua = _u(rows, scores, score_cfg)
        sds.append(power.sd_diff_observed(ua, ub))
        if ua.std() > 0 and ub.std() > 0:
            rhos.append(float(np.corrcoef(ua, ub)[0, 1]))
    if not sds:
        raise UserError(f"--pilot {folder}: no cell was scored on the baseline's problems")
    eval_s = [c["stages"]["eval student"]["seconds"] / max(1, len(runs[c["name"]][0]))
              for c in ok if c["stages"]["eval student"].get("executed")]
    train_s = [c["stages"]["train"]["seconds"] for c in ok if c.get("stages", {}).get("train", {}).get("executed")]
    return {"kind": "grid", "source": str(folder), "n": len(ids), "sd_d": float(statistics.median(sds)),
            "sd_d_basis": f"observed: median over {len(sds)} cells of the sd of per-problem differences to {base_name!r}",
            "rho_observed": round(float(statistics.median(rhos)), 3) if rhos else None,
            "sd": float(ub.std(ddof=1)), "eval_s_per_problem": statistics.median(eval_s) if eval_s else None,
            "eval_basis": f"median of {len(eval_s)} evals recorded in {folder / 'ablate.json'}" if eval_s else None,
            "train_s": statistics.median(train_s) if train_s else None,
            "train_basis": f"median of {len(train_s)} trainings recorded in {folder / 'ablate.json'}" if train_s else None}


def pilot_from_leaderboard(csv_path: Path) -> dict[str, Any]:
    """sigma_d implied by a previous grid's paired Overall intervals (its ``leaderboard.csv``; 95 % intervals)."""
    import csv
    import math

    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("status") == "ok" and r.get("d_overall_lo") not in (None, "")]
    za = power.z(0.975)
    sds = [(float(r["d_overall_hi"]) - float(r["d_overall_lo"])) / (2 * za) * math.sqrt(int(r["n"])) for r in rows
           if float(r["d_overall_hi"]) > float(r["d_overall_lo"])]
    if not sds:
        raise UserError(f"--pilot {csv_path}: no paired difference with an interval; give a grid with two scored cells")
    return {"kind": "leaderboard", "source": str(csv_path), "n": int(rows[0]["n"]), "sd": float("nan"),
            "sd_d": float(statistics.median(sds)),
            "sd_d_basis": f"observed: median over {len(sds)} cells of the spread implied by their 95% paired intervals",
            "rho_observed": None, "eval_s_per_problem": None, "eval_basis": None, "train_s": None, "train_basis": None}


def pilot_from_eval(rows: list[dict[str, Any]], scores: dict[str, Any], score_cfg, rho: float, source: str) -> dict[str, Any]:
    """sigma of one model's per-problem Overall, sigma_d from the assumed rho; its eval rate when recorded."""
    u = _u(rows, scores, score_cfg)
    meta = scores.get("meta") or {}
    wall = meta.get("gen_wall_s")
    return {"kind": "eval", "source": source, "n": len(rows), "sd": float(u.std(ddof=1)),
            "sd_d": power.sd_diff_assumed(u, rho),
            "sd_d_basis": f"assumed: sd of the pilot's per-problem Overall x sqrt(2(1-rho)), rho = {rho}",
            "rho_observed": None,
            "eval_s_per_problem": wall / len(rows) if wall and rows else None,
            "eval_basis": (f"pilot: {wall:.0f}s for {len(rows)} problems ({meta.get('gen_tokens_per_s')} tokens/s, "
                           f"{scores.get('mean_tokens', 0):.0f} tokens/problem)") if wall else None,
            "train_s": None, "train_basis": None}


def recorded_train_seconds(cache: Path) -> tuple[float | None, str | None]:
    """Median wall time of the trainings recorded in a stage cache (``train/<key>/train_summary.json``)."""
    walls = []
    for f in sorted((cache / "train").glob("*/train_summary.json")) if (cache / "train").is_dir() else []:
        try:
            walls.append(float(json.loads(f.read_text())["wall_s"]))
        except (OSError, ValueError, KeyError):
            continue
    if not walls:
        return None, None
    return statistics.median(walls), f"median of {len(walls)} trainings recorded in {cache / 'train'}"


def run_pilot_eval(plan, eval_file: str, out: Path, n: int, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """Score the base model on a seeded sample of ``n`` problems of the eval set (no training)."""
    from .evaluate import evaluate

    probs = read_jsonl(eval_file)
    keep = sorted(random.Random(seed).sample(range(len(probs)), min(n, len(probs))))
    pf = out / "pilot_problems.jsonl"
    write_jsonl(pf, [probs[i] for i in keep])
    cfg = plan.base.eval.model_copy(update={"report": False, "limit": None})
    model = plan.base.train.base_model
    info(f"ablate --plan: pilot eval of the base model {model} on {len(keep)} of the {len(probs)} eval problems")
    scores = evaluate(cfg, pf, out / "pilot", model=model, label="pilot")
    return read_jsonl(out / "pilot" / "predictions.jsonl"), scores, f"pilot eval of {model} ({out / 'pilot'})"


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "unknown"
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def estimate(pilot: dict[str, Any], n_eval: int, n_cells: int, seeds: int, detect: float | None,
             alpha: float = power.ALPHA, pw: float = power.POWER) -> dict[str, Any]:
    """The plan's figures from a pilot: MDE at ``n_eval``, ``n`` for ``detect``, wall time at each size."""
    sd_d = pilot["sd_d"]
    out: dict[str, Any] = {"n_eval": n_eval, "cells": n_cells, "seeds": seeds, "alpha": alpha, "power": pw,
                           "sd_d": round(sd_d, 3), "mde": round(power.mde(sd_d, n_eval, alpha, pw), 3)}
    out["warnings"] = []
    if not sd_d > 0:  # no spread: MDE 0 and "n = 2" would be nonsense, not a plan
        out["warnings"].append("the pilot shows no spread (sigma_d = 0: identical outputs, or every output cut at the "
                               "token limit), so it cannot size an eval; give a pilot with varied outputs (more "
                               "--pilot-n, a larger eval.max_new_tokens) or --pilot a previous grid")
    if pilot.get("n", 0) < 10:
        out["warnings"].append(f"the pilot has only {pilot.get('n', 0)} problems: sigma_d is a rough guess "
                               "(use --pilot-n 20 or more)")
    if detect:
        out["detect"] = detect
        out["n_needed"] = power.n_for(sd_d, detect, alpha, pw) if sd_d > 0 else None
    runs = n_cells * seeds
    evals = runs + 1  # every cell's student (each seed), and the base model once
    for key, n in (("time_at_n_eval", n_eval), ("time_at_n_needed", out.get("n_needed"))):
        if n is None:
            continue
        ev = evals * n * pilot["eval_s_per_problem"] if pilot.get("eval_s_per_problem") else None
        tr = runs * pilot["train_s"] if pilot.get("train_s") else None
        out[key] = {"n": n, "eval_s": ev, "train_s": tr, "trainings": runs, "evals": evals,
                    "total_s": (ev + tr) if ev is not None and tr is not None else None}
    return out


def format_plan(est: dict[str, Any], pilot: dict[str, Any]) -> list[str]:
    lvl, pw = int(round((1 - est["alpha"]) * 100)), int(round(est["power"] * 100))
    zs = power.z_sum(est["alpha"], est["power"])
    lines = [f"ablate --plan: {est['cells']} cells x {est['seeds']} seed(s), eval set {est['n_eval']} problems; nothing trained",
             f"  pilot: {pilot['source']} ({pilot['n']} problems)"
             + (f": sd of per-problem Overall {pilot['sd']:.1f} points" if pilot["sd"] == pilot["sd"] else "")
             + (f", observed between-cell correlation {pilot['rho_observed']}" if pilot.get("rho_observed") is not None else ""),
             f"  sigma_d = {est['sd_d']:.2f} points ({pilot['sd_d_basis']})",
             f"  MDE = (z_{{1-a/2}} + z_{{power}}) * sigma_d / sqrt(n) = {zs:.2f} * {est['sd_d']:.2f} / sqrt({est['n_eval']})"
             f" = {est['mde']:.2f} Overall points (paired, {pw}% power, {lvl}% two-sided)"]
    if "n_needed" in est and est["n_needed"] is None:
        lines.append(f"  to detect {est['detect']:g} points: unknown (the pilot shows no spread)")
    elif "n_needed" in est:
        lines.append(f"  to detect {est['detect']:g} points: n = ceil(({zs:.2f} * {est['sd_d']:.2f} / {est['detect']:g})^2)"
                     f" = {est['n_needed']} eval problems")
    for key, what in (("time_at_n_eval", "at the configured size"), ("time_at_n_needed", "at the needed size")):
        t = est.get(key)
        if not t:
            continue
        ev = (f"eval {_fmt_s(t['eval_s'])} = {t['evals']} evals (at most: cells x seeds + base) x {t['n']} problems x "
              f"{pilot['eval_s_per_problem']:.2f} s/problem (from {pilot['eval_basis']})") if t["eval_s"] is not None else \
            "eval time unknown (no measured rate)"
        tr = (f"train {_fmt_s(t['train_s'])} = {t['trainings']} trainings (at most) x {pilot['train_s']:.0f} s "
              f"(from {pilot['train_basis']})") if t["train_s"] is not None else \
            "train time unknown: no training recorded (run the grid small once, or --pilot a previous grid folder)"
        lines.append(f"  wall time {what} ({t['n']} problems): {_fmt_s(t['total_s'])}; {ev}; {tr}")
    lines += [f"  WARNING: {w}" for w in est.get("warnings", [])]
    return lines


def plan_grid(spec, out_dir: str | Path | None = None, cache_dir: str | Path | None = None, source: str = "grid",
              pilot: str | Path | None = None, detect: float | None = None, pilot_n: int = PILOT_N,
              rho: float = RHO) -> dict[str, Any]:
    """Print and return the power plan of a grid (``plan.json`` in the grid folder). Never trains."""
    from .ablate import expand, grid_eval_set
    from .run import StageStore

    plan = expand(spec, source)
    if pilot is None and pilot_n < 2:
        raise UserError("ablate --plan: without --pilot it scores the base model on --pilot-n problems; give 2 or more")
    out = Path(out_dir or Path("runs") / spec.name).resolve()
    (out / "plan").mkdir(parents=True, exist_ok=True)
    store = StageStore(Path(cache_dir).resolve() if cache_dir else out / "cache", retry_failed=spec.retry_failed)
    eval_file = grid_eval_set(plan, store, source)
    n_eval = len(read_jsonl(eval_file))
    score_cfg = plan.base.eval.score
    if pilot is not None:
        p = Path(pilot)
        if p.is_dir() and (p / "ablate.json").is_file():
            pil = pilot_from_grid(p, score_cfg)
        elif p.name == "leaderboard.csv" or (p.is_dir() and (p / "leaderboard.csv").is_file()):
            pil = pilot_from_leaderboard(p if p.is_file() else p / "leaderboard.csv")
        else:
            rows, scores = _eval_folder(p)
            pil = pilot_from_eval(rows, scores, score_cfg, rho, str(p))
    else:
        rows, scores, what = run_pilot_eval(plan, eval_file, out / "plan", pilot_n)
        pil = pilot_from_eval(rows, scores, score_cfg, rho, what)
    if pil.get("eval_s_per_problem") is None and pilot is not None and pilot_n > 0:  # the rate, measured here
        rows, scores, what = run_pilot_eval(plan, eval_file, out / "plan", pilot_n)
        rate = pilot_from_eval(rows, scores, score_cfg, rho, what)
        pil["eval_s_per_problem"], pil["eval_basis"] = rate["eval_s_per_problem"], rate["eval_basis"]
    if pil.get("train_s") is None:
        pil["train_s"], pil["train_basis"] = recorded_train_seconds(store.root)
    seeds = max(len(c.seeds or [None]) for c in plan.cells)
    est = estimate(pil, n_eval, len(plan.cells), seeds, detect)
    lines = format_plan(est, pil)
    from rich.markup import escape

    for ln in lines:
        info(escape(ln))
    result = {"estimate": est, "pilot": pil, "lines": lines}
    write_json(out / "plan" / "plan.json", result)
    return result
