"""``run``: the whole loop from one config: problems -> generate -> curate -> train -> eval (base and
student) -> scores.json + report, in a run folder that keeps every intermediate file.

Every stage is content-addressed through the stage cache of :mod:`mathdistill.stages` (``run`` and ``ablate``
share it): a stage runs only when its config, the content of the files it reads, or its code (every
``mathdistill`` module it imports, see :func:`mathdistill.stages.code_version`) changed.

``run`` keeps its cache in ``<run>/cache`` unless given ``cache_dir`` (share one between runs and grids
with ``--cache DIR``), and copies each stage's folder into the usual run layout: problems/, generate/,
curate/, train/, eval/base, eval/student, scores.json, report.md, config.yaml.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, ValidationError, field_validator

from .config import StageConfig, deep_merge, dump_yaml
from .curate import CurateConfig, curate
from .errors import UserError
from .evaluate import EvalConfig, evaluate
from .generate import GenerateConfig, generate
from .io import package_versions, prepare_out_dir, read_json, read_jsonl, write_json
from .problems import ProblemsConfig, problems
from .progress import info
from .report import report
from .stages import (CachedFailure, NotCached, StageResult, StageStore, check_diverged, digest, file_digest, merge_traces,
                     split_sources, stage_config)
from .train import TrainConfig, train

PER_MODEL_FIELDS = ("AS", "CQS", "ES", "MLS", "overall", "mean_tokens", "model_bytes", "n", "cqs_kind", "by_family",
                    "step_accuracy", "cqs_components", "intervals", "misses")


class SourceConfig(StageConfig):
    """One named data source: a slice of the training problems with its own teacher settings."""

    n: int = Field(..., ge=1, description="training problems in this source (sources never share a problem)")
    generate: dict[str, Any] = Field(default_factory=dict, description="overrides of the run's generate section for "
                                     "this source, e.g. {reference_think: true} or a teacher endpoint")


class RunConfig(StageConfig):
    """One run of the loop; each section is the config of the stage of the same name."""

    name: str = Field("demo", description="run name (the folder defaults to runs/<name>)")
    problems: ProblemsConfig = Field(default_factory=ProblemsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    sources: dict[str, SourceConfig] = Field(default_factory=dict, description=(
        "named data sources: the training problems are shuffled (problems.seed) and cut into slices of these sizes, "
        "in order; each slice gets its own traces (generate section + the source's overrides). Empty: one source, "
        "every training problem"))
    use: list[str] | None = Field(None, description="sources the student trains on (None: all of them)")
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    eval_base: bool = Field(True, description="also score the untrained base model, for the comparison")

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: dict[str, SourceConfig], info) -> dict[str, SourceConfig]:
        gen = info.data.get("generate")
        for name, src in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"source name {name!r}: use letters, digits, '_', '-' or '.'")
            if gen is not None:
                try:
                    GenerateConfig.model_validate(deep_merge(gen.model_dump(), src.generate))
                except ValidationError as e:
                    err = e.errors()[0]
                    raise ValueError(f"sources.{name}.generate.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return v

    @field_validator("use")
    @classmethod
    def _use(cls, v: list[str] | None, info) -> list[str] | None:
        if v is None:
            return v
        sources = info.data.get("sources") or {}
        if not v:
            raise ValueError("no source selected; name at least one of the sources")
        if not sources:
            raise ValueError("names sources, but the sources section is empty")
        unknown = [s for s in v if s not in sources]
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; defined: {sorted(sources)}")
        if len(set(v)) != len(v):
            raise ValueError(f"a source is named twice in {v}")
        return v


# ------------------------------------------------------------------------------------------ key inputs

def model_fingerprint(name: str) -> str:
    """What a model spec loads, as a hash: its files' content (hub ids: the id only; they are not local)."""
    from .models import resolve

    spec = resolve(name)
    if spec.kind == "hub":
        return f"hub:{name}"
    if spec.kind == "gguf":
        files = [Path(spec.path) / spec.gguf_file]  # type: ignore[operator]
    else:
        files = sorted(p for p in Path(spec.path).iterdir() if p.is_file())
    if spec.adapter:
        files += sorted(p for p in Path(spec.adapter).rglob("*") if p.is_file())
    return digest([[f.name, file_digest(f)] for f in files])


def problems_inputs(cfg: ProblemsConfig) -> dict[str, str]:
    """The content of the user's problem files, when the problems stage reads any (edit a file: new key)."""
    from .benchmarks import digest, is_benchmark

    out = {}
    for k in ("train_file", "eval_file"):
        f = getattr(cfg, k)
        if f and Path(f).is_file():
            out[k] = file_digest(f)
        elif f and is_benchmark(f):  # a shipped benchmark: the shipped file's sha256 and the slice
            out[k] = digest(f)
    return out


