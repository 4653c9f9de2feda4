"""The recipe comparison: the seed's recipe against mathdistill's at the same number of optimizer steps.

Runs the ablation grid ``examples/recipe_comparison.yaml`` (2 cells, SIMULATED teacher errors on the reference
chains: see the file's header) through ``mathdistill.ablate`` and prints, from the leaderboard and the cells'
folders: the Overall difference mathdistill - seed with its paired bootstrap interval (goal >= +10), every score
per cell, AS per family, step accuracy, what curation did (rows in/out, rows and steps repaired) and the
training steps each cell took. Writes nothing but the run folder (``--out``; its stage cache makes a rerun
instant). About 25 minutes on 2 CPU cores with SmolLM2-135M:

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_recipes.py
    python benchmarks/bench_recipes.py --out runs/recipe-small --set train.max_steps=12   # any base override
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

GRID = ROOT / "examples" / "recipe_comparison.yaml"
GOAL = 10.0  # Overall points, mathdistill over seed (issue 9)


def _read(p: Path) -> dict[str, Any]:
    return json.loads(p.read_text(encoding="utf-8"))


def summarize(out: Path, baseline: str = "seed", other: str = "mathdistill") -> dict[str, Any]:
    """The figures this benchmark prints, from a finished grid folder."""
    board = _read(out / "leaderboard.json")
    ab = _read(out / "ablate.json")
    rows = {r["name"]: r for r in board["rows"]}
    cells: dict[str, Any] = {}
    for rec in ab["cells"]:
        if rec["status"] != "ok":
            cells[rec["name"]] = {"status": rec["status"], "reason": rec["reason"]}
            continue
        st = rec["stages"]
        student = _read(Path(st["eval student"]["dir"]) / "scores.json")
        cur = _read(Path(st["curate"]["dir"]) / "curate_report.json")
        tr = _read(Path(st["train"]["dir"]) / "train_summary.json")
        arith = next((s for s in cur["steps"] if s["step"] == "arith_check"), {})
        cells[rec["name"]] = {
            "status": "ok", "scores": rows[rec["name"]]["scores"], "mean_tokens": student["mean_tokens"],
            "step_accuracy": student.get("step_accuracy"),
            "AS_by_family": {f: b["AS"] for f, b in student["by_family"].items()},
            "step_accuracy_by_family": {f: b.get("step_accuracy") for f, b in student["by_family"].items()},
            "curate": {"rows_in": cur["rows_in"], "rows_out": cur["rows_out"],
                       "removed": {s["step"]: s["removed"] for s in cur["steps"]},
                       "rows_repaired": arith.get("repaired"), "steps_repaired": arith.get("steps_repaired")},
            "train": {"steps": tr["steps"], "rows": tr["rows"], "wall_s": tr["wall_s"]},
        }
    diff = rows.get(other, {}).get("diff")
    return {"n": board.get("n"), "confidence": board["confidence"], "baseline": board["baseline"], "cells": cells,
            "diff": diff, "wall_s": ab["wall_s"]}


def report(s: dict[str, Any], other: str = "mathdistill") -> str:
    L = [f"recipe comparison on {s['n']} eval problems ({s['confidence']:.0%} paired bootstrap intervals), "
         f"grid wall time {s['wall_s'] / 60:.1f} min"]
    if s["diff"]:
        d = s["diff"]["overall"]
        met = "met" if d["point"] >= GOAL else "MISSED"
        L.append(f"Overall difference {other} - {s['baseline']}: {d['point']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}] "
                 f"(goal >= +{GOAL:.0f}: {met})")
        L.append("  per score: " + ", ".join(f"{k} {v['point']:+.1f} [{v['lo']:+.1f}, {v['hi']:+.1f}]"
                                             for k, v in s["diff"].items() if k != "overall"))
    for name, c in s["cells"].items():
        if c["status"] != "ok":
            L.append(f"{name}: FAILED: {c['reason']}")
            continue
        sc = c["scores"]
        L.append(f"{name}: Overall {sc['overall']['point']:.1f}, AS {sc['AS']['point']:.1f}, CQS {sc['CQS']['point']:.1f}, "
                 f"ES {sc['ES']['point']:.1f}, MLS {sc['MLS']['point']:.1f}; {c['mean_tokens']:.0f} tokens/problem; "
                 f"step accuracy {c['step_accuracy']}")
        L.append("  AS per family: " + ", ".join(f"{f} {v:.1f}" for f, v in c["AS_by_family"].items())
                 + "; step accuracy per family: " + ", ".join(f"{f} {v}" for f, v in c["step_accuracy_by_family"].items()))
        cu, tr = c["curate"], c["train"]
        L.append(f"  curate {cu['rows_in']} -> {cu['rows_out']} rows (removed {cu['removed']}"
                 + (f"; repaired {cu['rows_repaired']} rows, {cu['steps_repaired']} steps" if cu["rows_repaired"] is not None else "")
                 + f"); train {tr['steps']} steps on {tr['rows']} rows in {tr['wall_s']:.0f}s")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=Path, default=GRID)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "recipe-comparison")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="override a base config key (repeatable)")
    args = ap.parse_args(argv)
    from mathdistill.ablate import ablate, load_grid
    from mathdistill.errors import PartialRun

    spec = load_grid(args.grid, args.sets)
    try:
        ablate(spec, args.out, source=str(args.grid))
    except PartialRun as e:
        print(e, file=sys.stderr)
    print(report(summarize(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
