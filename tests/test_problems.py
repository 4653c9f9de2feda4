import json
import re
import shutil

import pytest

from mathdistill import benchmarks
from mathdistill.answers import is_correct
from mathdistill.arith import find_steps
from mathdistill.errors import UserError
from mathdistill.problems import FamilySpec, ProblemsConfig, problems
from mathdistill.records import read_problems
from mathdistill.solver import SolveError, solve_expression, solve_linear
from cli_util import run_cli as _cli


def _cfg(**kw):
    fams = {
        "gsm_symbolic": FamilySpec(n_train=40, n_eval=20),
        "chain_sum": FamilySpec(n_train=30, n_eval=10, params={"max_terms": 3, "max_digits": 2}),
        "simple_equations": FamilySpec(n_train=10, n_eval=5),
    }
    return ProblemsConfig(families=fams, **kw)


def _read(p):
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_gsm_split_holds_out_whole_templates(tmp_path):
    summary = problems(_cfg(seed=3), tmp_path)
    train, evals = _read(tmp_path / "train.jsonl"), _read(tmp_path / "eval.jsonl")
    t_train = {p["meta"]["template"] for p in train if p["source"] == "gsm_symbolic"}
    t_eval = {p["meta"]["template"] for p in evals if p["source"] == "gsm_symbolic"}
    assert t_train and t_eval
    assert not t_train & t_eval, "an eval template also appears in training"
    assert t_eval <= set(summary["split"]["gsm_symbolic"]["eval_templates"])


def test_template_is_the_generators_task_index(tmp_path):
    """The recorded template must be reasoning-gym's task index for that item, not something we invent."""
    import reasoning_gym

    cfg = _cfg(seed=5)
    problems(cfg, tmp_path)
    spec = cfg.families["gsm_symbolic"]
    size = max(64, (spec.n_train + spec.n_eval) * 8)
    ds = reasoning_gym.create_dataset("gsm_symbolic", size=size, seed=5)
    for p in _read(tmp_path / "eval.jsonl")[:5]:
        if p["source"] == "gsm_symbolic":
            i = p["meta"]["index"]
            assert ds.task_indices[i] == p["meta"]["template"]
            assert ds[i]["question"] == p["question"]


def test_train_and_eval_never_share_an_instance(tmp_path):
    problems(_cfg(seed=11), tmp_path)
    train, evals = _read(tmp_path / "train.jsonl"), _read(tmp_path / "eval.jsonl")
    assert not {p["question"] for p in train} & {p["question"] for p in evals}
    ex_t = {p["meta"].get("expression") for p in train if p["source"] != "gsm_symbolic"}
    ex_e = {p["meta"].get("expression") for p in evals if p["source"] != "gsm_symbolic"}
    assert not ex_t & ex_e
    assert {p["id"] for p in train}.isdisjoint({p["id"] for p in evals})


def test_counts_per_family_and_determinism(tmp_path):
    s1 = problems(_cfg(seed=2), tmp_path / "a")
    s2 = problems(_cfg(seed=2), tmp_path / "b")
    assert s2["by_family"] == s1["by_family"]
    assert s1["by_family"] == {"chain_sum": {"train": 30, "eval": 10}, "gsm_symbolic": {"train": 40, "eval": 20},
                               "simple_equations": {"train": 10, "eval": 5}}
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    s3 = problems(_cfg(seed=9), tmp_path / "c")
    assert (tmp_path / "a" / "eval.jsonl").read_bytes() != (tmp_path / "c" / "eval.jsonl").read_bytes()
    assert s3["eval"] == 35


def test_every_arithmetic_problem_has_a_checked_reference_chain(tmp_path):
    from mathdistill.answers import answers_equal, extract_answer

    problems(_cfg(seed=4), tmp_path)
    for p in _read(tmp_path / "train.jsonl"):
        chain = p["meta"]["reference_cot"]
        assert chain, p
        assert answers_equal(extract_answer(chain), p["answer"]), (chain, p["answer"])
        if p["source"] != "gsm_symbolic":
            steps = find_steps(chain)
            assert steps and all(s.ok for s in steps), chain


@pytest.mark.parametrize("expr,answer,n_steps", [
    ("98 + 93 - 77", 114, 2),            # left to right
    ("2 + 3 * 4", 14, 2),                # precedence
    ("( 56 + -33 ) - 84", -61, 2),       # negative literal in parentheses
    ("-( 20 + 67 + -59 )", -28, 3),      # negated group is its own step
    ("7", 7, 1),                         # a lone number still gets a line
])
def test_solver_expression_chains(expr, answer, n_steps):
    chain, v = solve_expression(expr)
    assert v == answer
    assert chain.endswith(f"#### {answer}")
    assert len(chain.splitlines()) - 1 == n_steps


