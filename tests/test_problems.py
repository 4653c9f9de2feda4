import json

import pytest

from mathdistill.arith import find_steps
from mathdistill.problems import FamilySpec, ProblemsConfig, problems
from mathdistill.solver import SolveError, solve_expression, solve_linear


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
