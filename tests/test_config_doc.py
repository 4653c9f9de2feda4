"""`mathdistill config --doc`: the committed docs/config.md is what the pydantic models say today, and it
names every field of every stage config with its default."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mathdistill import cli
from mathdistill.config_doc import config_reference, default_text, stage_configs, type_name

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_committed_reference_is_current(tmp_path):
    out = tmp_path / "config.md"
    r = CliRunner().invoke(cli.app, ["config", "--doc", "--doc-out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8"), \
        "docs/config.md is stale: run `mathdistill config --doc` and commit it"


def _all_models():
    seen, todo = [], [m for _, m in stage_configs()]
    from mathdistill.config_doc import _models_in

    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.append(m)
        for f in m.model_fields.values():
            todo += _models_in(f.annotation)
    return seen


@pytest.mark.parametrize("model", _all_models(), ids=lambda m: m.__name__)
def test_every_field_is_listed_with_its_default(model):
    text = config_reference()
    section = text[text.index(f": {model.__name__}\n"):]
    section = section[: section.index("\n#") if "\n#" in section else len(section)]
    for name, f in model.model_fields.items():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{model.__name__}.{name} missing"
        assert f"`{default_text(f).replace('|', chr(92) + '|')}`" in row


@pytest.mark.parametrize("annotation,expected", [
    (int, "int"),
    (int | None, "int | None"),
    (list[str], "list[str]"),
    (str | list[str], "str | list[str]"),
])
def test_type_names_read_like_python(annotation, expected):
    assert type_name(annotation) == expected
