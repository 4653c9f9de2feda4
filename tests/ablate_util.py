"""Helpers for the ablate tests: a tiny base config (tiny model, a few chain_sum problems) and counters."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml


def tiny_base(model: Path) -> dict[str, Any]:
    """Two data sources (``a`` with think tags in its outputs, ``b`` plain); 1 optimizer step; 4 eval problems."""
    return {
        "problems": {"seed": 3, "families": {"chain_sum": {"n_train": 14, "n_eval": 4, "params": {
            "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}}}},
        "sources": {"a": {"n": 6, "generate": {"reference_think": True}}, "b": {"n": 8}},
        "train": {"base_model": str(model), "max_steps": 1, "warmup_ratio": 0.0, "batch_size": 4,
                  "max_length": 256, "threads": 1},
        "eval": {"max_new_tokens": 4, "batch_size": 8, "threads": 1},
    }


def write_grid(path: Path, model: Path, **spec: Any) -> Path:
    data = {"name": "t", "base": tiny_base(model), "bootstrap": {"samples": 100}, **spec}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def executions(cache: Path, status: str = "ok") -> list[dict[str, Any]]:
    p = cache / "executions.jsonl"
    rows = [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []
    return [r for r in rows if r["status"] == status or not status]


def count(cache: Path) -> Counter:
    """Stage executions that finished, by stage kind (problems, sources, generate, curate, train, eval)."""
    return Counter(r["stage"] for r in executions(cache))
