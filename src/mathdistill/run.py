"""``run``: the whole loop from one config: problems -> generate -> curate -> train -> eval (base and
student) -> scores.json + report, in a run folder that keeps every intermediate file.

Every stage is content-addressed (``run`` and ``ablate`` share this one mechanism). A stage's output folder
lives in a stage cache under ``<cache>/<stage>/<key>/``, where

    key = sha256(stage, its resolved config, the sha256 of every upstream file it reads, code version)

and the code version is the package version plus the source of the stage's modules and the versions of the
libraries it calls. So a stage runs only when something it depends on changed, and because keys use the
*content* of upstream outputs (not their configs), a change that leaves a file identical (``keep_think`` on
chains that have no think part) stops there: the dataset is the same, so the trained model is reused.
Resource settings that do not change results (``threads``, endpoint ``concurrency``/timeouts) are left out.

An entry is complete once ``stage.json`` (config, input hashes, output file hashes, versions, seconds) is in
it; a stage runs in ``<key>.partial/`` under a file lock and is renamed into place when it succeeds, so a
killed run resumes at the first unfinished stage (``generate`` replays its SQLite cache in the partial
folder), and parallel cells that need the same stage compute it once. Every execution is one line in
``<cache>/executions.jsonl``.

``run`` keeps its cache in ``<run>/cache`` unless given ``cache_dir`` (share one between runs and grids
with ``--cache DIR``), and copies each stage's folder into the usual run layout: problems/, generate/,
curate/, train/, eval/base, eval/student, scores.json, report.md, config.yaml.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, ValidationError, field_validator

from . import __version__
from .config import StageConfig, deep_merge, dump_yaml
from .curate import CurateConfig, curate
from .errors import PartialRun, UserError
from .evaluate import EvalConfig, evaluate
from .generate import GenerateConfig, generate
from .io import package_versions, prepare_out_dir, read_json, read_jsonl, versions_of, write_json, write_jsonl
from .problems import ProblemsConfig, problems
from .progress import info
from .report import report
from .train import TrainConfig, train

PER_MODEL_FIELDS = ("AS", "CQS", "ES", "MLS", "overall", "mean_tokens", "model_bytes", "n", "cqs_kind", "by_family",
                    "step_accuracy", "cqs_components", "intervals", "misses")
MANIFEST = "stage.json"

# What each stage's key covers besides config and inputs: its modules' source and the libraries it calls.
STAGE_CODE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "problems": (("problems", "solver", "arith", "records", "answers"), ("reasoning-gym", "math-verify")),
    "sources": (("run",), ()),
    "generate": (("generate", "client", "prompts", "records", "arith", "answers"), ("openai", "math-verify")),
    "curate": (("curate", "client", "prompts", "records", "answers", "arith", "run"), ("math-verify",)),
    "train": (("train", "models", "prompts"), ("torch", "transformers", "peft", "accelerate")),
    "eval": (("evaluate", "backends", "calculator", "scores", "answers", "arith", "models", "prompts", "records"),
             ("torch", "transformers", "peft", "math-verify")),
}
# Settings that change speed, not results: not part of any key (``ablate --jobs`` sets the threads).
NOT_IN_KEY: dict[str, set[str]] = {"train": {"threads"}, "eval": {"threads"},
                                   "generate": {"concurrency", "timeout_s", "max_retries"}}


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


# ---------------------------------------------------------------------------------------------- hashing

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within a process."""
    p = Path(path)
    st = p.stat()
    k = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _FILE_HASHES:
        _FILE_HASHES[k] = _sha256_file(p)
    return _FILE_HASHES[k]


def tree_files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative POSIX path -> sha256), the manifest excepted."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = _sha256_file(p)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


@lru_cache(maxsize=None)
def code_version(stage: str) -> dict[str, str]:
    """The code a stage's output depends on: package version, its modules' source hash, library versions."""
    mods, pkgs = STAGE_CODE[stage]
    h = hashlib.sha256()
    for m in mods:
        spec = find_spec(f"mathdistill.{m}")
        h.update(m.encode())
        if spec and spec.origin:
            h.update(Path(spec.origin).read_bytes())
    return {"mathdistill": __version__, "source_sha256": h.hexdigest()[:16], **versions_of(pkgs)}


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
    return _digest([[f.name, file_digest(f)] for f in files])


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


