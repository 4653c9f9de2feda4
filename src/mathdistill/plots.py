"""Figures and tables that a stage writes and the run report shows again: the loss curve (``train``) and the
export table (``export``). They read only the files those stages leave (``train_log.jsonl``, ``exports.json``),
so the report needs neither stage's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .io import read_json


def plot_loss_curve(train_dir: str | Path, png: str | Path | None = None) -> Path | None:
    """Train and held-out loss against optimizer steps, from ``train_log.jsonl``, as a PNG (default
    ``<train_dir>/loss.png``). Returns the PNG path, or None when there is no log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = Path(train_dir) / "train_log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not tr and not ev:
        return None
    out = Path(png) if png else Path(train_dir) / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 3.4))
    if tr:
        ax.plot(*zip(*tr), label="train loss", lw=1.2)
    if ev:
        ax.plot(*zip(*ev), "o-", label="held-out loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per answer token")
    ax.set_title("Training loss (train and held-out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def train_dir_of(run_dir: Path) -> Path | None:
    """The train folder of a run folder (or the folder itself when it is one); None when there is none."""
    for d in (run_dir, run_dir / "train"):
        if (d / "student.json").is_file():
            return d
    return None


def export_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's exports, one dict per export: label, bytes, MLS, and AS/Overall when ``<export>/eval/scores.json``
    exists (``mathdistill eval --model EXPORT --out EXPORT/eval``)."""
    td = train_dir_of(Path(run_dir))
    if td is None or not (td / "exports.json").is_file():
        return []
    rows = []
    for r in read_json(td / "exports.json"):
        s = Path(r["out"]) / "eval" / "scores.json"
        sc = read_json(s) if s.is_file() else {}
        rows.append({**r, "AS": sc.get("AS"), "overall": sc.get("overall"), "ES": sc.get("ES"), "CQS": sc.get("CQS")})
    return rows


def export_table(run_dir: str | Path) -> list[str]:
    """Markdown lines of the export table (format, bytes, MLS, AS, Overall) for the run report; [] without exports."""
    rows = export_rows(run_dir)
    if not rows:
        return []
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lines = ["## Exports", "", "| format | bytes | MB | MLS | AS | Overall |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['bytes']:,} | {r['bytes'] / 1e6:.1f} | {fmt(r['MLS'])} | {fmt(r['AS'])} | {fmt(r['overall'])} |"
              for r in sorted(rows, key=lambda r: -r["bytes"])]
    return lines