@pytest.mark.parametrize("eq,var,value", [
    ("56 - 98*e = -1218", "e", 13),
    ("4465*b = 178600", "b", 40),
    ("84*t + 4370 = 9410", "t", 60),
    ("3*x + 2*x - 5 = 20", "x", 5),
])
def test_solver_linear(eq, var, value):
    chain, v = solve_linear(eq, var)
    assert v == value and chain.endswith(f"#### {value}")
    assert all(s.ok for s in find_steps(chain))


@pytest.mark.parametrize("bad", ["__import__('os').system('true')", "x ** 2 = 4", "1 = 2 = 3"])
def test_solver_refuses_what_it_cannot_solve_safely(bad):
    with pytest.raises((SolveError, SyntaxError)):
        if "=" in bad:
            solve_linear(bad, "x")
        else:
            solve_expression(bad)


# ------------------------------------------------------------------ shipped benchmarks (gsm8k, math500)

# A grader gap is a reference the project's grader cannot match against its own worked solution. None is known
# today; list them here with the reason when the grader changes, never drop them from the set.
KNOWN_GRADER_GAPS: dict[str, str] = {}


@pytest.mark.parametrize("name,count", [("gsm8k", 1319), ("math500", 500)])
def test_references_score_as_100_through_the_grader(name, count):
    """Each reference solution (GSM8K: the worked answer ending in ####; MATH-500: the solution with its \\boxed{})
    graded against the loaded reference: AS 100, so a model that writes the reference is scored right."""
    probs = read_problems(name)
    assert len(probs) == count == benchmarks.BENCHMARKS[name].count
    assert len({p.id for p in probs}) == count
    key = "reference_cot" if name == "gsm8k" else "reference_solution"
    wrong = [p.id for p in probs if p.id not in KNOWN_GRADER_GAPS
             and not is_correct(p.meta[key], p.answer)]
    assert wrong == []
    boxed = [p.id for p in probs if p.id not in KNOWN_GRADER_GAPS
             and not is_correct(f"So the final answer is $\\boxed{{{p.answer}}}$.", p.answer)]
    assert boxed == []


@pytest.mark.parametrize("name,needle,output", [
    # GSM8K: the reference's own intermediate result, and an answer off by one
    ("gsm8k", "Janet", "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n#### 9"),
    ("gsm8k", "Janet", "#### 19"),
    ("gsm8k", "Janet", "The answer is 18 dollars... no wait, 36.\n#### 36"),
    # MATH-500: a swapped fraction, a half-open interval closed, a missing pi
    ("math500", "Convert the point $(0,3)$", "$\\boxed{(3, \\pi)}$"),
    ("math500", "Convert the point $(0,3)$", "$\\boxed{(3, \\frac{2}{\\pi})}$"),
    ("math500", "Convert the point $(0,3)$", "$\\boxed{(0, 3)}$"),
])
def test_known_wrong_outputs_are_graded_wrong(name, needle, output):
    p = next(p for p in read_problems(name) if needle in p.question)
    assert not is_correct(output, p.answer), (p.answer, output)


def test_gsm8k_reference_is_the_number_after_hashes_without_commas():
    probs = {p.id: p for p in read_problems("gsm8k")}
    assert probs["gsm8k-test-0"].answer == "18"
    assert all("," not in p.answer and "####" not in p.answer for p in probs.values())
    assert probs["gsm8k-test-0"].meta["reference_cot"].endswith("18 every day at the farmer’s market.\n#### 18")
    assert not any("<<" in p.meta["reference_cot"] for p in probs.values())  # GSM8K's calculator notes dropped
    assert sum(p.answer.startswith("-") for p in probs.values()) == 2  # PROVENANCE: two negative answers


