"""The config reference (``docs/config.md``), generated from the pydantic models: every stage config, each
field with its type, default and description, as ``mathdistill config --doc`` writes it.

The run config (``--config run.yaml``) comes first, section by section as nested in YAML (``train.lora_r``);
then the configs read on their own (``serve``, ``export``, the ``ablate`` grid file).
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

HEADER = """# Configuration reference

Generated from the pydantic models by `mathdistill config --doc`; do not edit by hand (a test checks that this
file is current). Each stage reads the section of the same name from a run config (`--config run.yaml`),
`--set key.sub=value` overrides any key, and an unknown key is an error. `mathdistill config` prints the
resolved values of a run config.
"""


def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``X``, ``X | None``, ``dict[str, X]``, ``list[X]``)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for a in typing.get_args(tp) for m in _models_in(a)]


def type_name(tp: Any) -> str:
    """A short, readable name of an annotation: ``int | None``, ``"sft" | "kd"``, ``list[str]``, ``TrainConfig``."""
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def default_text(f: FieldInfo) -> str:
    if f.is_required():
        return "required"
    v = f.get_default(call_default_factory=True)
    if isinstance(v, BaseModel):
        return "see below"
    return json.dumps(to_jsonable_python(v), ensure_ascii=False)


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _doc_line(model: type[BaseModel]) -> str:
    """The first paragraph of the model's docstring, reST roles turned into markdown code."""
    text = re.sub(r"\s+", " ", (model.__doc__ or "").strip().split("\n\n")[0])
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"`\1`", text)
    return text.replace("``", "`")


def model_section(model: type[BaseModel], path: str, level: int = 2) -> list[str]:
    """Markdown lines for ``model`` at ``path`` (``train``), then one section per nested model."""
    doc = _doc_line(model)
    lines = [f"{'#' * level} `{path or '(top level)'}`: {model.__name__}", "", *([doc, ""] if doc else []),
             "| key | type | default | description |", "| --- | --- | --- | --- |"]
    nested = []
    for name, f in model.model_fields.items():
        subs = _models_in(f.annotation)
        desc = f.description or (_doc_line(subs[0]) if subs else "")
        lines.append(f"| `{name}` | `{_cell(type_name(f.annotation))}` | `{_cell(default_text(f))}` | {_cell(desc)} |")
        for m in subs:
            origin = typing.get_origin(f.annotation)
            key = (f"{path}.{name}" if path else name) + (".<name>" if origin is dict else "[]" if origin is list else "")
            nested.append((m, key))
    lines.append("")
    for m, key in nested:
        lines += model_section(m, key, min(level + 1, 4))
    return lines


def stage_configs() -> list[tuple[str, type[BaseModel]]]:
    """(where it is read, model) of every top-level config; a one-word name is also its section path."""
    from .ablate import GridSpec
    from .export import ExportConfig
    from .run import RunConfig
    from .serve import ServeConfig

    return [("run config (`--config run.yaml`)", RunConfig), ("serve", ServeConfig), ("export", ExportConfig),
            ("ablate grid file (`mathdistill ablate GRID.yaml`)", GridSpec)]


def config_reference() -> str:
    """The whole reference as markdown (what ``docs/config.md`` holds)."""
    lines = [HEADER]
    for where, model in stage_configs():
        lines += [f"## {where}", ""]
        lines += model_section(model, "" if " " in where else where, 3)
    return "\n".join(lines).rstrip() + "\n"
