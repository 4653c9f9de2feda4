"""Stage ``export``: the trained student as the files that would be shipped, each loadable again.

Formats (``mathdistill export RUN_DIR --format FORMAT --out DIR``):

- ``merged``: LoRA merged into the base (or the fully fine-tuned weights), safetensors in fp32, bf16 or fp16,
  with config, generation config, tokenizer and chat template: a plain transformers/vLLM folder.
- ``int8``: weight-only int8 of every linear layer through torchao (``Int8WeightOnlyConfig``), saved as
  safetensors by transformers and loaded back by ``from_pretrained`` (torchao installed); the embeddings
  stay in the chosen float dtype.
- ``int4``: torchao's int4 weight-only formats need CUDA kernels; on a CPU-only machine the export stops with a
  pointer to ``--format gguf --gguf-type q4_0``, a 4-bit file that runs on CPU.
- ``gguf``: one GGUF file (``f16``, ``q8_0`` or ``q4_0``) written with the ``gguf`` package in llama.cpp's
  layout (llama/mistral/qwen2 architectures) with the tokenizer as llama.cpp's converter writes it
  (:mod:`mathdistill.gguf_export`), loadable by llama.cpp and by transformers (``gguf_file=``). With
  llama-cpp-python installed, llama.cpp must tokenize check texts exactly as the student's tokenizer, or the
  file is not written.

Every export records its bytes on disk and MLS in ``DIR/export_summary.json`` and in the train folder's
``exports.json`` (the run report's export table). No pickles: weights are safetensors or GGUF only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .config import StageConfig
from .backends import eos_ids_of
from .errors import UserError
from .gguf_export import CHECK_TEXTS, CHKTXT, write_gguf
from .io import package_versions, read_json, write_json
from .models import load, model_bytes, resolve
from .plots import train_dir_of
from .progress import info
from .scores import ScoreConfig, mls_score

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ExportConfig(StageConfig):
    """How a trained student is written out."""

    format: Literal["merged", "int8", "int4", "gguf"] = Field("merged", description="merged safetensors, torchao int8/int4 weight-only, or GGUF")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="float dtype of merged weights (and of the unquantized embeddings of int8/int4)")
    gguf_type: Literal["f16", "q8_0", "q4_0"] = Field("q8_0", description="GGUF tensor type of the 2-D weights (norms stay f32)")
    int4_group_size: int = Field(128, ge=16, description="weights per int4 scale (int4 only)")
    score: ScoreConfig = Field(default_factory=ScoreConfig, description="MLS constants")


def _merged_model(run_dir: str | Path):
    spec = resolve(str(run_dir))
    model, tok = load(spec, dtype="float32", merge=True)  # LoRA folded into the base weights
    model.eval()
    return spec, model, tok


def _save_merged(model, tok, out: Path, dtype: str) -> None:
    import torch

    model = model.to({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype])
    model.config.dtype = dtype
    stop = sorted(eos_ids_of(model, tok))  # transformers and vLLM stop at the end of the turn too
    if stop and getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = stop[0] if len(stop) == 1 else stop
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _save_torchao(model, tok, out: Path, cfg: ExportConfig, bits: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, TorchAoConfig

    if bits == 8:
        from torchao.quantization import Int8WeightOnlyConfig

        quant = Int8WeightOnlyConfig()
    else:
        if not torch.cuda.is_available():
            import torchao

            raise UserError(f"export int4: torchao {torchao.__version__} has no int4 weight-only format that runs on CPU "
                            "and saves to safetensors (its int4 kernels need CUDA); for a 4-bit file that runs on CPU use "
                            "--format gguf --gguf-type q4_0, or run this export on a GPU machine")
        from torchao.quantization import Int4WeightOnlyConfig

        quant = Int4WeightOnlyConfig(group_size=cfg.int4_group_size)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        _save_merged(model, tok, tmp, cfg.dtype)
        try:
            q = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=TorchAoConfig(quant), dtype=cfg.dtype,
                                                     device_map="cuda" if bits == 4 else None)
        except (ImportError, RuntimeError) as e:
            raise UserError(f"export int{bits}: torchao could not quantize this model ({str(e).splitlines()[0]})") from None
        q.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_gguf_tokenizer(path: Path, tok) -> None:
    """With llama-cpp-python installed: llama.cpp must split :data:`CHECK_TEXTS` and :data:`CHKTXT` into the
    HF tokenizer's ids, else :class:`UserError` (the caller removes the file). Without it: nothing to run."""
    from . import llamacpp

    if not llamacpp.available():
        return
    bad = llamacpp.tokenizer_mismatches(path, tok, CHECK_TEXTS + [CHKTXT])
    if bad:
        raise UserError(f"export gguf: llama.cpp tokenizes {len(bad)} check texts differently from the student's "
                        f"tokenizer (first: {bad[0][:40]!r}); the GGUF was not written. Use --format merged")


