"""Config plumbing shared by every stage: pydantic models with ``extra="forbid"``, loaded from YAML,
overridden from the command line with dotted ``key=value`` pairs.

Each stage defines its own ``XConfig`` beside its function (``generate.GenerateConfig`` ...);
this module only knows how to read, merge and echo them.
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import UserError

T = TypeVar("T", bound=BaseModel)


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are an error, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("mathdistill.presets").iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p} (pass an existing YAML file, or --preset NAME; presets: {', '.join(preset_names())})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config must be a YAML mapping of keys to values, got {type(data).__name__}")
    return data


def read_preset(name: str) -> dict[str, Any]:
    f = resources.files("mathdistill.presets") / f"{name}.yaml"
    if not f.is_file():
        raise UserError(f"unknown preset {name!r}; available presets: {', '.join(preset_names())}")
    return yaml.safe_load(f.read_text(encoding="utf-8")) or {}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.epochs=2", "problems.families=[chain_sum]"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, for example --set train.epochs=2")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def build(model: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Validate ``data`` into ``model``; the first problem becomes one clear line."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            raise UserError(f"{source}: unknown key {loc!r} (check the spelling; `mathdistill config` prints every key, docs/config.md describes them)") from None
        raise UserError(f"{source}: {loc}: {err['msg']} (got {err.get('input')!r})") from None


def load_config(model: type[T], path: str | Path | None = None, preset: str | None = None,
                overrides: list[str] | None = None, extra: dict[str, Any] | None = None) -> T:
    """Preset, then YAML file, then ``extra`` (flags), then ``--set`` overrides; later wins."""
    data: dict[str, Any] = {}
    source = "config"
    if preset:
        data = deep_merge(data, read_preset(preset))
        source = f"preset {preset}"
    if path:
        data = deep_merge(data, read_yaml(path))
        source = str(path)
    if extra:
        data = deep_merge(data, extra)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return build(model, data, source)


def config_hash(cfg: BaseModel | dict[str, Any]) -> str:
    d = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    return hashlib.sha256(json.dumps(d, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def dump_yaml(cfg: BaseModel, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8")