# ---------------------------------------------------------------------------------------------- stages

def source_generate(cfg: RunConfig, name: str) -> GenerateConfig:
    """The generate config of one source: the run's generate section with the source's overrides."""
    return GenerateConfig.model_validate(deep_merge(cfg.generate.model_dump(), cfg.sources[name].generate))


def _norm(q: str) -> str:
    return " ".join(q.split()).lower()


def _check_no_leak(train_file: Path, eval_file: Path) -> None:
    evq = {_norm(r["question"]) for r in read_jsonl(eval_file)}
    n = sum(_norm(r["question"]) in evq for r in read_jsonl(train_file))
    if n:
        raise UserError(f"{n} training problems are also in the shared eval set {eval_file}; "
                        "vary problems settings that keep the eval split (or give every cell the same problems section)")


@dataclass
class Executed:
    """The stage outputs of one config, and the scores read from its eval folders."""

    stages: dict[str, StageResult] = field(default_factory=dict)
    eval_file: Path | None = None
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)

    def executed(self) -> list[str]:
        return [k for k, v in self.stages.items() if v.executed]


def execute(cfg: RunConfig, store: StageStore, eval_problems: str | Path | None = None, label: str = "",
            dry: bool = False, on_stage: Callable[[str, bool], None] | None = None,
            ex: Executed | None = None) -> Executed:
    """Every stage of ``cfg`` through ``store``; outputs stay in the cache (``run`` copies them out).

    ``eval_problems``: evaluate on this file instead of the config's own eval split (``ablate`` shares one).
    ``dry``: only look up; raise :class:`NotCached` at the first stage that would run.
    ``on_stage(name, cached)`` is called as each stage starts (or is found in the cache).
    ``ex``: fill this object as stages finish (so a caller sees what ran even when a stage fails).
    """
    ex = ex if ex is not None else Executed()
    try:
        base_fp = model_fingerprint(cfg.train.base_model)
    except UserError as e:
        raise UserError(f"train.base_model: {e}") from None

    def stage(name: str, kind: str, config: Any, inputs: Any, fn: Callable[[Path], Any]) -> StageResult:
        tag = f"{label}:{name}" if label else name
        try:
            r = store.run(kind, config, inputs, fn, label=tag, dry=True)
            if on_stage:
                on_stage(name, True)
        except CachedFailure:
            if on_stage:
                on_stage(name, False)
            raise
        except NotCached:
            if dry:
                raise
            if on_stage:
                on_stage(name, False)
            r = store.run(kind, config, inputs, fn, label=tag)
        ex.stages[name] = r
        return r

    prob = stage("problems", "problems", stage_config("problems", cfg.problems), problems_inputs(cfg.problems),
                 lambda d: problems(cfg.problems, d))
    train_file = prob.dir / "train.jsonl"
    if eval_problems is None:
        ex.eval_file, eval_digest = prob.dir / "eval.jsonl", prob.digest("eval.jsonl")
    else:
        ex.eval_file, eval_digest = Path(eval_problems), digest({"eval.jsonl": file_digest(eval_problems)})
        if eval_digest != prob.digest("eval.jsonl"):
            _check_no_leak(train_file, ex.eval_file)

    if cfg.sources:
        split = stage("sources", "sources", {"seed": cfg.problems.seed, "n": [[k, v.n] for k, v in cfg.sources.items()]},
                      {"train": prob.digest("train.jsonl")}, lambda d: split_sources({k: v.n for k, v in cfg.sources.items()}, cfg.problems.seed, train_file, d))
        gens: list[tuple[str, StageResult]] = []
        for name in cfg.use or list(cfg.sources):
            g = source_generate(cfg, name)
            gens.append((name, stage(f"generate:{name}", "generate", stage_config("generate", g),
                                     {"problems": split.digest(f"{name}.jsonl")},
                                     lambda d, g=g, n=name: generate(g, split.dir / f"{n}.jsonl", d))))

        def curate_fn(d: Path) -> None:
            merge_traces([r.dir / "traces.jsonl" for _, r in gens], d / "traces.jsonl")
            curate(cfg.curate, d / "traces.jsonl", [train_file], d, eval_problems=[ex.eval_file])

        traces_in: Any = [[n, r.digest("traces.jsonl")] for n, r in gens]
    else:
        gen = stage("generate", "generate", stage_config("generate", cfg.generate), {"problems": prob.digest("train.jsonl")},
                    lambda d: generate(cfg.generate, train_file, d))

        def curate_fn(d: Path) -> None:
            curate(cfg.curate, gen.dir / "traces.jsonl", [train_file], d, eval_problems=[ex.eval_file])

        traces_in = gen.digest("traces.jsonl")
    cur = stage("curate", "curate", stage_config("curate", cfg.curate),
                {"traces": traces_in, "problems": prob.digest("train.jsonl"), "eval": eval_digest}, curate_fn)

    def train_fn(d: Path) -> None:
        train(cfg.train, cur.dir / "dataset.json", d)
        check_diverged(d)

    tr = stage("train", "train", stage_config("train", cfg.train),
               {"dataset": cur.digest("dataset.json"), "base_model": base_fp}, train_fn)
    eval_cfg = stage_config("eval", cfg.eval)
    ev = stage("eval student", "eval", eval_cfg, {"problems": eval_digest, "student": tr.digest("adapter", "student.json"),
                                              "base_model": base_fp},
               lambda d: evaluate(cfg.eval, ex.eval_file, d, model=str(tr.dir), label="student"))
    if cfg.eval_base:
        eb = stage("eval base", "eval", eval_cfg, {"problems": eval_digest, "model": base_fp},
                   lambda d: evaluate(cfg.eval, ex.eval_file, d, model=cfg.train.base_model, label="base"))
        ex.scores["base"] = read_json(eb.dir / "scores.json")
    ex.scores["student"] = read_json(ev.dir / "scores.json")
    return ex