# ---------------------------------------------------------------- the stage
def weight_files(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_file() and p.suffix in (".safetensors", ".gguf"))


def check_no_pickles(out: Path) -> None:
    bad = [p.name for p in out.rglob("*") if p.is_file() and p.suffix in PICKLE_SUFFIXES]
    if bad:
        raise UserError(f"export: {out} holds pickle files {bad}; exports ship safetensors or GGUF only")


def export(cfg: ExportConfig, run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write the student of ``run_dir`` (a run or train folder, or any model folder) to ``out_dir`` in
    ``cfg.format``; record bytes and MLS in ``export_summary.json`` (and the train folder's ``exports.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    spec, model, tok = _merged_model(run_dir)
    label = cfg.format
    if cfg.format == "merged":
        _save_merged(model, tok, out, cfg.dtype)
        label = f"merged-{cfg.dtype}"
    elif cfg.format in ("int8", "int4"):
        _save_torchao(model, tok, out, cfg, 8 if cfg.format == "int8" else 4)
    else:
        path = out / f"model-{cfg.gguf_type}.gguf"
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            write_gguf(model, tok, tmp, cfg.gguf_type)
            check_gguf_tokenizer(tmp, tok)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        label = f"gguf-{cfg.gguf_type}"
    check_no_pickles(out)
    files = weight_files(out)
    n_bytes = model_bytes(resolve(str(out)))  # what `mathdistill eval --model OUT` counts for MLS
    mls = mls_score(n_bytes, cfg.score.s_lo, cfg.score.s_hi)
    summary = {
        "format": cfg.format, "label": label, "dtype": cfg.dtype if cfg.format != "gguf" else None,
        "gguf_type": cfg.gguf_type if cfg.format == "gguf" else None, "source": str(run_dir),
        "base_model": getattr(spec, "name", str(run_dir)), "out": str(out.resolve()),
        "files": {p.name: p.stat().st_size for p in files}, "bytes": n_bytes,
        "total_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "MLS": round(mls, 4), "wall_s": round(time.monotonic() - t0, 1), "versions": package_versions(),
        "config": cfg.model_dump(mode="json"),
    }
    write_json(out / "export_summary.json", summary)
    _register(Path(run_dir), summary)
    info(f"export {label}: {n_bytes:,} bytes of weights ({n_bytes / 1e6:.1f} MB: {', '.join(summary['files'])}) "
         f"-> MLS {mls:.1f}; score it with: mathdistill eval --problems EVAL.jsonl --model {out} --out {out / 'eval'}")
    return summary


def _register(run_dir: Path, summary: dict[str, Any]) -> None:
    """Add (or replace, by output folder) this export in the train folder's ``exports.json``."""
    td = train_dir_of(run_dir)
    if td is None:
        return
    index = td / "exports.json"
    rows = read_json(index) if index.is_file() else []
    rows = [r for r in rows if r.get("out") != summary["out"]]
    rows.append({k: summary[k] for k in ("format", "label", "dtype", "gguf_type", "out", "bytes", "MLS", "files")})
    write_json(index, rows)
