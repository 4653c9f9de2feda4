"""``run``: the whole loop from one config: problems -> generate -> curate -> train -> eval (base and
student) -> scores.json + report, in a run folder that keeps every intermediate file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from .config import StageConfig, dump_yaml
from .curate import CurateConfig, curate
from .evaluate import EvalConfig, evaluate
from .generate import GenerateConfig, generate
from .io import package_versions, prepare_out_dir, write_json
from .problems import ProblemsConfig, problems
from .progress import info
from .report import report
from .train import TrainConfig, train

PER_MODEL_FIELDS = ("AS", "CQS", "ES", "MLS", "overall", "mean_tokens", "model_bytes", "n", "cqs_kind", "by_family")


class RunConfig(StageConfig):
    """One run of the loop; each section is the config of the stage of the same name."""

    name: str = Field("demo", description="run name (the folder defaults to runs/<name>)")
    problems: ProblemsConfig = Field(default_factory=ProblemsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    eval_base: bool = Field(True, description="also score the untrained base model, for the comparison")


def run(cfg: RunConfig, out_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run every stage into ``out_dir`` (default ``runs/<name>``); return the ``scores.json`` content."""
    out = prepare_out_dir(out_dir or Path("runs") / cfg.name, overwrite)
    dump_yaml(cfg, out / "config.yaml")
    t0 = time.monotonic()
    times: dict[str, float] = {}

    def timed(stage: str, fn, *a, **kw):
        t = time.monotonic()
        info(f"[bold]== {stage}[/bold]")
        r = fn(*a, **kw)
        times[stage] = round(time.monotonic() - t, 1)
        return r

    timed("problems", problems, cfg.problems, out / "problems")
    timed("generate", generate, cfg.generate, out / "problems" / "train.jsonl", out / "generate")
    timed("curate", curate, cfg.curate, out / "generate" / "traces.jsonl", [out / "problems" / "train.jsonl"], out / "curate",
          eval_problems=[out / "problems" / "eval.jsonl"])  # for the decontaminate step, when it is on
    timed("train", train, cfg.train, out / "curate" / "dataset.json", out / "train")
    eval_file = out / "problems" / "eval.jsonl"
    results: dict[str, Any] = {}
    if cfg.eval_base:
        results["base"] = timed("eval base", evaluate, cfg.eval, eval_file, out / "eval" / "base",
                                model=cfg.train.base_model, label="base")
    results["student"] = timed("eval student", evaluate, cfg.eval, eval_file, out / "eval" / "student",
                               model=str(out / "train"), label="student")
    scores: dict[str, Any] = {k: {f: v[f] for f in PER_MODEL_FIELDS} | {"meta": v["meta"]} for k, v in results.items()}
    scores["config"] = cfg.model_dump(mode="json")
    times["total"] = round(time.monotonic() - t0, 1)
    scores["run"] = {"stage_seconds": times, "versions": package_versions()}
    write_json(out / "scores.json", scores)
    path = report(out)
    info(f"run: done in {times['total']:.0f}s; scores in {out / 'scores.json'}, report in {path}")
    return scores