def release_memory() -> None:
    """Return freed heap memory to the OS after a stage. glibc keeps large freed blocks (a training's
    activations, several GiB) in its arenas, so the next stage's fit check would see them as used."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def stage_config(stage: str, cfg: StageConfig) -> dict[str, Any]:
    """A stage's config as it enters the key (resource-only fields left out)."""
    return cfg.model_dump(mode="json", exclude=NOT_IN_KEY.get(stage, set()))


# ------------------------------------------------------------------------------------------ stage cache

class NotCached(Exception):
    """Raised by ``StageStore.run(dry=True)`` at the first stage that would have to run."""


class CachedFailure(UserError):
    """This stage failed before on the same inputs (``retry_failed`` off): its recorded reason."""


# Failures that say nothing about the inputs (a network error, a teacher call that gave up, memory):
# never recorded, so the next attempt retries them.
TRANSIENT = (PartialRun, OSError, MemoryError)


@dataclass
class StageResult:
    stage: str
    key: str
    dir: Path
    files: dict[str, str]  # relative path -> sha256
    executed: bool  # ran in this call (False: found in the cache)
    seconds: float  # time it took when it ran (also for cache hits: the original run's time)

    def digest(self, *names: str) -> str:
        """sha256 over the named files/folders of this output (all of it when no names)."""
        sel = {k: v for k, v in self.files.items()
               if not names or any(k == n or k.startswith(n.rstrip("/") + "/") for n in names)}
        if names and not sel:
            raise UserError(f"{self.stage} output {self.dir} has none of {list(names)}")
        return _digest(sel)


class StageStore:
    """Content-addressed stage outputs under ``root/<stage>/<key>/`` (see the module docstring)."""

    def __init__(self, root: str | Path, retry_failed: bool = True):
        self.root = Path(root)
        self.retry_failed = retry_failed  # False: a stage that failed on these inputs fails again at once

    def key(self, stage: str, config: Any, inputs: Any) -> str:
        return _digest({"stage": stage, "config": config, "inputs": inputs, "code": code_version(stage)})[:24]

    def lookup(self, stage: str, key: str) -> StageResult | None:
        d = self.root / stage / key
        m = d / MANIFEST
        if not m.is_file():
            return None
        man = read_json(m)
        return StageResult(stage, key, d, man["files"], False, man.get("seconds", 0.0))

    def run(self, stage: str, config: Any, inputs: Any, fn: Callable[[Path], Any], label: str = "",
            dry: bool = False) -> StageResult:
        """The cached output of ``stage`` for these inputs; runs ``fn(folder)`` to make it when missing."""
        key = self.key(stage, config, inputs)
        hit = self.lookup(stage, key)
        if hit:
            return hit
        failed = self.root / stage / f"{key}.failed.json"
        if not self.retry_failed and failed.is_file():
            raise CachedFailure(f"{read_json(failed)['reason']} (failed before on the same inputs; retry with --retry-failed)")
        if dry:
            raise NotCached(f"{stage} {key}")
        from filelock import FileLock

        base = self.root / stage
        base.mkdir(parents=True, exist_ok=True)
        with FileLock(str(base / f"{key}.lock")):
            hit = self.lookup(stage, key)  # another process may have made it while we waited
            if hit:
                return hit
            work = base / f"{key}.partial"  # kept across a crash: a resumable stage continues in it
            work.mkdir(exist_ok=True)
            t0 = time.monotonic()
            try:
                fn(work)
            except BaseException as e:
                release_memory()
                self._log(stage, key, label, time.monotonic() - t0, f"failed: {type(e).__name__}")
                if isinstance(e, Exception) and not isinstance(e, TRANSIENT):
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    write_json(failed, {"stage": stage, "key": key, "label": label, "time": time.time(),
                                        "reason": msg if isinstance(e, UserError) else f"{type(e).__name__}: {msg}"})
                raise
            failed.unlink(missing_ok=True)
            release_memory()  # a grid runs many stages in one process: the next training needs that memory back
            dt = time.monotonic() - t0
            files = tree_files(work)
            write_json(work / MANIFEST, {"stage": stage, "key": key, "label": label, "config": config,
                                         "inputs": inputs, "code": code_version(stage), "files": files,
                                         "seconds": round(dt, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "versions": package_versions()})
            final = base / key
            if final.exists():  # a folder without a manifest: left by an interrupted rename
                shutil.rmtree(final)
            os.replace(work, final)
            self._log(stage, key, label, dt, "ok")
            return StageResult(stage, key, final, files, True, round(dt, 3))

    def _log(self, stage: str, key: str, label: str, seconds: float, status: str) -> None:
        line = json.dumps({"stage": stage, "key": key, "label": label, "seconds": round(seconds, 3),
                           "status": status, "pid": os.getpid(), "time": time.time()})
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "executions.jsonl", "a", encoding="utf-8") as fh:  # one short O_APPEND write
            fh.write(line + "\n")

    def executions(self) -> list[dict[str, Any]]:
        """Every stage execution recorded in this cache, oldest first."""
        p = self.root / "executions.jsonl"
        if not p.is_file():
            return []
        return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------- stages

