"""examples/recipe_comparison.yaml: valid as shipped, and end to end on a tiny model (same eval problems, same
number of optimizer steps, the mathdistill cell's curation repairs, verifies and selects), read back by
benchmarks/bench_recipes.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from mathdistill.ablate import GridSpec, ablate, expand
from mathdistill.evaluate import EvalConfig

ROOT = Path(__file__).parents[1]
GRID = ROOT / "examples" / "recipe_comparison.yaml"
HAS_CALCULATOR = "calculator" in EvalConfig.model_fields  # eval.calculator comes with the calculator decoding


def grid_data() -> dict:
    data = yaml.safe_load(GRID.read_text(encoding="utf-8"))
    if not HAS_CALCULATOR:
        for c in data["cells"]:
            c["set"].pop("eval.calculator", None)
    return data


def test_the_shipped_grid_compares_two_recipes_at_one_budget():
    data = yaml.safe_load(GRID.read_text(encoding="utf-8"))
    assert data["cells"][1]["set"]["eval.calculator"] is True
    plan = expand(GridSpec.model_validate(grid_data()))
    seed, md, seed_calc, md_plain = (c.config for c in plan.cells)
    assert [c.name for c in plan.cells] == ["seed", "mathdistill", "seed+calculator", "mathdistill-no-calculator"]
    assert plan.baseline == "seed"
    # the two extra cells split the difference: the same data and training, only the decoding at eval switched
    for a, b in ((seed, seed_calc), (md, md_plain)):
        assert a.curate == b.curate and a.train == b.train and a.problems == b.problems
        assert a.eval.model_copy(update={"calculator": b.eval.calculator}) == b.eval and a.eval.calculator != b.eval.calculator
    assert seed.train.max_steps == md.train.max_steps > 0 and seed.train.batch_size * seed.train.grad_accum == md.train.batch_size * md.train.grad_accum == 8
    assert seed.problems == md.problems and seed.generate == md.generate  # same problems, same (simulated) teacher
    assert seed.generate.reference_noise is not None and seed.generate.samples == 2
    assert seed.curate.steps == ["strip_think", "drop_empty"]
    assert (seed.train.learning_rate, seed.train.lora_r, seed.train.lora_alpha, seed.train.lora_dropout) == (8e-5, 8, 16, 0.1)
    assert md.curate.steps == ["strip_think", "drop_empty", "arith_check", "verify_answer", "select"]
    assert md.curate.arith_check.action == "repair" and md.curate.select.mode == "shortest"
    assert sum(f.n_eval for f in seed.problems.families.values()) <= 96 and seed.eval.max_new_tokens <= 192


def test_recipe_grid_end_to_end_on_a_tiny_model(tmp_path, tiny_model):
    data = grid_data()
    data["cells"] = data["cells"][:2]  # the other two only switch eval.calculator
    data["preset"] = None
    data["bootstrap"] = {"samples": 100}
    data["base"]["problems"] = {"seed": 3, "families": {
        "chain_sum": {"n_train": 12, "n_eval": 4, "params": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}},
        "basic_arithmetic": {"n_train": 12, "n_eval": 4, "params": {"min_terms": 2, "max_terms": 3, "min_digits": 1,
                                                                     "max_digits": 2, "operators": ["+", "-", "*"]}}}}
    # noise high enough that each curate step has work on 24 problems x 2 samples
    data["base"]["generate"]["reference_noise"].update(wrong_answer=0.4, arith_slip=0.5)
    data["base"]["train"] = {"base_model": str(tiny_model), "max_steps": 2, "warmup_ratio": 0.0, "batch_size": 4,
                             "max_length": 256, "threads": 1}
    data["base"]["eval"] = {"max_new_tokens": 4, "batch_size": 8, "threads": 1}
    out = tmp_path / "grid"
    ablate(GridSpec.model_validate(data), out)

    spec = importlib.util.spec_from_file_location("bench_recipes", ROOT / "benchmarks" / "bench_recipes.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    s = bench.summarize(out)
    seed, md = s["cells"]["seed"], s["cells"]["mathdistill"]
    assert seed["status"] == md["status"] == "ok" and s["baseline"] == "seed" and s["n"] == 8
    assert seed["train"]["steps"] == md["train"]["steps"] == 2  # the same budget
    assert seed["curate"]["rows_in"] == md["curate"]["rows_in"] == 48 == seed["curate"]["rows_out"]  # seed keeps all
    cu = md["curate"]
    assert cu["rows_repaired"] > 0 and cu["steps_repaired"] >= cu["rows_repaired"]
    assert cu["removed"]["verify_answer"] > 0 and cu["removed"]["select"] > 0 and cu["rows_out"] <= 24
    d = s["diff"]["overall"]
    ov = {k: c["scores"]["overall"]["point"] for k, c in s["cells"].items()}
    assert d["point"] == pytest.approx(ov["mathdistill"] - ov["seed"], abs=1e-3)  # mathdistill - seed (B - A)
    assert set(seed["AS_by_family"]) == {"chain_sum", "basic_arithmetic"}
    text = bench.report(s)
    assert "Overall difference mathdistill - seed" in text and "AS per family" in text
