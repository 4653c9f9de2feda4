"""``ablate``: a grid of runs over any config field of any stage, every stage cached by the hash of its inputs.

A grid file (``GridSpec``) is one base run config plus the fields to vary::

    name: think-vs-rank
    preset: default                 # the base: a preset, then base_config (a run YAML), then base (inline)
    base: {train: {epochs: 1}}
    grid:                           # lists expand as a product (dotted paths or nested mappings)
      curate.keep_think: [false, true]
      train: {lora_r: [8, 16]}
    cells:                          # and/or explicit combinations
      - {name: seed-recipe, set: {train.learning_rate: 8.0e-5, train.epochs: 3}}
    baseline: keep_think=false,lora_r=8

The whole grid is validated before any work (unknown fields, empty lists, values a stage rejects,
impossible combinations: one line each). Every cell is scored on one eval set: the base config's eval
split. Cells run through ``run.execute`` on one stage cache (``<out>/cache`` or ``--cache``), so cells share
every stage whose inputs are equal, a rerun skips finished cells, and a killed grid resumes. A cell that
fails is recorded with its reason and the others go on. ``--jobs N`` runs cells in N worker processes
(each with ``cores // N`` torch threads); ``--ray ADDRESS`` runs them as Ray tasks, one GPU each when the
cluster has GPUs (the cache folder must then be on a filesystem every node sees; ``--ray local`` starts a
cluster on this machine for the grid). A cell whose Ray worker dies is rerun once from its cached stages,
then reported as failed ("worker died ...").

``seeds: [0, 1, 2]`` (for the grid, or one explicit cell) trains each cell once per seed (``train.seed``); the
leaderboard then scores the mean over seeds with intervals over seeds and problems. ``--plan`` (see
:mod:`ablate_plan`) prints what difference the grid can resolve before anything trains.

Output folder: ``leaderboard.md|.csv|.html`` (see :mod:`leaderboard`), ``ablate.json`` (every cell's
status, reason, stage keys, time spent), ``grid.yaml`` (the resolved grid), ``cells/<cell>/`` (its
``scores.json`` in run's shape, ``cell.json``, ``log.txt``) and the stage cache.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from . import progress as _progress
from .config import StageConfig, build, deep_merge, parse_overrides, read_preset, read_yaml
from .errors import PartialRun, UserError
from .io import write_json
from .run import (CachedFailure, RunConfig, StageStore, execute, problems_inputs,
                  stage_config)
from .problems import problems
from .ablate_board import leaderboard
from .ablate_exec import GridProgress, _failed, _reason, _worker_init, run_cell, run_ray


class GridError(UserError):
    """The grid file is not valid; one line per problem."""


class BootstrapConfig(StageConfig):
    """How the leaderboard's intervals are drawn."""

    samples: int | None = Field(None, ge=10, description="bootstrap resamples of the eval problems "
                                "(None: the base config's eval.score.bootstrap_samples, as eval uses)")
    confidence: float | None = Field(None, gt=0, lt=1, description="interval coverage (None: eval.score.confidence)")
    seed: int | None = Field(None, description="seed of the resampling, one draw shared by every cell: paired differences "
                             "(None: eval.score.bootstrap_seed)")


class CellSpec(StageConfig):
    """One explicit cell: a name and the fields it sets on top of the base config."""

    name: str | None = Field(None, description="cell name (default: its field=value pairs)")
    set: dict[str, Any] = Field(default_factory=dict, description="fields to set, dotted (train.lora_r) or nested")
    seeds: list[int] | None = Field(None, description="training seeds of this cell (train.seed), over the grid's seeds")


class GridSpec(StageConfig):
    """An ablation grid: one base run config, the fields to vary, how to run the cells."""

    name: str = Field("ablation", description="grid name (the output folder defaults to runs/<name>)")
    preset: str | None = Field(None, description="base config: start from this preset")
    base_config: str | None = Field(None, description="base config: a run YAML (relative to the grid file), over the preset")
    base: dict[str, Any] = Field(default_factory=dict, description="base config: run config keys, over base_config")
    grid: dict[str, Any] = Field(default_factory=dict, description="field -> list of values; the lists expand as a product")
    cells: list[CellSpec] = Field(default_factory=list, description="explicit cells, in addition to the product")
    baseline: str | None = Field(None, description="cell every other cell is compared with (default: the first cell)")
    seeds: list[int] | None = Field(None, description="train every cell once per seed (train.seed); the leaderboard's "
                                    "intervals then cover seeds and problems (hierarchical bootstrap)")
    jobs: int = Field(1, ge=1, description="cells run at once, each in its own process (1: in this process)")
    threads: int | None = Field(None, ge=1, description="torch threads per cell (default: CPU cores // jobs; with ray: the "
                                "CPUs each cell's task takes, default 1)")
    ray: str | None = Field(None, description="run cells as Ray tasks on this cluster: auto (the one `ray start --head` "
                            "started), ray://host:10001, or local (start one on this machine for the grid); one GPU per "
                            "task when the cluster has GPUs; a cell whose worker dies is retried once, then reported")
    retry_failed: bool = Field(False, description="rerun stages that failed before on the same inputs (default: report "
                               "the recorded failure at once; network and memory errors are always retried)")
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)