def test_math500_families_are_subjects_and_level_is_kept():
    probs = read_problems("math500")
    fams = {p.source for p in probs}
    assert fams == {f"math500/{s}" for s in ("Algebra", "Intermediate Algebra", "Prealgebra", "Number Theory",
                                               "Precalculus", "Geometry", "Counting & Probability")}
    assert {p.meta["level"] for p in probs} == {1, 2, 3, 4, 5}
    assert probs[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


@pytest.mark.parametrize("spec,n,first", [
    ("gsm8k[:200]", 200, "gsm8k-test-0"), ("gsm8k[100:300]", 200, "gsm8k-test-100"), ("math500[-10:]", 10, "math500-490"),
    ("gsm8k@200", 200, None), ("math500@50/7", 50, None),
])
def test_slices_and_seeded_samples(spec, n, first):
    probs = read_problems(spec)
    assert len(probs) == len({p.id for p in probs}) == n
    if first:
        assert probs[0].id == first
    else:  # a sample: reproducible, in file order, and another seed draws other problems
        assert [p.id for p in read_problems(spec)] == [p.id for p in probs]
        idx = [p.meta["index"] for p in probs]
        assert idx == sorted(idx)
        other = spec.split("/")[0] + "/99"
        assert {p.id for p in read_problems(other)} != {p.id for p in probs}


@pytest.mark.parametrize("spec,msg", [("gsm8k@0", "give 1..1319"), ("gsm8k@5000", "give 1..1319"),
                                      ("math500[600:]", "selects no problem")])
def test_bad_slice_or_sample_is_one_line(spec, msg):
    with pytest.raises(UserError, match=re.escape(msg)) as e:
        read_problems(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["gsm9k", "math500@abc", "math500@5/x", "gsm8k[::2]", "gsm8k[a:b]", "math-500[:5]"])
def test_a_misspelt_benchmark_name_says_what_names_and_forms_exist(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"not a shipped benchmark: names gsm8k, math500; forms NAME, NAME\[a:b\]") as e:
        read_problems(spec)
    assert "\n" not in str(e.value)


def test_a_missing_file_path_gets_no_benchmark_hint(tmp_path):
    with pytest.raises(UserError) as e:
        read_problems(tmp_path / "eval.jsonl")
    assert "not found" in str(e.value) and "benchmark" not in str(e.value)


def test_benchmark_names_are_case_insensitive(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert [p.id for p in read_problems("GSM8K[:3]")] == [p.id for p in read_problems("gsm8k[:3]")]


@pytest.mark.parametrize("damage", ["edit", "remove"])
def test_edited_or_missing_shipped_file_is_one_line_error(tmp_path, monkeypatch, damage):
    data = tmp_path / "benchmarks_data"
    shutil.copytree(benchmarks.DATA_DIR, data)
    f = data / "math500.jsonl"
    if damage == "edit":
        f.write_bytes(f.read_bytes().replace(b'"answer": "5"', b'"answer": "6"', 1))
    else:
        f.unlink()
    monkeypatch.setattr(benchmarks, "DATA_DIR", data)
    with pytest.raises(UserError, match="edited" if damage == "edit" else "missing") as e:
        read_problems("math500[:3]")
    assert "\n" not in str(e.value) and "math500" in str(e.value)
    assert read_problems("gsm8k[:2]")  # the other benchmark is untouched


def test_config_eval_file_names_a_benchmark(tmp_path):
    """problems.eval_file: math500[:20] replaces the embedded eval split; training still comes from the families."""
    cfg = ProblemsConfig(families={"chain_sum": FamilySpec(n_train=12, n_eval=4, params={"max_terms": 3, "max_digits": 2})},
                         eval_file="math500[:20]")
    s = problems(cfg, tmp_path)
    evals, train = _read(tmp_path / "eval.jsonl"), _read(tmp_path / "train.jsonl")
    assert s["eval"] == 20 and [p["id"] for p in evals] == [f"math500-{i}" for i in range(20)]
    assert len(train) == 12 and {p["source"] for p in train} == {"chain_sum"}
    assert all(p["source"].startswith("math500/") for p in evals)


def test_problems_list_shows_name_count_license(capsys):
    assert _cli(["problems", "--list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"gsm8k\s+1319 problems\s+MIT", out) and re.search(r"math500\s+500 problems\s+MIT", out)


def test_eval_cli_accepts_a_benchmark_name(tmp_path, capsys):
    """`mathdistill eval --problems gsm8k[:3]` with outputs made elsewhere: the name loads, the refs grade."""
    preds = tmp_path / "p.jsonl"
    rows = [{"problem_id": "gsm8k-test-0", "output": "#### 18", "tokens": 5},
            {"problem_id": "gsm8k-test-1", "output": "#### 4", "tokens": 5},  # the reference is 3
            {"problem_id": "gsm8k-test-2", "output": "#### 70000", "tokens": 5}]
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = _cli(["eval", "--problems", "gsm8k[:3]", "--out", tmp_path / "ev", "--predictions", preds,
                 "--model-bytes", "98000000"])
    assert code == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert s["n"] == 3 and s["AS"] == pytest.approx(200 / 3, abs=1e-3)
    assert set(s["by_family"]) == {"gsm8k"}


def test_benchmark_names_key_the_stage_cache_by_content():
    """problems.eval_file: NAME enters the stage key as the shipped file's sha256 + the slice: another slice (or an
    updated shipped file) is a new key, the same name the same key."""
    from mathdistill.run import problems_inputs

    keys = [problems_inputs(ProblemsConfig(eval_file=n))["eval_file"] for n in ("gsm8k[:20]", "gsm8k[:20]", "gsm8k[:30]",
                                                                               "gsm8k@20", "math500[:20]")]
    assert keys[0] == keys[1] and len(set(keys)) == 4
