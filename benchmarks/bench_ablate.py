"""The stage cache of `mathdistill ablate`: a 4-cell grid run twice, then with a fifth cell added.

Tiny random Llama student (built here, seconds), 2 data sources, a few chain_sum problems: every cell trains
and evaluates for real, only small. Each run is the real command (`python -m mathdistill ablate GRID`) in a
subprocess, timed from the outside (interpreter start and leaderboard included). Figures:

  second run / first run                              wall time, same 4 cells, all cached     (goal <= 5 %)
  old 4 cells in the 5-cell run / their first run     per-cell wall time from ablate.json     (goal <= 5 %)
  stage executions in runs 2 and 3 for the old cells  from <cache>/executions.jsonl           (must be 0)

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_ablate.py          # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # conftest.build_tiny_model: the tests' tiny student


def base(model: Path) -> dict:
    return {
        "problems": {"seed": 3, "families": {"chain_sum": {"n_train": 32, "n_eval": 16, "params": {
            "min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}}}},
        "sources": {"a": {"n": 12, "generate": {"reference_think": True}}, "b": {"n": 20}},
        "train": {"base_model": str(model), "epochs": 1, "batch_size": 4, "max_length": 384},
        "eval": {"max_new_tokens": 24, "batch_size": 8},
    }


def run(grid: Path, out: Path, env: dict) -> float:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "mathdistill", "ablate", str(grid), "--out", str(out)],
                       env=env, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"ablate failed:\n{r.stderr[-3000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()
    from conftest import build_tiny_model

    work = a.keep or Path(tempfile.mkdtemp(prefix="bench-ablate-"))
    model = build_tiny_model(work / "tiny")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "MATHDISTILL_HOME": str(work / "home"), "TOKENIZERS_PARALLELISM": "false"}
    grid4 = {"name": "bench", "base": base(model), "grid": {"train.seed": [1, 2], "curate.keep_think": [False, True]},
             "bootstrap": {"samples": 1000}}
    g = work / "grid.yaml"
    g.write_text(yaml.safe_dump(grid4, sort_keys=False))
    out = work / "out"

    t1 = run(g, out, env)
    s1 = json.loads((out / "ablate.json").read_text())
    n_exec1 = len((out / "cache" / "executions.jsonl").read_text().splitlines())
    t2 = run(g, out, env)
    s2 = json.loads((out / "ablate.json").read_text())
    n_exec2 = len((out / "cache" / "executions.jsonl").read_text().splitlines())

    g.write_text(yaml.safe_dump({**grid4, "cells": [{"name": "seed3", "set": {"train.seed": 3}}]}, sort_keys=False))
    t3 = run(g, out, env)
    s3 = json.loads((out / "ablate.json").read_text())
    execs = [json.loads(x) for x in (out / "cache" / "executions.jsonl").read_text().splitlines()]
    new_exec = execs[n_exec2:]
    old = [c["name"] for c in s1["cells"]]
    first_old = sum(c["seconds"] for c in s1["cells"])
    third_old = sum(c["seconds"] for c in s3["cells"] if c["name"] in old)
    new_cell = next(c for c in s3["cells"] if c["name"] == "seed3")
    figures = {
        "first_run_s": round(t1, 2), "second_run_s": round(t2, 2), "second_over_first": round(t2 / t1, 4),
        "second_run_stage_executions": n_exec2 - n_exec1,
        "old_cells_first_s": round(first_old, 2), "old_cells_in_5cell_run_s": round(third_old, 4),
        "old_cells_share": round(third_old / first_old, 4),
        "old_cell_stage_executions_in_5cell_run": sum(not r["label"].startswith(("seed3:", "grid:")) for r in new_exec),
        "new_cell_stages": new_cell["executed"], "new_cell_s": new_cell["seconds"], "five_cell_run_s": round(t3, 2),
        "five_cell_over_first": round(t3 / t1, 4), "cells_cached_run2": s2["counts"]["cached"],
    }
    print(f"4-cell grid, first run:                {t1:7.1f} s  ({s1['counts']['ok']} cells, {n_exec1} stage executions)")
    print(f"same grid again:                       {t2:7.1f} s  = {100 * t2 / t1:5.1f} % of the first   (goal <= 5 %); "
          f"{n_exec2 - n_exec1} stage executions")
    print(f"+1 cell, time on the 4 old cells:      {third_old:7.2f} s  = {100 * third_old / first_old:5.2f} % of their first "
          f"run ({first_old:.1f} s; goal <= 5 %); {figures['old_cell_stage_executions_in_5cell_run']} stage executions")
    print(f"+1 cell, whole command:                {t3:7.1f} s  = {100 * t3 / t1:5.1f} % of the first; the new cell ran "
          f"{', '.join(new_cell['executed'])} in {new_cell['seconds']:.1f} s")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
