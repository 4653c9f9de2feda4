"""Stage ``problems``: Problem JSONL from the embedded, seeded sources (or a user's files).

Embedded sources are reasoning-gym generators:
- ``gsm_symbolic``: grade-school word problems with a reference chain (``metadata["answer_cot"]``). The
  train/eval split holds out whole templates (``dataset.task_indices[i]``), so no eval problem shares a
  template with any training problem.
- arithmetic families (``chain_sum``, ``basic_arithmetic``, ``simple_equations``...): answers only; the
  built-in :mod:`solver` writes their step-by-step reference chains.
Train and eval never share a question (nor, for arithmetic, an expression).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from pydantic import Field

from .config import StageConfig
from .errors import UserError
from .io import Tally, write_json, write_jsonl
from .progress import info
from .records import FieldMap, Problem, detect_lang, read_problems
from .solver import SolveError, solve_expression, solve_linear

GSM = "gsm_symbolic"
SOLVABLE = {"chain_sum", "basic_arithmetic", "simple_equations", "products"}


class FamilySpec(StageConfig):
    n_train: int = Field(100, ge=0, description="training problems from this family")
    n_eval: int = Field(32, ge=0, description="held-out eval problems from this family")
    params: dict[str, Any] = Field(default_factory=dict, description="reasoning-gym generator settings, e.g. max_digits")


class ProblemsConfig(StageConfig):
    """Where problems come from and how they split into train and eval."""

    seed: int = Field(1234, description="seed of every generator and of the template split")
    families: dict[str, FamilySpec] = Field(
        default_factory=lambda: {
            GSM: FamilySpec(n_train=48, n_eval=32),
            "chain_sum": FamilySpec(n_train=120, n_eval=32, params={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}),
            "basic_arithmetic": FamilySpec(n_train=120, n_eval=32, params={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2, "operators": ["+", "-", "*"]}),
        },
        description="reasoning-gym families to generate, with counts and generator settings",
    )
    eval_template_share: float = Field(0.3, gt=0, lt=1, description="share of GSM-Symbolic templates held out for eval")
    train_file: str | None = Field(None, description="use this file of problems for training instead of the embedded sources")
    eval_file: str | None = Field(None, description="use this file of problems (or a shipped benchmark: gsm8k, math500, "
                                  "gsm8k[:200], gsm8k@200) for eval instead of the embedded sources")
    fields: FieldMap = Field(default_factory=FieldMap, description="field names in train_file / eval_file")


def _gsm_split(spec: FamilySpec, seed: int, share: float) -> tuple[list[Problem], list[Problem], dict[str, Any]]:
    import reasoning_gym
    from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import tasks_ok

    templates = sorted(tasks_ok)
    rng = random.Random(f"{seed}-gsm-templates")
    k = max(1, round(share * len(templates)))
    eval_t = set(rng.sample(templates, k))
    need = spec.n_train + spec.n_eval
    size = max(64, need * 8)
    ds = reasoning_gym.create_dataset(GSM, size=size, seed=seed, **spec.params)
    train, evals, seen = [], [], set()
    for i in range(size):
        t = ds.task_indices[i]
        want_eval = t in eval_t
        if (want_eval and len(evals) >= spec.n_eval) or (not want_eval and len(train) >= spec.n_train):
            continue
        x = ds[i]
        q = x["question"]
        if q in seen:
            continue
        seen.add(q)
        p = Problem(id=f"{GSM}-{seed}-{i}", question=q, answer=str(x["answer"]), lang=detect_lang(q), source=GSM,
                    meta={"template": t, "reference_cot": x["metadata"].get("answer_cot"), "index": i})
        (evals if want_eval else train).append(p)
        if len(train) >= spec.n_train and len(evals) >= spec.n_eval:
            break
    if len(train) < spec.n_train or len(evals) < spec.n_eval:
        raise UserError(f"{GSM}: could only make {len(train)} train / {len(evals)} eval problems; lower n_train/n_eval or change eval_template_share")
    info_ = {"eval_templates": sorted(eval_t), "train_templates": sorted(set(templates) - eval_t)}
    return train, evals, info_


def _chain(family: str, x: dict[str, Any]) -> str | None:
    md = x.get("metadata", {})
    try:
        if family == "simple_equations":
            chain, value = solve_linear(md["equation"], md["variable"])
        elif "expression" in md:
            chain, value = solve_expression(md["expression"])
        else:
            return None
    except (SolveError, KeyError, SyntaxError, ZeroDivisionError):
        return None
    from .answers import answers_equal

    return chain if answers_equal(chain.rsplit("#### ", 1)[-1], str(x["answer"])) else None


def _arith_split(family: str, spec: FamilySpec, seed: int, tally: Tally) -> tuple[list[Problem], list[Problem]]:
    import reasoning_gym

    need = spec.n_train + spec.n_eval
    size = max(32, need * 3)
    try:
        ds = reasoning_gym.create_dataset(family, size=size, seed=seed, **spec.params)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise UserError(f"problems.families.{family}: reasoning-gym rejected it ({e}); check the family name and its params") from None
    evals: list[Problem] = []
    train: list[Problem] = []
    seen: set[str] = set()
    for i in range(size):
        x = ds[i]
        key = str(x.get("metadata", {}).get("expression") or x.get("metadata", {}).get("equation") or x["question"])
        key = " ".join(key.split())
        if key in seen:
            tally.add(f"{family}: duplicate_instance")
            continue
        seen.add(key)
        chain = _chain(family, x)
        if chain is None and family in SOLVABLE:
            tally.add(f"{family}: solver_failed", f"{family}#{i}: {x['question'][:60]}")
            continue
        p = Problem(id=f"{family}-{seed}-{i}", question=x["question"], answer=str(x["answer"]),
                    lang=detect_lang(x["question"]), source=family,
                    meta={"reference_cot": chain, "index": i, "expression": key})
        if len(evals) < spec.n_eval:
            evals.append(p)
        elif len(train) < spec.n_train:
            train.append(p)
        if len(evals) >= spec.n_eval and len(train) >= spec.n_train:
            break
    if len(train) < spec.n_train or len(evals) < spec.n_eval:
        raise UserError(f"{family}: only {len(train)} train / {len(evals)} eval distinct problems at these settings; widen params or lower counts")
    return train, evals


def problems(cfg: ProblemsConfig, out_dir: str | Path) -> dict[str, Any]:
    """Write ``train.jsonl`` and ``eval.jsonl`` (Problem records) to ``out_dir``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    train: list[Problem] = []
    evals: list[Problem] = []
    split_info: dict[str, Any] = {}
    if not (cfg.train_file and cfg.eval_file):
        for family, spec in cfg.families.items():
            if family == GSM:
                tr, ev, split_info[GSM] = _gsm_split(spec, cfg.seed, cfg.eval_template_share)
            else:
                tr, ev = _arith_split(family, spec, cfg.seed, tally)
            train += tr
            evals += ev
    if cfg.train_file:
        train = read_problems(cfg.train_file, cfg.fields, tally)
    if cfg.eval_file:  # a file, or a shipped benchmark name (math500, gsm8k[:200]): it replaces the embedded eval
        evals = read_problems(cfg.eval_file, cfg.fields, tally)
    if cfg.train_file or cfg.eval_file:
        eval_q = {" ".join(p.question.split()) for p in evals}
        before = len(train)
        train = [p for p in train if " ".join(p.question.split()) not in eval_q]
        if before - len(train):
            tally.add("train_question_also_in_eval", n=before - len(train))
    if not evals:
        raise UserError("problems: the eval split is empty; set n_eval above 0 for at least one family")
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "eval.jsonl", evals)
    fam = sorted({p.source for p in train + evals})
    summary = {
        "train": len(train), "eval": len(evals),
        "by_family": {f: {"train": sum(p.source == f for p in train), "eval": sum(p.source == f for p in evals)} for f in fam},
        "split": split_info, "skipped": tally.to_dict(), "config": cfg.model_dump(mode="json"),
    }
    write_json(out / "problems_summary.json", summary)
    per = ", ".join(f"{f} {v['train']}/{v['eval']}" for f, v in summary["by_family"].items())
    info(f"problems: {len(train)} train, {len(evals)} eval (train/eval per family: {per})")
    return summary
