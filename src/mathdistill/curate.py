"""Stage ``curate``: traces -> training rows, through named steps that each count what they removed.

The default recipe is the seed's notebook, made explicit:
  strip_think   remove ``<think>...</think>`` from outputs (also an unclosed leading ``<think>``, a stray ``</think>``)
  drop_empty    drop rows whose output is empty after that
and then Alpaca rows: ``instruction`` = the English or Chinese system prompt (by CJK characters in the
question), ``input`` = question, ``output`` = cleaned answer, plus ``dataset_info.json`` for LLaMA-Factory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import Field, field_validator

from .config import StageConfig
from .errors import UserError
from .generate import split_think
from .io import Tally, iter_raw, read_jsonl, write_json
from .progress import info
from .prompts import instruction_for
from .records import Example, Problem, Trace, detect_lang


class CurateConfig(StageConfig):
    """The curation recipe: which steps run, in order."""

    steps: list[str] = Field(default_factory=lambda: ["strip_think", "drop_empty"],
                             description="curate steps in order; known: strip_think, drop_empty, drop_truncated, verify_answer")
    keep_think: bool = Field(False, description="keep the teacher's reasoning as <think>...</think> before the answer")
    dataset_name: str = Field("mathdistill", description="dataset name in dataset_info.json (LLaMA-Factory)")

    @field_validator("steps")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown curate step(s) {unknown}; known: {sorted(STEPS)}")
        return v


Row = dict[str, Any]  # {"trace": Trace, "problem": Problem, "output": str}


def _strip_think(rows: list[Row], cfg: CurateConfig, tally: Tally) -> list[Row]:
    for r in rows:
        reasoning, content = split_think(r["output"])
        if reasoning is not None or content != r["output"].strip():
            tally.add("strip_think: modified")
        r["output"] = content
        if reasoning:
            r["reasoning"] = "\n".join(x for x in (r.get("reasoning"), reasoning) if x)
    return rows


def _drop_empty(rows: list[Row], cfg: CurateConfig, tally: Tally) -> list[Row]:
    keep = []
    for r in rows:
        if r["output"].strip():
            keep.append(r)
        else:
            tally.add("drop_empty: removed", r["trace"].problem_id)
    return keep


def _drop_truncated(rows: list[Row], cfg: CurateConfig, tally: Tally) -> list[Row]:
    keep = []
    for r in rows:
        if r["trace"].finish_reason == "length":
            tally.add("drop_truncated: removed", r["trace"].problem_id)
        else:
            keep.append(r)
    return keep


def _verify_answer(rows: list[Row], cfg: CurateConfig, tally: Tally) -> list[Row]:
    from .answers import is_correct

    keep = []
    for r in rows:
        ref = r["problem"].answer
        if ref is None:
            tally.add("verify_answer: kept_no_reference")
            keep.append(r)
        elif is_correct(r["output"], ref):
            keep.append(r)
        else:
            tally.add("verify_answer: removed", r["trace"].problem_id)
    return keep


STEPS: dict[str, Callable[[list[Row], CurateConfig, Tally], list[Row]]] = {
    "strip_think": _strip_think,
    "drop_empty": _drop_empty,
    "drop_truncated": _drop_truncated,
    "verify_answer": _verify_answer,
}


def _join(traces_path: str | Path, problems_paths: list[str | Path], tally: Tally) -> list[Row]:
    probs: dict[str, Problem] = {}
    for pp in problems_paths:
        for r in read_jsonl(pp):
            p = Problem.model_validate(r)
            probs[p.id] = p
    rows: list[Row] = []
    for where, rec in iter_raw(traces_path, tally):
        try:
            t = Trace.model_validate(rec)
        except ValueError as e:
            tally.add("bad_trace_record", f"{where}: {str(e).splitlines()[0]}")
            continue
        p = probs.get(t.problem_id)
        if p is None:
            tally.add("unknown_problem_id", f"{where}: {t.problem_id}")
            continue
        rows.append({"trace": t, "problem": p, "output": t.content or "", "reasoning": t.reasoning})
    return rows


def write_dataset(examples: list[Example], out: Path, name: str) -> None:
    """Alpaca JSON + ``dataset_info.json`` that LLaMA-Factory reads as is."""
    write_json(out / "dataset.json", [e.model_dump() for e in examples])
    write_json(out / "dataset_info.json", {
        name: {"file_name": "dataset.json", "formatting": "alpaca",
               "columns": {"prompt": "instruction", "query": "input", "response": "output"}}})


def curate(cfg: CurateConfig, traces_path: str | Path, problems_paths: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Write ``dataset.json`` (Alpaca rows) and ``dataset_info.json``; return the curate report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    rows = _join(traces_path, problems_paths, tally)
    n_in = len(rows)
    per_step = []
    for name in cfg.steps:
        before = len(rows)
        rows = STEPS[name](rows, cfg, tally)
        per_step.append({"step": name, "in": before, "out": len(rows), "removed": before - len(rows)})
    examples = []
    for r in rows:
        p: Problem = r["problem"]
        lang = detect_lang(p.question)
        output = r["output"].strip()
        if cfg.keep_think and r.get("reasoning"):
            output = f"<think>\n{r['reasoning'].strip()}\n</think>\n\n{output}"
        examples.append(Example(instruction=instruction_for(lang), input=p.question, output=output,
                                problem_id=p.id, source=p.source, lang=lang))
    report = {"rows_in": n_in, "rows_out": len(examples), "steps": per_step, "counts": tally.to_dict(),
              "languages": {lang: sum(e.lang == lang for e in examples) for lang in sorted({e.lang for e in examples})},
              "by_family": {f: sum(e.source == f for e in examples) for f in sorted({e.source for e in examples})},
              "config": cfg.model_dump(mode="json")}
    write_json(out / "curate_report.json", report)
    if not examples:
        removed = "; ".join(f"{s['step']} removed {s['removed']}" for s in per_step) or "no steps ran"
        raise UserError(f"curate: the dataset is empty after curation ({n_in} rows in; {removed}; "
                        f"unreadable: {tally.total() - sum(s['removed'] for s in per_step)}); see {out / 'curate_report.json'}")
    write_dataset(examples, out, cfg.dataset_name)
    steps_txt = ", ".join(f"{s['step']} -{s['removed']}" for s in per_step)
    info(f"curate: {n_in} traces -> {len(examples)} rows ({steps_txt})")
    return report


