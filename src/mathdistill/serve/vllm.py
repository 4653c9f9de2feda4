"""``serve --engine vllm``: hand serving to vLLM's own OpenAI server (a GPU machine), on the merged model."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..models import ModelSpec, home, load, load_path, save_once
from ..progress import info
from .config import ServeConfig


def served_name(spec: ModelSpec) -> str:
    """The id clients see: the alias, or the model/run folder's name (``runs/x/train`` -> ``x``)."""
    p = Path(spec.name.rstrip("/"))
    if spec.name in ("", ".") or p.suffix == ".gguf":
        return p.stem or "student"
    return p.parent.name if p.name == "train" and p.parent.name else p.name


def merged_folder(spec: ModelSpec, dtype: str) -> str:
    """A folder vLLM can load: the model itself, or base + LoRA merged once into the cache (atomic rename)."""
    if not spec.adapter:
        return load_path(spec)
    h = hashlib.sha256(f"{load_path(spec)}|{dtype}".encode())
    for f in sorted(Path(spec.adapter).iterdir()):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    dest = home() / "merged" / h.hexdigest()[:16]
    if (dest / "config.json").is_file():
        return str(dest)
    info(f"merging the LoRA adapter into the base model once (cached in {dest}) ...")
    model, tok = load(spec, dtype=dtype, merge=True)
    return str(save_once(model, tok, dest))


def check_vllm() -> None:
    """One clear line when vLLM or a CUDA GPU is missing (vLLM is imported lazily, by its own process)."""
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        raise UserError("--engine vllm needs vLLM on a machine with a CUDA GPU: pip install 'mathdistill[vllm]' "
                        "(or serve with the default --engine transformers)")
    import torch

    if not torch.cuda.is_available():
        raise UserError("--engine vllm needs a CUDA GPU and none is visible here; serve with the default --engine transformers")


def vllm_command(cfg: ServeConfig, spec: ModelSpec, api_key: str | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, env) that start vLLM's OpenAI server on the merged model with this config's address and batch
    size. The key travels in ``VLLM_API_KEY`` (the environment), never on the command line."""
    model = spec.path if spec.kind == "hub" and not spec.adapter else merged_folder(spec, cfg.dtype)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", cfg.served_model_name or served_name(spec), "--host", cfg.host,
            "--port", str(cfg.port), "--max-num-seqs", str(cfg.max_batch_size),
            "--dtype", "auto" if cfg.dtype == "float32" else cfg.dtype]
    env = dict(os.environ)
    env.pop("VLLM_API_KEY", None)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return argv, env


def run_vllm(cfg: ServeConfig, spec: ModelSpec, api_key: str | None) -> None:
    """Start vLLM's server and exit with its status (``SystemExit``)."""
    import subprocess

    if cfg.calculator:
        raise UserError("serve --calculator works with --engine transformers only (vLLM's server is not steered "
                        "token by token here); drop --calculator or use --engine transformers")
    check_vllm()
    argv, env = vllm_command(cfg, spec, api_key)
    info(f"handing serving to vLLM: {' '.join(argv[1:])}")
    raise SystemExit(subprocess.call(argv, env=env))