def _split_sources(cfg: RunConfig, train_file: Path, out: Path) -> None:
    probs = read_jsonl(train_file)
    need = sum(s.n for s in cfg.sources.values())
    if need > len(probs):
        raise UserError(f"sources need {need} training problems ({', '.join(f'{k} {v.n}' for k, v in cfg.sources.items())}) "
                        f"but problems/train.jsonl has {len(probs)}; lower sources.*.n or raise problems.families.*.n_train")
    order = list(range(len(probs)))
    random.Random(f"{cfg.problems.seed}-sources").shuffle(order)
    pos, summary = 0, {}
    for name, src in cfg.sources.items():
        rows = [probs[i] for i in order[pos: pos + src.n]]
        pos += src.n
        write_jsonl(out / f"{name}.jsonl", rows)
        summary[name] = {"problems": len(rows), "by_family": {f: sum(r.get("source") == f for r in rows)
                                                              for f in sorted({r.get("source") for r in rows})}}
    write_json(out / "sources_summary.json", {"sources": summary, "unused": len(probs) - pos})


def source_generate(cfg: RunConfig, name: str) -> GenerateConfig:
    """The generate config of one source: the run's generate section with the source's overrides."""
    return GenerateConfig.model_validate(deep_merge(cfg.generate.model_dump(), cfg.sources[name].generate))


def _merge_traces(parts: list[Path], out: Path) -> None:
    with open(out, "w", encoding="utf-8") as fh:
        for p in parts:
            fh.write(p.read_text(encoding="utf-8"))


def _check_diverged(train_dir: Path) -> None:
    """Fail a training that diverged: a non-finite logged loss, or NaN/inf in the weights it wrote
    (the transformers Trainer filters NaN losses out of its logs, so the weights are the reliable sign)."""
    log = train_dir / "train_log.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            loss = row.get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise UserError(f"train: loss is {loss} at step {row.get('step')} (training diverged); "
                                "lower train.learning_rate or raise train.warmup_ratio")
    from safetensors.torch import load_file

    for f in sorted(train_dir.rglob("*.safetensors")):
        bad = [k for k, v in load_file(str(f)).items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:
            raise UserError(f"train: training diverged to NaN/inf ({len(bad)} tensors in {f.name}, first {bad[0]}); "
                            "lower train.learning_rate or raise train.warmup_ratio")


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
        ex.eval_file, eval_digest = Path(eval_problems), _digest({"eval.jsonl": file_digest(eval_problems)})
        if eval_digest != prob.digest("eval.jsonl"):
            _check_no_leak(train_file, ex.eval_file)

    if cfg.sources:
        split = stage("sources", "sources", {"seed": cfg.problems.seed, "n": [[k, v.n] for k, v in cfg.sources.items()]},
                      {"train": prob.digest("train.jsonl")}, lambda d: _split_sources(cfg, train_file, d))
        gens: list[tuple[str, StageResult]] = []
        for name in cfg.use or list(cfg.sources):
            g = source_generate(cfg, name)
            gens.append((name, stage(f"generate:{name}", "generate", stage_config("generate", g),
                                     {"problems": split.digest(f"{name}.jsonl")},
                                     lambda d, g=g, n=name: generate(g, split.dir / f"{n}.jsonl", d))))

        def curate_fn(d: Path) -> None:
            _merge_traces([r.dir / "traces.jsonl" for _, r in gens], d / "traces.jsonl")
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
        _check_diverged(d)

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
    write_json(out / "scores.json", scores)
    path = report(out)
    reused = scores["run"]["cached"]
    info(f"run: done in {times['total']:.0f}s" + (f" (from cache: {', '.join(reused)})" if reused else "")
         + f"; scores in {out / 'scores.json'}, report in {path}")
    return scores
