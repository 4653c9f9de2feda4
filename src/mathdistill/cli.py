"""The ``mathdistill`` command: one thin verb per stage. Each verb builds its stage's config
(preset -> ``--config`` YAML -> flags -> ``--set key=value``) and calls the library function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel
from rich.markup import escape

from . import __version__
from .config import StageConfig, deep_merge, load_config, parse_overrides, read_preset, read_yaml, build
from .errors import PartialRun, UserError
from .io import check_readable, prepare_out_dir
from .ablate import GridSpec
from .curate import CurateConfig
from .evaluate import EvalConfig
from .generate import GenerateConfig
from .problems import ProblemsConfig
from .progress import console
from .train import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Distill math reasoning from a teacher LLM into a small student, and prove it with numbers.")


def default_of(model: type[BaseModel], field: str) -> Any:
    f = model.model_fields[field]
    return f.get_default(call_default_factory=True)


def h(model: type[BaseModel], field: str) -> str:
    """Help text of a flag: the config field's description and its default, stated once in the model."""
    f = model.model_fields[field]
    return f"{f.description} [config: {field}; default: {default_of(model, field)}]"


def stage_config(model: type[StageConfig], section: str, config: Optional[Path], preset: Optional[str],
                 sets: list[str] | None, flags: dict[str, Any]) -> StageConfig:
    """A stage's config from a run preset/config (its ``section``) or a stage-shaped YAML, then flags."""
    data: dict[str, Any] = {}
    source = "flags"
    if preset:
        data = deep_merge(data, read_preset(preset).get(section, {}))
        source = f"preset {preset}"
    if config:
        y = read_yaml(config)
        data = deep_merge(data, y[section] if isinstance(y.get(section), dict) else y)
        source = str(config)
    data = deep_merge(data, {k: v for k, v in flags.items() if v is not None})
    data = deep_merge(data, parse_overrides(sets))
    return build(model, data, source)


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (a stage config, or a run config whose section is used)")
PresetOpt = typer.Option(None, "--preset", help="named preset: default, smoke, seed")
SetOpt = typer.Option(None, "--set", help="override any config key: --set train.epochs=1 (repeatable)")
OverwriteOpt = typer.Option(False, "--overwrite", help="reuse an output folder that is not empty")


