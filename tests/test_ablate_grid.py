"""The grid file: expansion (product, explicit cells, names) and validation before any work, one line per problem."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mathdistill import cli
from mathdistill.ablate import GridError, GridSpec, ablate, expand, load_grid

ROOT = Path(__file__).parents[1]
SOURCES = {"sources": {"a": {"n": 4}, "b": {"n": 4}}}


def spec(**kw) -> GridSpec:
    return GridSpec.model_validate({"name": "t", **kw})


def test_product_and_explicit_cells():
    plan = expand(spec(grid={"train": {"lora_r": [8, 16]}, "curate.keep_think": [False, True]},
                       cells=[{"name": "seed-recipe", "set": {"train": {"learning_rate": 8e-5, "epochs": 3}}}]))
    assert [c.name for c in plan.cells] == ["lora_r=8,keep_think=false", "lora_r=8,keep_think=true",
                                            "lora_r=16,keep_think=false", "lora_r=16,keep_think=true", "seed-recipe"]
    assert plan.varied == ["train.lora_r", "curate.keep_think", "train.learning_rate", "train.epochs"]
    assert plan.baseline == "lora_r=8,keep_think=false"
    assert plan.cells[3].config.train.lora_r == 16 and plan.cells[3].config.curate.keep_think is True
    assert plan.cells[4].config.train.epochs == 3 and plan.cells[4].config.train.lora_r == 16  # default r


def test_a_value_replaces_the_field_and_short_names_stay_unique():
    fam = {"chain_sum": {"n_train": 4, "n_eval": 2}}
    plan = expand(spec(base={"problems": {"seed": 1}}, grid={"problems.families": [fam], "train.seed": [1, 2],
                                                             "problems.seed": [1]}))
    assert list(plan.cells[0].config.problems.families) == ["chain_sum"]  # replaced, not merged into the defaults
    assert plan.cells[1].name.startswith("families={chain_sum:{n_train:4,n_eval:2}},train.seed=2,problems.seed=1")


def test_set_overrides_the_base(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text(yaml.safe_dump({"preset": "smoke", "grid": {"train.lora_r": [4, 8]}}))
    s = load_grid(g, ["train.epochs=3"], {"jobs": 2})
    plan = expand(s)
    assert s.jobs == 2 and all(c.config.train.epochs == 3 for c in plan.cells)
    assert plan.cells[0].config.train.recipe == "smoke"  # from the preset


@pytest.mark.parametrize("grid_kw,line", [
    # unknown fields, with a suggestion
    ({"grid": {"train.lora_rank": [8]}}, "grid.train.lora_rank: unknown field 'train.lora_rank' (did you mean train.lora_r?)"),
    ({"grid": {"trian": {"epochs": [1]}}}, "grid.trian.epochs: unknown field 'trian.epochs' (did you mean train?)"),
    ({"grid": {"train.epochs.x": [1]}}, "grid.train.epochs.x: unknown field 'train.epochs.x' (train.epochs is a value, it has no field 'x')"),
    ({"cells": [{"set": {"eval.max_tokens": 8}}]}, "cells[0].set.eval.max_tokens: unknown field 'eval.max_tokens' (did you mean eval.max_new_tokens?)"),
    # empty and non-list values
    ({"grid": {"train.lora_r": []}}, "grid.train.lora_r: empty list; give at least one value (or remove the field)"),
    ({"grid": {"train.lora_r": 8}}, "grid.train.lora_r: expected a list of values, got 8 (write [8] for a single value, or put it in base:)"),
    ({"grid": {"train.lora_r": [8, 8]}}, "grid.train.lora_r: a value is listed twice in [8, 8]"),
    ({}, "the grid has no cells; give grid: {field: [values]} or cells: [...]"),
    # values a stage rejects, and impossible combinations
    ({"grid": {"train.lora_r": [0, 8]}}, "cell 'lora_r=0': train.lora_r: Input should be greater than or equal to 1 (got 0)"),
    ({"base": SOURCES, "grid": {"use": [[], ["a"]]}}, "cell 'use=(none)': use: no source selected; name at least one of the sources (got [])"),
    ({"base": SOURCES, "grid": {"use": [["a", "c"]]}}, "cell 'use=a+c': use: unknown source(s) ['c']; defined: ['a', 'b'] (got ['a', 'c'])"),
    ({"grid": {"use": [["a"]]}}, "cell 'use=a': use: names sources, but the sources section is empty (got ['a'])"),
    ({"grid": {"train.lora_r": [8, 16]}, "cells": [{"name": "again", "set": {"train.lora_r": 16}}]},
     "cell 'again': same config as cell 'lora_r=16'; drop one of them"),
    ({"cells": [{"name": "x", "set": {"train.seed": 1}}, {"name": "x", "set": {"train.seed": 2}}]},
     "cell 'x': the name is used twice; give the explicit cells distinct names"),
    ({"grid": {"train.lora_r": [8, 16]}, "baseline": "lora_r=6"}, "baseline: no cell is named 'lora_r=6' (did you mean 'lora_r=16'?)"),
    ({"grid": {"problems.families.chain_sum.n_eval": [8, 16]}},
     "grid.problems.families.chain_sum.n_eval: every cell is scored on the base config's eval set; this field cannot vary in a grid"),
    ({"base": {"train": {"lora_r": -1}}, "grid": {"train.seed": [1]}},
     "base config: train.lora_r: Input should be greater than or equal to 1 (got -1)"),
])
def test_invalid_grid_is_one_clear_line(grid_kw, line):
    with pytest.raises(GridError) as e:
        expand(spec(**grid_kw), "g.yaml")
    assert str(e.value) == f"g.yaml: {line}"


def test_every_problem_is_listed_one_per_line():
    with pytest.raises(GridError) as e:
        expand(spec(grid={"train.lora_rank": [8], "eval.max_new_tokens": [], "curate.steps": "strip_think"}), "g.yaml")
    lines = str(e.value).splitlines()
    assert lines[0] == "g.yaml: 3 problems in the grid:"
    assert sorted(ln.split(":")[0].strip() for ln in lines[1:]) == ["grid.curate.steps", "grid.eval.max_new_tokens",
                                                                     "grid.train.lora_rank"]


def test_unknown_top_level_key(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("gird:\n  train.lora_r: [8]\n")
    from mathdistill.errors import UserError

    with pytest.raises(UserError, match="unknown key 'gird'"):
        load_grid(g)


def test_cli_refuses_an_invalid_grid_before_any_work(tmp_path, capsys):
    g = tmp_path / "g.yaml"
    g.write_text(yaml.safe_dump({"grid": {"train.lora_r": []}}))
    out = tmp_path / "out"
    old = sys.argv
    sys.argv = ["mathdistill", "ablate", str(g), "--out", str(out)]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "grid.train.lora_r: empty list" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_ablate_refuses_before_creating_anything(tmp_path):
    with pytest.raises(GridError):
        ablate(spec(grid={"train.lora_r": [0]}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_help_shows_grid_defaults():
    out = re.sub(r"\s+", " ", CliRunner().invoke(cli.app, ["ablate", "--help"], terminal_width=400).output)
    for flag, fieldname in (("--jobs", "jobs"), ("--ray", "ray"), ("--threads", "threads")):
        assert flag in out
        assert f"[config: {fieldname}; default: {GridSpec.model_fields[fieldname].default}]" in out


def test_example_seed_grid_expands_to_fourteen_cells():
    plan = expand(load_grid(ROOT / "examples" / "seed_ablation.yaml"))
    assert len(plan.cells) == 14 and plan.varied == ["use", "curate.keep_think"]
    uses = {tuple(c.config.use or ()) for c in plan.cells}
    assert len(uses) == 7 and () not in uses
    assert set(plan.base.sources) == {"task1", "train", "test"}
    assert plan.base.sources["task1"].generate == {"reference_think": True}