@dataclass
class Cell:
    name: str
    values: dict[str, Any]  # dotted path -> value, for every varied field this cell sets
    config: RunConfig
    folder: str = ""
    seeds: list[int] | None = None  # training seeds (None: the config's train.seed only)


@dataclass
class Plan:
    spec: GridSpec
    base: RunConfig
    cells: list[Cell]
    varied: list[str]
    baseline: str


# ------------------------------------------------------------------------------------------- loading

def load_grid(path: str | Path, sets: list[str] | None = None, extra: dict[str, Any] | None = None) -> GridSpec:
    """Read a grid file; ``--set key=value`` pairs override its base config, ``extra`` its own fields (flags)."""
    data = read_yaml(path)
    spec = build(GridSpec, data, str(path))
    upd: dict[str, Any] = {}
    if spec.base_config and not Path(spec.base_config).is_absolute():
        upd["base_config"] = str((Path(path).parent / spec.base_config).resolve())
    if sets:
        upd["base"] = deep_merge(spec.base, parse_overrides(sets))
    upd.update({k: v for k, v in (extra or {}).items() if v is not None})
    return build(GridSpec, {**spec.model_dump(), **upd}, str(path)) if upd else spec


# ------------------------------------------------------------------------------------- schema walking

def _unwrap(t: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return t


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_dict(t: Any) -> bool:
    return typing.get_origin(t) is dict or t is dict


def resolve_path(path: str) -> tuple[str, Any]:
    """(``"model"`` | ``"dict"`` | ``"leaf"``, type) of a dotted RunConfig path; raises ``KeyError(message)``."""
    t: Any = RunConfig
    parts = path.split(".")
    for i, seg in enumerate(parts):
        where = ".".join(parts[:i]) or "the run config"
        if _is_model(t):
            if seg not in t.model_fields:
                near = difflib.get_close_matches(seg, list(t.model_fields), n=1)
                hint = f" (did you mean {'.'.join(parts[:i] + near)}?)" if near else f" (fields of {where}: {', '.join(t.model_fields)})"
                raise KeyError(f"unknown field {path!r}{hint}")
            t = _unwrap(t.model_fields[seg].annotation)
        elif _is_dict(t):
            args = typing.get_args(t)
            t = _unwrap(args[1]) if len(args) == 2 else Any
        elif t is Any:
            continue
        else:
            raise KeyError(f"unknown field {path!r} ({where} is a value, it has no field {seg!r})")
    kind = "model" if _is_model(t) else "dict" if _is_dict(t) else "leaf"
    return kind, t


def _flatten_axes(grid: dict[str, Any], prefix: str, errors: list[str]) -> dict[str, list[Any]]:
    """``grid:`` mapping -> {dotted path: values}; nested mappings are paths, lists are the values."""
    out: dict[str, list[Any]] = {}
    for k, v in grid.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_axes(v, path + ".", errors))
        elif isinstance(v, list):
            out[path] = v
        else:
            errors.append(f"grid.{path}: expected a list of values, got {v!r} (write [{v!r}] for a single value, "
                          "or put it in base:)")
    return out