@app.command("problems")
def problems_cmd(out: Path = typer.Option(..., "--out", "-o", help="folder for train.jsonl and eval.jsonl"),
                 config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
                 sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Write Problem JSONL (train and eval splits) from the embedded, seeded sources."""
    from .problems import problems

    cfg = stage_config(ProblemsConfig, "problems", config, preset, sets, {})
    problems(cfg, prepare_out_dir(out, overwrite))


@app.command("generate")
def generate_cmd(problems: Path = typer.Option(..., "--problems", "-p", help="Problem JSONL to send to the teacher"),
                 out: Path = typer.Option(..., "--out", "-o", help="folder for traces.jsonl"),
                 backend: Optional[str] = typer.Option(None, help=h(GenerateConfig, "backend")),
                 base_url: Optional[str] = typer.Option(None, "--base-url", help=h(GenerateConfig, "base_url")),
                 model: Optional[str] = typer.Option(None, "--model", help=h(GenerateConfig, "model")),
                 samples: Optional[int] = typer.Option(None, help=h(GenerateConfig, "samples")),
                 concurrency: Optional[int] = typer.Option(None, help=h(GenerateConfig, "concurrency")),
                 config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
                 sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Teacher traces for problems (reference chains, or any OpenAI-compatible endpoint).
    The API key is read from MATHDISTILL_API_KEY or OPENAI_API_KEY only."""
    from .generate import generate

    check_readable(problems, "problems file")
    cfg = stage_config(GenerateConfig, "generate", config, preset, sets,
                       {"backend": backend, "base_url": base_url, "model": model, "samples": samples, "concurrency": concurrency})
    generate(cfg, problems, prepare_out_dir(out, overwrite))


@app.command("curate")
def curate_cmd(traces: Path = typer.Option(..., "--traces", "-t", help="Trace JSONL from generate"),
               problems: list[Path] = typer.Option(..., "--problems", "-p", help="Problem file(s) the traces refer to"),
               out: Path = typer.Option(..., "--out", "-o", help="folder for dataset.json and dataset_info.json"),
               keep_think: Optional[bool] = typer.Option(None, "--keep-think/--strip-think", help=h(CurateConfig, "keep_think")),
               config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
               sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Curate traces into Alpaca training rows; every step counts what it removed."""
    from .curate import curate

    check_readable(traces, "traces file")
    for p in problems:
        check_readable(p, "problems file")
    cfg = stage_config(CurateConfig, "curate", config, preset, sets, {"keep_think": keep_think})
    curate(cfg, traces, problems, prepare_out_dir(out, overwrite))


@app.command("train")
def train_cmd(dataset: Path = typer.Option(..., "--dataset", "-d", help="Alpaca dataset.json from curate"),
              out: Path = typer.Option(..., "--out", "-o", help="folder for the adapter and student.json"),
              base_model: Optional[str] = typer.Option(None, "--model", "-m", help=h(TrainConfig, "base_model")),
              epochs: Optional[float] = typer.Option(None, help=h(TrainConfig, "epochs")),
              learning_rate: Optional[float] = typer.Option(None, "--lr", help=h(TrainConfig, "learning_rate")),
              config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
              sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """LoRA SFT of the student (loss on answer tokens only). --preset seed reproduces the seed's recipe."""
    from .train import train

    check_readable(dataset, "dataset file")
    cfg = stage_config(TrainConfig, "train", config, preset, sets,
                       {"base_model": base_model, "epochs": epochs, "learning_rate": learning_rate})
    train(cfg, dataset, prepare_out_dir(out, overwrite))


@app.command("eval")
def eval_cmd(problems: Path = typer.Option(..., "--problems", "-p", help="Problem JSONL with reference answers"),
             out: Path = typer.Option(..., "--out", "-o", help="folder for predictions.jsonl and scores.json"),
             model: str = typer.Option("smollm2-135m", "--model", "-m", help="model: alias, folder, .gguf, run folder, hub id"),
             adapter: Optional[str] = typer.Option(None, "--adapter", help="LoRA adapter folder on top of --model"),
             max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=h(EvalConfig, "max_new_tokens")),
             limit: Optional[int] = typer.Option(None, "--limit", help=h(EvalConfig, "limit")),
             seed: Optional[int] = typer.Option(None, "--seed", help=h(EvalConfig, "seed")),
             config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
             sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Score a model on eval problems: AS, CQS (proxy), ES, MLS, Overall."""
    from .evaluate import evaluate

    check_readable(problems, "problems file")
    cfg = stage_config(EvalConfig, "eval", config, preset, sets,
                       {"max_new_tokens": max_new_tokens, "limit": limit, "seed": seed})
    evaluate(cfg, problems, prepare_out_dir(out, overwrite), model=model, adapter=adapter)


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="run folder with scores.json")):
    """(Re)write report.md and its plots for a run folder."""
    from .report import report

    console.print(f"report: {report(run_dir)}")


CacheOpt = typer.Option(None, "--cache", help="stage cache folder, shared by runs and grids (default: <out>/cache)")


@app.command("run")
def run_cmd(config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
            out: Optional[Path] = typer.Option(None, "--out", "-o", help="run folder (default runs/<name>)"),
            sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt, cache: Optional[Path] = CacheOpt):
    """The whole loop from one config: problems, generate, curate, train, eval, report.
    Stages whose inputs did not change are taken from the stage cache."""
    from .run import RunConfig, run

    if not config and not preset:
        preset = "default"
    cfg = load_config(RunConfig, config, preset, sets)
    run(cfg, out, overwrite, cache_dir=cache)


@app.command("ablate")
def ablate_cmd(grid: Path = typer.Argument(..., help="grid YAML: base config, fields to vary (grid:), explicit cells:"),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="grid folder (default runs/<grid name>); rerun to resume"),
               jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help=h(GridSpec, "jobs")),
               threads: Optional[int] = typer.Option(None, "--threads", help=h(GridSpec, "threads")),
               ray: Optional[str] = typer.Option(None, "--ray", help=h(GridSpec, "ray")),
               retry_failed: Optional[bool] = typer.Option(None, "--retry-failed/--no-retry-failed", help=h(GridSpec, "retry_failed")),
               sets: Optional[list[str]] = typer.Option(None, "--set", help="override a base config key for every cell: --set train.epochs=1"),
               cache: Optional[Path] = CacheOpt):
    """A grid of runs over any config field, every stage cached by the hash of its inputs; writes a
    leaderboard (md, csv, html) with intervals, paired differences to the baseline and each field's effect."""
    from .ablate import ablate, load_grid

    check_readable(grid, "grid file")
    spec = load_grid(grid, sets, {"jobs": jobs, "threads": threads, "ray": ray, "retry_failed": retry_failed})
    ablate(spec, out, cache_dir=cache, source=str(grid))


@app.command("config")
def config_cmd(preset: Optional[str] = PresetOpt, config: Optional[Path] = ConfigOpt,
               sets: Optional[list[str]] = SetOpt):
    """Print the resolved run config as YAML (every key, with its value)."""
    import yaml

    from .run import RunConfig

    cfg = load_config(RunConfig, config, preset, sets)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="print the version and exit")):
    if version:
        typer.echo(f"mathdistill {__version__}")
        raise typer.Exit()


def main() -> None:
    try:
        app()
    except (UserError, PartialRun) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}" if isinstance(e, UserError) else f"[yellow]partial:[/yellow] {escape(str(e))}",
                      markup=True, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted; finished work is on disk")
        sys.exit(130)


