"""``curate()``: join, run the steps in order, write the training files and the report."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import Tally, file_sha256, package_versions, write_dataset_files, write_json
from ..progress import info
from ..prompts import instruction_for
from ..records import detect_lang
from .config import CurateConfig
from .join import join_traces
from .report import agreement_report, report_markdown, plot_lengths, length_summary
from .rows import Ctx
from .steps import STEPS

HIST_SAMPLE = 5_000  # rows measured for the "before" length histogram (every k-th row beyond this)


def _flag_truncated(rows: list, tally: Tally) -> int:
    """Count (``flagged: truncated_kept``, with file:line) the training rows whose teacher was cut off by the
    token limit (``finish_reason: length``): a recipe without ``drop_truncated`` (the seed's) keeps them, and
    one with no reasoning tags is an unfinished chain that reads like a whole one. Returns the count."""
    n = 0
    for r in rows:
        if (r.finish_reason or "").lower() == "length":
            n += 1
            tally.add("flagged: truncated_kept", f"{r.where}: {r.pid}" + ("" if r.reasoning else " (no reasoning tags: "
                                                                           "an unfinished chain kept as an answer)"))
    return n


def curate(cfg: CurateConfig, traces_path: str | Path, problems_paths: list[str | Path], out_dir: str | Path,
           eval_problems: list[str | Path] | None = None) -> dict[str, Any]:
    """Write the training files, ``dataset_info.json`` and the curate report into ``out_dir``; return the report.

    ``eval_problems`` (files) are added to ``cfg.decontaminate.eval_problems`` for the decontaminate step.
    """
    t_start = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    eval_paths = [Path(p) for p in [*cfg.decontaminate.eval_problems, *(eval_problems or [])]]
    problems_paths = list(problems_paths or [])
    rows = join_traces(cfg, traces_path, problems_paths, tally)
    ctx = Ctx(cfg, tally, eval_paths)
    n_in = len(rows)
    raw_lengths_text = [r.text(cfg.keep_think) for r in rows]  # "before": as read, think tags and all
    lang_of: dict[str, str] = {}  # problem id -> "en" | "zh", by the question's script
    langs_in: dict[str, int] = {}
    for r in rows:
        lang = lang_of.get(r.problem.id) or lang_of.setdefault(r.problem.id, detect_lang(r.problem.question))
        langs_in[lang] = langs_in.get(lang, 0) + 1
    per_step = []
    timing: dict[str, float] = {"read": round(time.monotonic() - t_start, 2)}
    for name in cfg.steps:
        t = time.monotonic()
        before = len(rows)
        rows = STEPS[name](rows, ctx)
        per_step.append({"step": name, "in": before, "out": len(rows), "removed": before - len(rows),
                         **ctx.extra.get(name, {})})
        timing[name] = round(time.monotonic() - t, 2)
    truncated = _flag_truncated(rows, tally)
    t = time.monotonic()
    dataset = []
    for r in rows:
        p = r.problem
        lang = lang_of[p.id]
        row = {"instruction": instruction_for(lang), "input": p.question, "output": r.text(cfg.keep_think),
               "problem_id": p.id, "source": p.source, "lang": lang}  # records.Example, as a plain dict
        if r.label is not None:
            row["answer"], row["agreement"] = r.label, r.agreement
        dataset.append(row)
    timing["rows"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    # lengths for the report: student tokens when a step loaded the tokenizer, else characters
    step = max(1, math.ceil(n_in / HIST_SAMPLE))
    if ctx.tokenizer_loaded:
        unit = f"{cfg.tokenizer} tokens"
        before_len = ctx.count_tokens(raw_lengths_text[::step])
        after_len = ctx.tokens(rows)
    else:
        unit = "characters"
        before_len = [len(s) for s in raw_lengths_text[::step]]
        after_len = [len(d["output"]) for d in dataset]
    timing["lengths"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    report: dict[str, Any] = {
        "rows_in": n_in, "rows_out": len(dataset), "steps": per_step, "counts": tally.to_dict(),
        "languages_in": dict(sorted(langs_in.items())),
        "languages": {k: sum(d["lang"] == k for d in dataset) for k in sorted({d["lang"] for d in dataset})},
        "by_family": {f: sum(d["source"] == f for d in dataset) for f in sorted({d["source"] for d in dataset})},
        "lengths": {"unit": unit, "before": length_summary(before_len), "after": length_summary(after_len),
                    "before_sampled_every": step},
        "flagged": {"truncated_kept": truncated},
        "agreement": agreement_report(ctx.agreement),
        "grader": ctx.grade.to_dict(),
        "files": {},
        "inputs": {str(p): file_sha256(p) for p in [Path(traces_path), *map(Path, problems_paths),
                                                    *(eval_paths if "decontaminate" in cfg.steps else [])]},
        "config": cfg.model_dump(mode="json"),
        "versions": package_versions(),
    }
    if not dataset:
        write_json(out / "curate_report.json", report)
        removed = "; ".join(f"{s['step']} removed {s['removed']}" for s in per_step) or "no steps ran"
        raise UserError(f"curate: the dataset is empty after curation ({n_in} rows in; {removed}; "
                        f"unreadable: {tally.total() - sum(s['removed'] for s in per_step)}); see {out / 'curate_report.json'}")
    report["files"] = write_dataset_files(dataset, out, cfg.dataset_name, cfg.formats)
    timing["write"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    plot = None
    if cfg.plot:
        plot = "curate_report.png"
        plot_lengths(out / plot, report, before_len, after_len, unit, ctx.agreement)
    write_json(out / "curate_report.json", report)
    (out / "curate_report.md").write_text(report_markdown(report, plot), encoding="utf-8")
    timing["report"] = round(time.monotonic() - t, 2)
    timing["total"] = round(time.monotonic() - t_start, 2)
    steps_txt = ", ".join(f"{s['step']} -{s['removed']}" for s in per_step)
    info(f"curate: {n_in} traces -> {len(dataset)} rows ({steps_txt}) in {timing['total']:.1f}s")
    if tally.total():
        info("curate: " + "; ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())))
    return report | {"timing": timing}  # timings are returned, never written: the files stay byte-identical