def _flatten_set(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A cell's ``set:`` -> {dotted path: value}; descends into mappings only where the path is a config section."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        path = f"{prefix}{k}"
        try:
            kind, _ = resolve_path(path)
        except KeyError:
            kind = "leaf"  # reported by the caller
        if isinstance(v, dict) and kind == "model":
            out.update(_flatten_set(v, path + "."))
        else:
            out[path] = v
    return out


def _set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with the dotted ``path`` replaced by ``value`` (not merged into it)."""
    out = json.loads(json.dumps(data))
    node = out
    parts = path.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = json.loads(json.dumps(value))
    return out


def _pydantic_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown field {loc!r}"
    inp = err.get("input")
    got = f" (got {inp!r})" if not isinstance(inp, dict) and len(repr(inp)) < 80 else ""
    return f"{loc}: {msg}{got}"


EVAL_SPLIT_FIELDS = (re.compile(r"^problems\.eval_file$"), re.compile(r"^problems\.families\.[^.]+\.n_eval$"),
                     re.compile(r"^eval_base$"))


def _short_names(paths: list[str]) -> dict[str, str]:
    """The shortest unique dotted suffix of each path (``train.lora_r`` -> ``lora_r``)."""
    out = {}
    for p in paths:
        parts = p.split(".")
        for k in range(1, len(parts) + 1):
            s = ".".join(parts[-k:])
            if sum(q == s or q.endswith("." + s) for q in paths) == 1:
                out[p] = s
                break
        else:
            out[p] = p
    return out


def _folder(name: str, taken: set[str]) -> str:
    f = re.sub(r"[^A-Za-z0-9._=+,-]+", "_", name).strip("._") or "cell"
    if len(f) > 80 or f in taken:
        f = f[:70] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    taken.add(f)
    return f


def base_data(spec: GridSpec) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if spec.preset:
        data = deep_merge(data, read_preset(spec.preset))
    if spec.base_config:
        data = deep_merge(data, read_yaml(spec.base_config))
    return deep_merge(data, spec.base)


def expand(spec: GridSpec, source: str = "grid") -> Plan:
    """Every cell of the grid, fully validated; raises :class:`GridError` listing every problem, one per line."""
    errors: list[str] = []
    data = base_data(spec)
    try:
        base = RunConfig.model_validate(data)
    except ValidationError as e:
        raise GridError(f"{source}: base config: {_pydantic_line(e)}") from None

    axes = _flatten_axes(spec.grid, "", errors)
    for path, vals in axes.items():
        try:
            resolve_path(path)
        except KeyError as e:
            errors.append(f"grid.{path}: {e.args[0]}")
            continue
        if not vals:
            errors.append(f"grid.{path}: empty list; give at least one value (or remove the field)")
        keys = [json.dumps(v, sort_keys=True) for v in vals]
        if len(set(keys)) != len(keys):
            errors.append(f"grid.{path}: a value is listed twice in {vals!r}")
        if any(p.match(path) for p in EVAL_SPLIT_FIELDS):
            errors.append(f"grid.{path}: every cell is scored on the base config's eval set; this field cannot vary in a grid")
    explicit: list[tuple[str | None, dict[str, Any]]] = []
    for where, seeds in [("seeds", spec.seeds), *((f"cells[{i}].seeds", c.seeds) for i, c in enumerate(spec.cells))]:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            errors.append(f"{where}: give distinct seeds, e.g. [0, 1, 2] (got {seeds!r})")
    if (spec.seeds or any(c.seeds for c in spec.cells)) and "train.seed" in axes:
        errors.append("grid.train.seed: seeds: already varies the training seed; drop one of them")
    for i, c in enumerate(spec.cells):
        sets = _flatten_set(c.set)
        if not sets:
            errors.append(f"cells[{i}]: sets no field; give set: {{field: value}}")
        for path in sets:
            try:
                resolve_path(path)
            except KeyError as e:
                errors.append(f"cells[{i}].set.{path}: {e.args[0]}")
            if any(p.match(path) for p in EVAL_SPLIT_FIELDS):
                errors.append(f"cells[{i}].set.{path}: every cell is scored on the base config's eval set; this field cannot vary")
        explicit.append((c.name, sets))
    if errors:
        raise GridError(_lines(source, errors))

    from .leaderboard import value_label

    short = _short_names(list(dict.fromkeys([*axes, *(p for _, s in explicit for p in s)])))
    raw: list[tuple[str, dict[str, Any]]] = []
    if axes:
        paths = list(axes)
        for combo in itertools.product(*(axes[p] for p in paths)):
            values = dict(zip(paths, combo))
            raw.append((",".join(f"{short[p]}={value_label(v)}" for p, v in values.items()), values))
    seeds_of = [spec.seeds] * len(raw)
    for i, (name, sets) in enumerate(explicit):
        raw.append((name or ",".join(f"{short[p]}={value_label(v)}" for p, v in sets.items()), sets))
        seeds_of.append(spec.cells[i].seeds or spec.seeds)
    if not raw:
        raise GridError(f"{source}: the grid has no cells; give grid: {{field: [values]}} or cells: [...]")

    cells: list[Cell] = []
    seen_names: dict[str, int] = {}
    seen_cfg: dict[str, str] = {}
    taken: set[str] = set()
    for (name, values), seeds in zip(raw, seeds_of):
        if name in seen_names:
            errors.append(f"cell {name!r}: the name is used twice; give the explicit cells distinct names")
            continue
        seen_names[name] = 1
        d = data
        for path, v in values.items():
            d = _set_path(d, path, v)
        try:
            cfg = RunConfig.model_validate(d)
        except ValidationError as e:
            errors.append(f"cell {name!r}: {_pydantic_line(e)}")
            continue
        key = json.dumps(cfg.model_dump(mode="json", exclude={"name"}), sort_keys=True)
        if key in seen_cfg:
            errors.append(f"cell {name!r}: same config as cell {seen_cfg[key]!r}; drop one of them")
            continue
        seen_cfg[key] = name
        cells.append(Cell(name, values, cfg, _folder(name, taken), list(seeds) if seeds else None))
    baseline = spec.baseline or (cells[0].name if cells else "")
    if spec.baseline and spec.baseline not in seen_names:
        near = difflib.get_close_matches(spec.baseline, list(seen_names), n=1)
        errors.append(f"baseline: no cell is named {spec.baseline!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    if errors:
        raise GridError(_lines(source, errors))
    varied = list(dict.fromkeys([*axes, *(p for _, s in explicit for p in s)]))
    return Plan(spec, base, cells, varied, baseline)


def _lines(source: str, errors: list[str]) -> str:
    if len(errors) == 1:
        return f"{source}: {errors[0]}"
    return f"{source}: {len(errors)} problems in the grid:\n" + "\n".join(f"  {e}" for e in errors)


# ---------------------------------------------------------------------------------------- the grid

def _import_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("--ray needs the ray package: pip install 'ray[default]' (or run the cells here with --jobs N)") from None
    return ray


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def ablate(spec: GridSpec, out_dir: str | Path | None = None, cache_dir: str | Path | None = None,
           source: str = "grid") -> dict[str, Any]:
    """Run every cell of the grid (reusing cached stages) and write the leaderboard; return ``ablate.json``.

    Raises :class:`GridError` before any work when the grid is not valid, and :class:`PartialRun` at the
    end when some cells failed (their reasons are in the leaderboard).
    """
    plan = expand(spec, source)
    ray = _import_ray() if spec.ray else None
    connected = False
    if ray is not None and spec.ray != "local":
        from .ablate_exec import ray_connect

        connected = ray_connect(ray, spec.ray)  # no cluster there: one line before any folder is written
    out = Path(out_dir or Path("runs") / spec.name).resolve()  # absolute: workers and Ray tasks get these paths
    out.mkdir(parents=True, exist_ok=True)
    store = StageStore(Path(cache_dir).resolve() if cache_dir else out / "cache", retry_failed=spec.retry_failed)
    t0 = time.monotonic()
    (out / "grid.yaml").write_text(yaml.safe_dump(
        {**spec.model_dump(mode="json"), "expanded": [{"name": c.name, "folder": c.folder, "values": c.values, "seeds": c.seeds}
                                                       for c in plan.cells]}, sort_keys=False, allow_unicode=True),
        encoding="utf-8")
    jobs = spec.jobs
    threads = spec.threads or (1 if ray else max(1, _cores() // jobs))  # Ray: CPUs of each cell's task
    n_runs = sum(len(c.seeds or [None]) for c in plan.cells)
    _progress.info(f"ablate: {len(plan.cells)} cells over {', '.join(plan.varied) or '(no field)'}"
                   + (f" ({n_runs} trainings: cells x seeds)" if n_runs != len(plan.cells) else "") + "; "
                   f"{'ray ' + spec.ray if ray else f'{jobs} job(s) x {threads} thread(s)'}; cache {store.root}")

    eval_file = grid_eval_set(plan, store, source)
    runs = seed_runs(plan.cells)
    prog = GridProgress(len(runs), jobs)
    records: dict[str, dict[str, Any]] = {}
    todo: list[Cell] = []
    for c in runs:  # cells whose every stage is cached finish here, without loading a model
        try:
            execute(c.config, store, eval_problems=eval_file, label=c.name, dry=True)
        except CachedFailure:
            pass  # fails again at once, here: no worker needed
        except Exception:  # noqa: BLE001 - NotCached, or an error the cell will report when it runs
            todo.append(c)
            continue
        rec = run_cell(c.name, c.folder, c.values, c.config.model_dump(mode="json"), str(store.root), eval_file, str(out),
                       None, spec.retry_failed)
        rec["ran"] = False
        prog.todo -= 1
        prog.finish(rec)
        records[c.name] = rec

    args = lambda c: (c.name, c.folder, c.values, c.config.model_dump(mode="json"), str(store.root), eval_file,  # noqa: E731
                      str(out), threads, spec.retry_failed)
    if todo and ray is not None:
        for rec in run_ray(ray, spec.ray, todo, args, prog, cpus=threads, local_cpus=_cores()):
            records[rec["name"]] = rec
    elif todo and jobs > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=get_context("spawn"),
                                 initializer=_worker_init, initargs=(threads,)) as pool:
            futs = {}
            for c in todo:
                futs[pool.submit(run_cell, *args(c))] = c
            for c in todo[: min(jobs, len(todo))]:
                prog.start(c.name)
            queued = todo[min(jobs, len(todo)):]
            for f in as_completed(futs):
                c = futs[f]
                try:
                    rec = f.result()
                except Exception as e:  # noqa: BLE001 - the worker process itself died
                    rec = _failed(c, _reason(None, e))
                prog.finish(rec)
                records[c.name] = rec
                if queued:
                    prog.start(queued.pop(0).name)
    else:
        for c in todo:
            prog.start(c.name)
            rec = run_cell(*args(c))
            prog.finish(rec)
            records[c.name] = rec

    if connected:
        ray.shutdown()
    ordered = [records[c.name] | {"cell": c.group, "seed": c.seed} for c in runs]
    board = leaderboard(plan, ordered, out)
    summary = {"name": spec.name, "cells": ordered, "baseline": plan.baseline, "varied": plan.varied,
               "eval_file": eval_file, "cache": str(store.root), "jobs": jobs, "threads": threads,
               "wall_s": round(time.monotonic() - t0, 3),
               "counts": {"total": len(ordered), "ok": sum(r["status"] == "ok" for r in ordered),
                          "cached": sum(bool(r["cached"]) for r in ordered),
                          "failed": sum(r["status"] != "ok" for r in ordered)}}
    write_json(out / "ablate.json", summary)
    top = board["rows"][0] if board["rows"] else None
    what = "cells" if len(ordered) == len(plan.cells) else f"trainings ({len(plan.cells)} cells x seeds)"
    _progress.info(f"ablate: {summary['counts']['ok']} of {len(ordered)} {what} scored "
                   f"({summary['counts']['cached']} from cache) in {summary['wall_s']:.0f}s"
                   + (f"; best {top['name']} Overall {top['scores']['overall']['point']:.1f}" if top else "")
                   + f"; leaderboard in {out / 'leaderboard.md'}")
    if summary["counts"]["failed"]:
        raise PartialRun(f"ablate: {summary['counts']['failed']} of {len(ordered)} cells failed (reasons in "
                         f"{out / 'leaderboard.md'}); the others are scored")
    return summary


def grid_eval_set(plan: Plan, store: StageStore, source: str = "grid") -> str:
    """The one eval set every cell is scored on (the base config's eval split), from the stage cache."""
    try:
        ev = store.run("problems", stage_config("problems", plan.base.problems), problems_inputs(plan.base.problems),
                       lambda d: problems(plan.base.problems, d), label="grid:eval set")
    except UserError as e:
        raise UserError(f"{source}: the base config's problems stage failed, so there is no eval set: {e}") from None
    return str(ev.dir / "eval.jsonl")


@dataclass
class SeedRun(Cell):
    """One training of a cell: the cell itself, or one of its seeds."""

    group: str = ""  # the cell's name
    seed: int | None = None


def seed_runs(cells: list[Cell]) -> list[SeedRun]:
    """Every training to run: a cell without seeds as itself, a cell with seeds once per seed (train.seed set)."""
    out: list[SeedRun] = []
    for c in cells:
        if not c.seeds:
            out.append(SeedRun(c.name, c.values, c.config, c.folder, None, c.name, None))
            continue
        for sd in c.seeds:
            cfg = c.config.model_copy(deep=True)
            cfg.train.seed = sd
            out.append(SeedRun(f"{c.name} seed={sd}", c.values, cfg, f"{c.folder}-seed{sd}", None, c.name, sd))
    return out