def per_model(scores: dict[str, Any]) -> dict[str, Any]:
    """The per-model block of ``scores.json``: the score fields and ``meta``."""
    return {f: scores[f] for f in PER_MODEL_FIELDS if f in scores} | {"meta": scores["meta"]}


def _copy(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)


def _materialize(cfg: RunConfig, ex: Executed, out: Path) -> None:
    """Copy the cached stage folders into the run layout."""
    st = ex.stages
    _copy(st["problems"].dir, out / "problems")
    if cfg.sources:
        _copy(st["sources"].dir, out / "problems" / "sources")
        for name, r in st.items():
            if name.startswith("generate:"):
                _copy(r.dir, out / "generate" / name.split(":", 1)[1])
        shutil.copy2(st["curate"].dir / "traces.jsonl", out / "generate" / "traces.jsonl")
    else:
        _copy(st["generate"].dir, out / "generate")
    _copy(st["curate"].dir, out / "curate")
    _copy(st["train"].dir, out / "train")
    _copy(st["eval student"].dir, out / "eval" / "student")
    if "eval base" in st:
        _copy(st["eval base"].dir, out / "eval" / "base")


def student_vs_base(cfg: RunConfig, ex: Executed) -> dict[str, Any]:
    """Student - base (B - A) of every score with its paired interval over the eval problems (both evals score the
    same file in the same order), by the one bootstrap with the run's ``eval.score`` settings."""
    from .scores import interval_method, paired_bootstrap

    a = read_jsonl(ex.stages["eval base"].dir / "predictions.jsonl")
    b = read_jsonl(ex.stages["eval student"].dir / "predictions.jsonl")
    diff = paired_bootstrap(a, b, ex.scores["base"].get("model_bytes"), ex.scores["student"].get("model_bytes"), cfg.eval.score)
    return {"sign": "student - base", **diff, "interval_method": {**interval_method(cfg.eval.score), "paired": True}}


def run(cfg: RunConfig, out_dir: str | Path | None = None, overwrite: bool = False,
        cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every stage into ``out_dir`` (default ``runs/<name>``); return the ``scores.json`` content.

    Stages found in the cache (``<out_dir>/cache`` or ``cache_dir``) are reused, not rerun.
    """
    out = prepare_out_dir(out_dir or Path("runs") / cfg.name, overwrite)
    dump_yaml(cfg, out / "config.yaml")
    store = StageStore(cache_dir or out / "cache")
    t0 = time.monotonic()
    ex = execute(cfg, store, on_stage=lambda s, hit: info(f"[bold]== {s}[/bold]" + (" (cached)" if hit else "")))
    _materialize(cfg, ex, out)
    scores: dict[str, Any] = {k: per_model(ex.scores[k]) for k in ("base", "student") if k in ex.scores}
    scores["config"] = cfg.model_dump(mode="json")
    times = {k: (r.seconds if r.executed else 0.0) for k, r in ex.stages.items()}
    times["total"] = round(time.monotonic() - t0, 1)
    scores["run"] = {"stage_seconds": times, "cached": [k for k, r in ex.stages.items() if not r.executed],
                     "stage_keys": {k: r.key for k, r in ex.stages.items()}, "cache": str(store.root),
                     "versions": package_versions()}
    if "eval base" in ex.stages:
        scores["run"]["student_vs_base"] = student_vs_base(cfg, ex)
    write_json(out / "scores.json", scores)
    path = report(out)
    reused = scores["run"]["cached"]
    info(f"run: done in {times['total']:.0f}s" + (f" (from cache: {', '.join(reused)})" if reused else "")
         + f"; scores in {out / 'scores.json'}, report in {path}")
    return scores
