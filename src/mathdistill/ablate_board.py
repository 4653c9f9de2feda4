"""The grid's leaderboard assembly: read every scored cell's predictions (every seed of it) from the stage cache
and hand them to :mod:`leaderboard`, which computes and writes the files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .io import read_json, read_jsonl


def leaderboard(plan, records: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Read every scored cell's predictions from the cache and write the leaderboard files.

    ``records``: one per training run (a cell, or one seed of a cell: ``record["cell"]`` names the cell).
    The leaderboard is a function of the cells' eval outputs (by stage key), their values and reasons, and the
    bootstrap settings; when those equal the ones recorded in ``leaderboard.json``, the files are kept as they are.
    """
    from .stages import modules_digest

    inputs = {"cells": [[r["name"], r["values"], r["status"], r["reason"],
                         {k: v["key"] for k, v in r["stages"].items() if k.startswith("eval")}] for r in records],
              "baseline": plan.baseline, "varied": plan.varied, "bootstrap": plan.spec.bootstrap.model_dump(),
              "title": plan.spec.name,
              "code": modules_digest(("leaderboard", "ablate_board", "power", "stats", "scores"))}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    old = out / "leaderboard.json"
    if old.is_file() and all((out / f).is_file() for f in ("leaderboard.md", "leaderboard.csv", "leaderboard.html")):
        prev = read_json(old)
        if prev.get("inputs_sha256") == digest:
            return prev
    from . import leaderboard as lb

    cells, bases, seen_base = [], [], set()
    by_name = {c.name: c for c in plan.cells}
    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        groups.setdefault(rec.get("cell") or rec["name"], []).append(rec)
    for name, recs in groups.items():
        cfg = by_name[name].config
        ok = [r for r in recs if r["status"] == "ok"]
        first = ok[0] if ok else recs[0]
        cr = lb.CellResult(name, first["values"], first["status"], first["reason"], score=cfg.eval.score)
        runs = []
        for rec in ok:
            ev_dir = Path(rec["stages"]["eval student"]["dir"])
            s = read_json(ev_dir / "scores.json")
            runs.append(read_jsonl(ev_dir / "predictions.jsonl"))
            cr.model_bytes, cr.cqs_kind = s["model_bytes"], s.get("cqs_kind", "proxy")
            b = rec["stages"].get("eval base")
            if b and b["dir"] not in seen_base:
                seen_base.add(b["dir"])
                bs = read_json(Path(b["dir"]) / "scores.json")
                bases.append(lb.BaseModelResult(cfg.train.base_model, read_jsonl(Path(b["dir"]) / "predictions.jsonl"),
                                                bs["model_bytes"], cfg.eval.score))
        if runs:
            cr.predictions = runs[0]
            if len(recs) > 1:  # a cell with seeds: every seed's predictions, and which seeds failed
                cr.seed_predictions = runs
                cr.seeds = [r.get("seed") for r in ok]
                cr.seed_failures = [f"seed={r.get('seed')}: {r['reason']}" for r in recs if r["status"] != "ok"]
        cells.append(cr)
    bc = plan.spec.bootstrap
    board = lb.compute(cells, plan.baseline, plan.varied, bc.samples, bc.confidence, bc.seed, bases)
    board["inputs_sha256"] = digest
    lb.write(board, out, plan.spec.name)
    return board

