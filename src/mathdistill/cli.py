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
from .evaluate import EvalConfig, PredictionFields
from .export import ExportConfig
from .generate import GenerateConfig
from .judge import JudgeConfig
from .problems import ProblemsConfig
from .progress import console
from .serve import ServeConfig
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
    over = parse_overrides(sets)
    if isinstance(over.get(section), dict):  # --set train.lr=... on the train verb means the same as --set lr=...
        over = deep_merge({k: v for k, v in over.items() if k != section}, over[section])
    data = deep_merge(data, over)
    return build(model, data, source)


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (a stage config, or a run config whose section is used)")
PresetOpt = typer.Option(None, "--preset", help="named preset: default, smoke, seed")
SetOpt = typer.Option(None, "--set", help="override any config key: --set train.epochs=1 (repeatable)")
OverwriteOpt = typer.Option(False, "--overwrite", help="reuse an output folder that is not empty")


def _check_problems(path: Path) -> None:
    """A problems file must be readable, unless it names a shipped benchmark (gsm8k, math500[:100]...)."""
    from .benchmarks import is_benchmark

    if not is_benchmark(path):
        check_readable(path, "problems file")


@app.command("problems")
def problems_cmd(out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for train.jsonl and eval.jsonl"),
                 list_: bool = typer.Option(False, "--list", help="list the shipped benchmarks (usable as --problems NAME, "
                                            "NAME[:200], NAME@200, problems.eval_file: NAME) and exit"),
                 config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
                 sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Write Problem JSONL (train and eval splits) from the embedded, seeded sources; --list shows the
    shipped benchmarks (GSM8K test, MATH-500)."""
    if list_:
        from .benchmarks import listing

        for b in listing():
            typer.echo(f"{b['name']:<9} {b['count']:>5} problems  {b['license']:<4} {b['source']}"
                       + ("" if b["status"] == "ok" else f"  [{b['status']}]"))
        typer.echo("use: --problems gsm8k | gsm8k[:200] | gsm8k@200 (seeded sample) | problems.eval_file: math500")
        return
    if out is None:
        raise UserError("problems needs --out DIR (or --list)")
    from .problems import problems

    cfg = stage_config(ProblemsConfig, "problems", config, preset, sets, {})
    problems(cfg, prepare_out_dir(out, overwrite))


@app.command("generate")
def generate_cmd(problems: Optional[Path] = typer.Option(None, "--problems", "-p", help="Problem JSONL to send to the teacher"),
                 out: Path = typer.Option(..., "--out", "-o", help="folder for traces.jsonl, failures.jsonl and the call cache; "
                                          "rerunning into it makes only the calls that are missing"),
                 backend: Optional[str] = typer.Option(None, help=h(GenerateConfig, "backend")),
                 base_url: Optional[str] = typer.Option(None, "--base-url", help=h(GenerateConfig, "base_url")),
                 model: Optional[str] = typer.Option(None, "--model", help=h(GenerateConfig, "model")),
                 samples: Optional[int] = typer.Option(None, help=h(GenerateConfig, "samples")),
                 concurrency: Optional[int] = typer.Option(None, help=h(GenerateConfig, "concurrency")),
                 rpm: Optional[float] = typer.Option(None, "--rpm", help=h(GenerateConfig, "rpm")),
                 tpm: Optional[float] = typer.Option(None, "--tpm", help=h(GenerateConfig, "tpm")),
                 timeout_s: Optional[float] = typer.Option(None, "--timeout", help=h(GenerateConfig, "timeout_s")),
                 max_retries: Optional[int] = typer.Option(None, "--max-retries", help=h(GenerateConfig, "max_retries")),
                 temperature: Optional[float] = typer.Option(None, "--temperature", help=h(GenerateConfig, "temperature")),
                 top_p: Optional[float] = typer.Option(None, "--top-p", help=h(GenerateConfig, "top_p")),
                 max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=h(GenerateConfig, "max_tokens")),
                 token_param: Optional[str] = typer.Option(None, "--token-param", help=h(GenerateConfig, "token_param")),
                 seed: Optional[int] = typer.Option(None, "--seed", help=h(GenerateConfig, "seed")),
                 extra_body: Optional[str] = typer.Option(None, "--extra-body", help=h(GenerateConfig, "extra_body")),
                 cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", help=h(GenerateConfig, "cache")),
                 from_file: Optional[Path] = typer.Option(None, "--from-file", help="import a batch-inference export "
                                                          "(JSONL/JSON/CSV/Parquet) as traces instead of calling a teacher"),
                 id_field: Optional[str] = typer.Option(None, "--id-field", help=h(GenerateConfig, "id_field")),
                 question_field: Optional[str] = typer.Option(None, "--question-field", help=h(GenerateConfig, "question_field")),
                 answer_field: Optional[str] = typer.Option(None, "--answer-field", help=h(GenerateConfig, "answer_field")),
                 reasoning_field: Optional[str] = typer.Option(None, "--reasoning-field", help=h(GenerateConfig, "reasoning_field")),
                 output_field: Optional[str] = typer.Option(None, "--output-field", help=h(GenerateConfig, "output_field")),
                 finish_reason_field: Optional[str] = typer.Option(None, "--finish-reason-field", help=h(GenerateConfig, "finish_reason_field")),
                 question_template: Optional[str] = typer.Option(None, "--question-template", help=h(GenerateConfig, "question_template")),
                 config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
                 sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Teacher traces for problems (reference chains, any OpenAI-compatible endpoint, or vLLM), or an
    imported batch export. The API key is read from MATHDISTILL_API_KEY or OPENAI_API_KEY only.
    Exit code 3: some samples failed for good (failures.jsonl); rerun the same command to retry them."""
    from .generate import generate, generate_out_dir

    if problems is None and from_file is None:
        raise UserError("generate needs --problems FILE (or --from-file EXPORT to import a teacher's outputs)")
    if problems is not None:
        _check_problems(problems)
    if from_file is not None:
        check_readable(from_file, "--from-file export")
    cfg = stage_config(GenerateConfig, "generate", config, preset, sets, {
        "backend": backend, "base_url": base_url, "model": model, "samples": samples, "concurrency": concurrency,
        "rpm": rpm, "tpm": tpm, "timeout_s": timeout_s, "max_retries": max_retries, "temperature": temperature,
        "top_p": top_p, "max_tokens": max_tokens, "token_param": token_param, "seed": seed, "extra_body": extra_body,
        "cache": cache,
        "id_field": id_field, "question_field": question_field, "answer_field": answer_field,
        "reasoning_field": reasoning_field, "output_field": output_field, "finish_reason_field": finish_reason_field,
        "question_template": question_template})
    generate(cfg, problems, generate_out_dir(out, overwrite), from_file=from_file)


@app.command("curate")
def curate_cmd(traces: Path = typer.Option(..., "--traces", "-t", help="Trace file from generate, or your own export (JSONL, JSON, CSV, Parquet)"),
               problems: Optional[list[Path]] = typer.Option(None, "--problems", "-p", help="Problem file(s) the traces refer to (repeatable; optional when each trace carries its question)"),
               out: Path = typer.Option(..., "--out", "-o", help="folder for the training files, dataset_info.json and curate_report.*"),
               eval_problems: Optional[list[Path]] = typer.Option(None, "--eval-problems", "-e", help="eval problem file(s) for the decontaminate step (repeatable)"),
               steps: Optional[str] = typer.Option(None, "--steps", help="comma-separated; " + h(CurateConfig, "steps")),
               formats: Optional[str] = typer.Option(None, "--format", help="comma-separated; " + h(CurateConfig, "formats")),
               tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help=h(CurateConfig, "tokenizer")),
               keep_think: Optional[bool] = typer.Option(None, "--keep-think/--strip-think", help=h(CurateConfig, "keep_think")),
               question_template: Optional[str] = typer.Option(None, "--question-template", help=h(CurateConfig, "question_template")),
               config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
               sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Curate traces into training rows (verify, vote, select, filter, decontaminate, dedup); every step counts
    what it removed, in curate_report.json/.md/.png."""
    from .curate import curate

    check_readable(traces, "traces file")
    for p in [*(problems or []), *(eval_problems or [])]:
        _check_problems(p)
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v is not None else None  # noqa: E731
    cfg = stage_config(CurateConfig, "curate", config, preset, sets,
                       {"keep_think": keep_think, "steps": split(steps), "formats": split(formats), "tokenizer": tokenizer,
                        "question_template": question_template})
    curate(cfg, traces, problems or [], prepare_out_dir(out, overwrite), eval_problems=eval_problems or [])


@app.command("train")
def train_cmd(dataset: Path = typer.Option(..., "--dataset", "-d", help="Alpaca dataset.json from curate"),
              out: Path = typer.Option(..., "--out", "-o", help="folder for the adapter (or weights), student.json, logs, checkpoints"),
              base_model: Optional[str] = typer.Option(None, "--model", "-m", help=h(TrainConfig, "base_model")),
              method: Optional[str] = typer.Option(None, "--method", help=h(TrainConfig, "method")),
              finetune: Optional[str] = typer.Option(None, "--finetune", help=h(TrainConfig, "finetune")),
              teacher: Optional[str] = typer.Option(None, "--teacher", help=h(TrainConfig, "teacher")),
              kd_loss: Optional[str] = typer.Option(None, "--kd-loss", help=h(TrainConfig, "kd_loss")),
              epochs: Optional[float] = typer.Option(None, help=h(TrainConfig, "epochs")),
              learning_rate: Optional[float] = typer.Option(None, "--lr", help=h(TrainConfig, "learning_rate")),
              batch_size: Optional[int] = typer.Option(None, "--batch-size", help=h(TrainConfig, "batch_size")),
              grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help=h(TrainConfig, "grad_accum")),
              packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help=h(TrainConfig, "packing")),
              gradient_checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                                    help=h(TrainConfig, "gradient_checkpointing")),
              save_steps: Optional[int] = typer.Option(None, "--save-steps", help=h(TrainConfig, "save_steps")),
              resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in --out (same config)"),
              config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
              sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Fine-tune the student (LoRA or full; SFT or logit KD; loss on answer tokens only).
    --preset seed reproduces the seed's recipe. Under `accelerate launch` it runs on every GPU given."""
    from .train import train

    check_readable(dataset, "dataset file")
    cfg = stage_config(TrainConfig, "train", config, preset, sets,
                       {"base_model": base_model, "method": method, "finetune": finetune, "teacher": teacher,
                        "kd_loss": kd_loss, "epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size,
                        "grad_accum": grad_accum, "packing": packing, "gradient_checkpointing": gradient_checkpointing,
                        "save_steps": save_steps})
    train(cfg, dataset, out if resume else prepare_out_dir(out, overwrite), resume=resume)


@app.command("export")
def export_cmd(run_dir: Path = typer.Argument(..., help="run folder or train folder (or any model folder) to export"),
               fmt: Optional[str] = typer.Option(None, "--format", "-f", help=h(ExportConfig, "format")),
               out: Path = typer.Option(..., "--out", "-o", help="folder for the exported files"),
               dtype: Optional[str] = typer.Option(None, "--dtype", help=h(ExportConfig, "dtype")),
               gguf_type: Optional[str] = typer.Option(None, "--gguf-type", help=h(ExportConfig, "gguf_type")),
               config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Write the student as shipped files (merged safetensors, int8, GGUF); prints bytes on disk and MLS."""
    from .export import export

    if not run_dir.exists():
        raise UserError(f"run folder not found: {run_dir}")
    cfg = stage_config(ExportConfig, "export", config, None, sets, {"format": fmt, "dtype": dtype, "gguf_type": gguf_type})
    export(cfg, run_dir, prepare_out_dir(out, overwrite))


@app.command("eval")
def eval_cmd(problems: Optional[Path] = typer.Option(None, "--problems", "-p", help="Problem JSONL with reference answers"),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for predictions.jsonl, scores.json, report.md/html"),
             model: Optional[str] = typer.Option(None, "--model", "-m", help="model: alias, folder, .gguf, run folder, hub id; "
                                                 "with --backend openai its name at the endpoint [default: smollm2-135m]"),
             adapter: Optional[str] = typer.Option(None, "--adapter", help="LoRA adapter folder on top of --model"),
             label: Optional[str] = typer.Option(None, "--label", help="name of this model in reports [default: --model]"),
             backend: Optional[str] = typer.Option(None, "--backend", help=h(EvalConfig, "backend")),
             base_url: Optional[str] = typer.Option(None, "--base-url", help=h(EvalConfig, "base_url")),
             max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=h(EvalConfig, "max_new_tokens")),
             batch_size: Optional[int] = typer.Option(None, "--batch-size", help=h(EvalConfig, "batch_size")),
             threads: Optional[int] = typer.Option(None, "--threads", min=1, help=h(EvalConfig, "threads")),
             limit: Optional[int] = typer.Option(None, "--limit", help=h(EvalConfig, "limit")),
             seed: Optional[int] = typer.Option(None, "--seed", help=h(EvalConfig, "seed")),
             model_bytes: Optional[int] = typer.Option(None, "--model-bytes", help=h(EvalConfig, "model_bytes")),
             cqs: Optional[str] = typer.Option(None, "--cqs", help=h(EvalConfig, "cqs")),
             calculator: Optional[bool] = typer.Option(None, "--calculator/--no-calculator", help=h(EvalConfig, "calculator")),
             judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help=h(JudgeConfig, "base_url").replace("config: ", "config: judge.")),
             judge_model: Optional[str] = typer.Option(None, "--judge-model", help=h(JudgeConfig, "model").replace("config: ", "config: judge.")),
             predictions: Optional[Path] = typer.Option(None, "--predictions", help="score these outputs (JSONL/JSON/CSV/Parquet, "
                                                        "or a folder with predictions.jsonl) instead of generating"),
             id_field: Optional[str] = typer.Option(None, "--id-field", help=h(PredictionFields, "id_field").replace("config: ", "config: predictions_fields.")),
             output_field: Optional[str] = typer.Option(None, "--output-field", help=h(PredictionFields, "output_field").replace("config: ", "config: predictions_fields.")),
             tokens_field: Optional[str] = typer.Option(None, "--tokens-field", help=h(PredictionFields, "tokens_field").replace("config: ", "config: predictions_fields.")),
             tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="with --predictions: a local model whose tokenizer "
                                                     "counts the tokens of outputs that have no token count (its size is not "
                                                     "used for MLS; --model is the model that made the predictions)"),
             compare: Optional[tuple[Path, Path]] = typer.Option(None, "--compare", help="A B: paired difference B - A per score, "
                                                                 "with its interval, of two eval folders (nothing is generated)"),
             config: Optional[Path] = ConfigOpt, preset: Optional[str] = PresetOpt,
             sets: Optional[list[str]] = SetOpt, overwrite: bool = OverwriteOpt):
    """Score a model on eval problems: AS, CQS (proxy or judge), ES, MLS, Overall, each with a 95% interval.
    Or score predictions made elsewhere (--predictions), or compare two evals (--compare A B)."""
    from .evaluate import compare as compare_evals, evaluate, format_compare

    if compare:
        result = compare_evals(compare[0], compare[1], prepare_out_dir(out, overwrite) if out else None)
        for line in format_compare(result):
            typer.echo(line)
        return
    if problems is None or out is None:
        raise UserError("eval needs --problems FILE and --out DIR (or --compare A B)")
    _check_problems(problems)
    if predictions is not None and not predictions.exists():
        raise UserError(f"predictions file not found: {predictions}")
    judge = {k: v for k, v in {"base_url": judge_base_url, "model": judge_model}.items() if v is not None}
    fields = {k: v for k, v in {"id_field": id_field, "output_field": output_field, "tokens_field": tokens_field}.items() if v is not None}
    cfg = stage_config(EvalConfig, "eval", config, preset, sets,
                       {"backend": backend, "base_url": base_url, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                        "threads": threads, "limit": limit, "seed": seed, "model_bytes": model_bytes, "cqs": cqs, "calculator": calculator,
                        "judge": judge or None, "predictions_fields": fields or None})
    evaluate(cfg, problems, prepare_out_dir(out, overwrite), model=model, adapter=adapter, label=label, predictions=predictions,
             tokenizer=tokenizer)


@app.command("serve")
def serve_cmd(model: str = typer.Option("smollm2-135m", "--model", "-m", help="model: alias, folder, .gguf, run folder (base + LoRA), hub id"),
              adapter: Optional[str] = typer.Option(None, "--adapter", help="LoRA adapter folder on top of --model"),
              host: Optional[str] = typer.Option(None, "--host", help=h(ServeConfig, "host")),
              port: Optional[int] = typer.Option(None, "--port", help=h(ServeConfig, "port")),
              api_key: Optional[str] = typer.Option(None, "--api-key", help="require 'Authorization: Bearer KEY' on every request "
                                                    "(prefer the MATHDISTILL_SERVE_KEY variable: a flag shows in the process list)"),
              engine: Optional[str] = typer.Option(None, "--engine", "--backend", help=h(ServeConfig, "engine")),
              served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help=h(ServeConfig, "served_model_name")),
              max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", help=h(ServeConfig, "max_batch_size")),
              batch_wait_ms: Optional[float] = typer.Option(None, "--batch-wait-ms", help=h(ServeConfig, "batch_wait_ms")),
              max_queue: Optional[int] = typer.Option(None, "--max-queue", help=h(ServeConfig, "max_queue")),
              max_n: Optional[int] = typer.Option(None, "--max-n", help=h(ServeConfig, "max_n")),
              max_tokens_cap: Optional[int] = typer.Option(None, "--max-tokens-cap", help=h(ServeConfig, "max_tokens_cap")),
              max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", help=h(ServeConfig, "max_prompt_tokens")),
              max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", help=h(ServeConfig, "max_body_bytes")),
              threads: Optional[int] = typer.Option(None, "--threads", help=h(ServeConfig, "threads")),
              calculator: Optional[bool] = typer.Option(None, "--calculator/--no-calculator", help=h(ServeConfig, "calculator")),
              config: Optional[Path] = ConfigOpt, sets: Optional[list[str]] = SetOpt):
    """Serve a model (a trained student: run folder, or base + --adapter) as an OpenAI-compatible API.
    Bearer auth with --api-key or MATHDISTILL_SERVE_KEY; binds 127.0.0.1 unless --host says otherwise.
    --engine llamacpp (or --backend llamacpp) serves the model's GGUF on llama.cpp."""
    from .serve import serve

    cfg = stage_config(ServeConfig, "serve", config, None, sets,
                       {"host": host, "port": port, "engine": engine, "served_model_name": served_model_name,
                        "max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_ms, "max_queue": max_queue,
                        "max_n": max_n, "max_tokens_cap": max_tokens_cap, "max_prompt_tokens": max_prompt_tokens,
                        "max_body_bytes": max_body_bytes, "threads": threads, "calculator": calculator})
    serve(cfg, model=model, adapter=adapter, api_key=api_key)


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="run folder, eval folder, or a folder of eval folders")):
    """(Re)write report.md (+ plots) and the self-contained report.html."""
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
               cache: Optional[Path] = CacheOpt,
               plan: bool = typer.Option(False, "--plan", help="print the power plan (minimum detectable Overall difference at "
                                         "the eval size, eval size for --detect, wall time) from a pilot; never trains"),
               detect: Optional[float] = typer.Option(None, "--detect", help="with --plan: the Overall difference (points) "
                                                      "the grid should resolve, e.g. 2.0"),
               pilot: Optional[Path] = typer.Option(None, "--pilot", help="with --plan: a previous eval folder, predictions.jsonl "
                                                    "or grid folder instead of a fresh pilot eval of the base model"),
               pilot_n: int = typer.Option(32, "--pilot-n", min=0, help="with --plan: problems in the pilot eval of the base model "
                                           "(it measures the eval rate when --pilot has none; 0: no pilot eval)"),
               rho: float = typer.Option(0.5, "--rho", min=-1.0, max=1.0, help="with --plan and a one-model pilot: assumed "
                                         "correlation of two cells' per-problem Overall")):
    """A grid of runs over any config field, every stage cached by the hash of its inputs; writes a
    leaderboard (md, csv, html) with intervals, paired differences to the baseline and each field's effect.
    --plan: how large a difference the grid can resolve, and what resolving --detect points would take."""
    from .ablate import ablate, load_grid

    check_readable(grid, "grid file")
    if (detect is not None or pilot is not None) and not plan:
        raise UserError("--detect and --pilot go with --plan (which plans the grid and runs nothing)")
    spec = load_grid(grid, sets, {"jobs": jobs, "threads": threads, "ray": ray, "retry_failed": retry_failed})
    if plan:
        from .ablate_plan import plan_grid

        if pilot is not None and not pilot.exists():
            raise UserError(f"--pilot not found: {pilot}")
        if detect is not None and detect <= 0:
            raise UserError(f"--detect must be above 0 Overall points, got {detect}")
        plan_grid(spec, out, cache_dir=cache, source=str(grid), pilot=pilot, detect=detect, pilot_n=pilot_n, rho=rho)
        return
    ablate(spec, out, cache_dir=cache, source=str(grid))


@app.command("config")
def config_cmd(preset: Optional[str] = PresetOpt, config: Optional[Path] = ConfigOpt,
               sets: Optional[list[str]] = SetOpt,
               doc: bool = typer.Option(False, "--doc", help="write the config reference (every stage config's fields, "
                                        "types, defaults, descriptions) as markdown instead"),
               doc_out: Path = typer.Option(Path("docs/config.md"), "--doc-out", help="where --doc writes it")):
    """Print the resolved run config as YAML (every key, with its value); --doc: write the config reference."""
    import yaml

    from .run import RunConfig

    if doc:
        from .config_doc import config_reference

        doc_out.parent.mkdir(parents=True, exist_ok=True)
        doc_out.write_text(config_reference(), encoding="utf-8")
        typer.echo(f"wrote {doc_out}")
        return

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


