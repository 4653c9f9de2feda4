"""generate's reference_noise: SIMULATED teacher errors on reference chains, seeded, labelled, and each kind
doing what its description says (checked with the same exact arithmetic curate uses)."""

import json

import pytest

from mathdistill.answers import answers_equal, extract_answer
from mathdistill.arith import find_steps, repair_steps
from mathdistill.generate import NOISY_TEACHER, GenerateConfig, generate
from mathdistill.problems import ProblemsConfig, problems


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("problems")
    problems(ProblemsConfig(seed=7, families={
        "gsm_symbolic": {"n_train": 12, "n_eval": 1},
        "chain_sum": {"n_train": 12, "n_eval": 1, "params": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}},
        "basic_arithmetic": {"n_train": 12, "n_eval": 1, "params": {"min_terms": 2, "max_terms": 3, "min_digits": 1,
                                                                      "max_digits": 2, "operators": ["+", "-", "*"]}}}), d)
    return d / "train.jsonl"


def noisy(train_file, out, **noise):
    cfg = GenerateConfig(samples=noise.pop("samples", 1), reference_noise=noise)
    summary = generate(cfg, train_file, out)
    traces = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    log = [json.loads(x) for x in (out / "noise.jsonl").read_text().splitlines()]
    return summary, traces, log


def refs(train_file):
    return {p["id"]: p for p in map(json.loads, train_file.read_text().splitlines())}


def test_noise_is_seeded_labelled_and_gives_several_samples(train_file, tmp_path):
    s1, t1, log = noisy(train_file, tmp_path / "a", samples=3, wrong_answer=0.2, arith_slip=0.2, think=0.3, verbose=0.3, seed=5)
    _, t2, _ = noisy(train_file, tmp_path / "b", samples=3, wrong_answer=0.2, arith_slip=0.2, think=0.3, verbose=0.3, seed=5)
    _, t3, _ = noisy(train_file, tmp_path / "c", samples=3, wrong_answer=0.2, arith_slip=0.2, think=0.3, verbose=0.3, seed=6)
    assert t1 == t2 and t1 != t3
    assert len(t1) == 36 * 3 and {t["teacher"] for t in t1} == {NOISY_TEACHER}
    assert [(r["problem_id"], r["sample"]) for r in log] == [(t["problem_id"], t["sample"]) for t in t1]
    sim = s1["simulated_noise"]
    assert "not teacher outputs" in sim["note"] and sim["traces"] == 108
    assert set(sim["applied"]) <= {"wrong_answer", "arith_slip", "arith_slip_carried", "think", "verbose"}
    assert all(sim["applied"].get(k, 0) > 0 for k in ("wrong_answer", "think", "verbose"))
    assert sim["untouched"] == sum(not r["applied"] for r in log) > 0
    assert s1["skipped"]["counts"] == {}  # noise that found nothing to change is not a skipped input row
    assert len({len(t["content"]) for t in t1 if t["problem_id"] == t1[0]["problem_id"]}) > 1  # lengths differ
    # without noise the reference backend is unchanged: one clean sample per problem
    plain = generate(GenerateConfig(samples=3), train_file, tmp_path / "d")
    assert plain["traces"] == 36 and "simulated_noise" not in plain


@pytest.mark.parametrize("kind,noise", [
    ("wrong_answer", {"wrong_answer": 1.0}),
    ("arith_slip", {"arith_slip": 1.0, "slip_carried": 0.0}),
    ("arith_slip_carried", {"arith_slip": 1.0, "slip_carried": 1.0}),
    ("verbose", {"verbose": 1.0}),
    ("think", {"think": 1.0}),
])
def test_each_kind_does_what_it_says(train_file, tmp_path, kind, noise):
    _, traces, log = noisy(train_file, tmp_path / kind, samples=2, seed=1, **noise)
    probs = refs(train_file)
    hit = [(t, probs[t["problem_id"]]) for t, r in zip(traces, log) if r["applied"] == [kind]]
    assert len(hit) >= 0.8 * len(traces)  # the rest: chains without a step it can change (counted as not applicable)
    exact = wrong_answers = 0
    for t, p in hit:
        text, chain, ref = t["content"], p["meta"]["reference_cot"].strip(), p["answer"]
        steps = [s.ok for s in find_steps(text)]
        right = answers_equal(extract_answer(text), ref)
        if kind == "wrong_answer":  # every step holds, the answer is wrong: verify_answer's case
            assert all(steps) and not right, text
        elif kind.startswith("arith_slip"):
            # one wrong result; written once, the answer stays right; carried on, it is mostly wrong (a later
            # step find_steps does not see, "liters, 16 x 0.75 = 12.0", is not recomputed)
            assert steps.count(False) == 1 and (right or kind == "arith_slip_carried"), text
            wrong_answers += not right
            # repair recomputes a consistent chain with the reference answer; mostly the reference chain itself
            # (a recomputed non-whole value keeps its 2 decimals: "247 / 19 = 13.00" for the reference's "= 13")
            fixed = repair_steps(text).text
            assert all(s.ok for s in find_steps(fixed)) and answers_equal(extract_answer(fixed), ref), text
            exact += fixed == chain
        elif kind == "verbose":
            assert len(text) > len(chain) and all(steps) and right and text.endswith(chain.splitlines()[-1])
        else:
            assert text.startswith("<think>") and text.endswith(chain.splitlines()[-1])
    if kind.startswith("arith_slip"):
        assert exact >= 0.9 * len(hit)
    if kind == "arith_slip_carried":
        assert wrong_answers >= 0.8 * len(hit)
