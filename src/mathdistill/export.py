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
  layout (llama/mistral/qwen2 architectures), loadable by llama.cpp and by transformers (``gguf_file=``).

Every export records its bytes on disk and MLS in ``DIR/export_summary.json`` and in the train folder's
``exports.json`` (the run report's export table). No pickles: weights are safetensors or GGUF only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .config import StageConfig
from .errors import UserError
from .io import package_versions, read_json, write_json
from .models import load, model_bytes, resolve
from .progress import info
from .scores import ScoreConfig, mls_score

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


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


# ---------------------------------------------------------------- GGUF
def _rope_theta(c) -> float:
    theta = getattr(c, "rope_theta", None)
    if theta is None:
        theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _permute_qk(w, n_head: int):
    """llama.cpp stores q/k rows in its rotary layout (interleaved halves); transformers undoes this on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_fields(tok) -> dict[str, Any]:
    """BPE vocabulary, merges, token types and special ids as llama.cpp's "gpt2" tokenizer model stores them."""
    import gguf

    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise UserError(f"export gguf: only byte-level BPE tokenizers are written here, this one is {model.get('type')}; "
                        "use llama.cpp's convert_hf_to_gguf.py on a --format merged export")
    n = len(tok)
    tokens = tok.convert_ids_to_tokens(list(range(n)))
    special = set(tok.all_special_ids)
    added = {i for i in tok.added_tokens_decoder}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.USER_DEFINED if i in added
             else gguf.TokenType.NORMAL for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def write_gguf(model, tok, path: Path, gguf_type: str) -> None:
    """Write a llama-family causal LM and its tokenizer to one GGUF file (llama.cpp's tensor names and layout)."""
    import gguf
    import numpy as np

    c = model.config
    arch = GGUF_ARCH.get(c.model_type)
    if arch is None:
        raise UserError(f"export gguf: architecture {c.model_type!r} is not written here (llama, mistral, qwen2 are); "
                        "use llama.cpp's convert_hf_to_gguf.py on a --format merged export")
    qt = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
          "q4_0": gguf.GGMLQuantizationType.Q4_0}[gguf_type]
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type]
    n_head, n_kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
    toks = _tokenizer_fields(tok)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(Path(str(getattr(c, "_name_or_path", "") or "student")).name or "student")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(_rope_theta(c))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(len(toks["tokens"]))
    w.add_file_type(ftype)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks["tokens"])
    w.add_token_types(toks["types"])
    w.add_token_merges(toks["merges"])
    for key, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unk", tok.unk_token_id), ("pad", tok.pad_token_id)):
        if tid is not None:
            getattr(w, f"add_{key}_token_id")(tid)
    w.add_add_bos_token(False)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_hidden_layers)
    tied = bool(getattr(c, "tie_word_embeddings", False))
    for name, t in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"export gguf: no GGUF name for tensor {name!r}")
        data = t.detach().float().cpu().numpy()
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = _permute_qk(data, n_head)
        elif arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = _permute_qk(data, n_kv)
        if data.ndim == 1:
            w.add_tensor(new, data.astype(np.float32))
            continue
        ttype = qt
        if qt != gguf.GGMLQuantizationType.F16 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qt][0]:
            ttype = gguf.GGMLQuantizationType.F16  # rows not a whole number of blocks: keep f16, as llama.cpp does
        if ttype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(new, data.astype(np.float16))
        else:
            w.add_tensor(new, gguf.quants.quantize(data, ttype), raw_dtype=ttype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
        write_gguf(model, tok, tmp, cfg.gguf_type)
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


def _train_dir(run_dir: Path) -> Path | None:
    if (run_dir / "student.json").is_file():
        return run_dir
    if (run_dir / "train" / "student.json").is_file():
        return run_dir / "train"
    return None


def _register(run_dir: Path, summary: dict[str, Any]) -> None:
    """Add (or replace, by output folder) this export in the train folder's ``exports.json``."""
    td = _train_dir(run_dir)
    if td is None:
        return
    index = td / "exports.json"
    rows = read_json(index) if index.is_file() else []
    rows = [r for r in rows if r.get("out") != summary["out"]]
    rows.append({k: summary[k] for k in ("format", "label", "dtype", "gguf_type", "out", "bytes", "MLS", "files")})
    write_json(index, rows)


def export_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's exports, one dict per export: label, bytes, MLS, and AS/Overall when ``<export>/eval/scores.json``
    exists (``mathdistill eval --model EXPORT --out EXPORT/eval``)."""
    td = _train_dir(Path(run_dir))
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
