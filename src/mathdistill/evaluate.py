"""Stage ``eval``: run a model on eval problems (greedy) and score AS, CQS, ES, MLS and Overall.

Generation goes through a backend (:mod:`mathdistill.backends`: ``transformers`` by default, ``openai``,
``vllm``), or is skipped when the outputs come from elsewhere (``predictions``: a file of outputs with a
field mapping). Every score gets a bootstrap interval; CQS is the offline proxy or an LLM judge
(:mod:`mathdistill.judge`), and ``cqs_kind`` says which. The settings that decide what was scored
(problem ids and content, ``limit``, ``seed``, ``max_new_tokens``, score constants) are written under
``meta.comparable``: :func:`compare` refuses two evals whose settings differ.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from rich.markup import escape

from .answers import grade
from .backends import Backend, Generation, GenerationConfig, make_backend
from .config import StageConfig
from .errors import UserError
from .io import Tally, file_sha256, get_path, iter_raw, package_versions, read_json, write_json, write_jsonl
from .judge import JudgeConfig, judge
from .models import DEFAULT_STUDENT, load_tokenizer, model_bytes, resolve
from .progress import info
from .records import REASONING_TAGS, FieldMap, Prediction, Problem, answer_text, id_text, read_problems, whole_number
from .scores import INTERVAL_KEYS, ScoreConfig, aggregate, cqs_proxy, paired_bootstrap

__all__ = ["EvalConfig", "PredictionFields", "evaluate", "compare", "score_outputs"]


class PredictionFields(StageConfig):
    """Where a predictions file from elsewhere keeps each field (``--predictions FILE``)."""

    id_field: str = Field("problem_id", description="field with the problem id (matches the problems file's id)")
    output_field: str = Field("output", description="field with the model's full output (chain and final answer)")
    tokens_field: str | None = Field("tokens", description="field with completion tokens; missing: counted with the "
                                     "tokenizer of --tokenizer (or of --model)")
    finish_reason_field: str | None = Field("finish_reason", description="field with the finish reason (\"length\" scores a miss)")


class EvalConfig(GenerationConfig):
    """How a model is run on the eval set and scored (the generation settings come from
    :class:`mathdistill.backends.GenerationConfig`)."""

    limit: int | None = Field(None, ge=1, description="score only the first N problems")
    threads: int | None = Field(None, description="torch threads (None: all cores); llama.cpp threads for backend "
                                "llamacpp (None: the cores not already busy)")
    model_bytes: int | None = Field(None, ge=1, description="bytes of the served weights, for MLS when the model is not a local folder")
    reasoning_tags: list[tuple[str, str]] = Field(default_factory=lambda: list(REASONING_TAGS),
                                                  description="(open, close) tag pairs around the model's reasoning, "
                                                  "stripped before grading (as curate's reasoning_tags): <think>, "
                                                  "SkyThought's <|begin_of_thought|>, <reasoning>; add your model's pair")
    cqs: Literal["proxy", "judge"] = Field("proxy", description="CQS from the offline proxy or an LLM judge")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="judge endpoint and rubric (cqs: judge)")
    predictions_fields: PredictionFields = Field(default_factory=PredictionFields, description="field names of --predictions files")
    report: bool = Field(True, description="write report.md and report.html beside scores.json")
    score: ScoreConfig = Field(default_factory=ScoreConfig, description="score constants, weights and intervals")


MISS_REASONS = ("prompt_too_long", "empty_output", "no_stop", "error", "missing_prediction", "no_answer")


def score_outputs(probs: list[Problem], outs: list[Generation | dict[str, Any]],
                  reasoning_tags: list[tuple[str, str]] | None = None) -> list[Prediction]:
    """Grade each output against its problem's reference (its reasoning, between any of ``reasoning_tags``,
    stripped first; None: :data:`records.REASONING_TAGS`); the proxy CQS of every chain."""
    preds = []
    for p, o in zip(probs, outs):
        g = o if isinstance(o, Generation) else Generation(o["output"], o["tokens"], o["finish_reason"])
        v = grade(answer_text(g.output, reasoning_tags), p.answer, finish_reason=g.finish_reason)
        preds.append(Prediction(problem_id=p.id, source=p.source, output=g.output, extracted_answer=v.answer,
                                reference=p.answer, correct=v.correct, tokens=g.tokens, finish_reason=g.finish_reason,
                                grade_rule=v.rule, cqs={"kind": "proxy", **cqs_proxy(g.output, p.question)},
                                level=lv if isinstance(lv := p.meta.get("level"), int) else None))
    return preds


def grade_rule_counts(preds: list[Prediction]) -> dict[str, dict[str, int]]:
    """Verdicts per grading rule: ``{rule: {"correct": n, "wrong": m}}`` (scores.json ``grade_rules``)."""
    out: dict[str, dict[str, int]] = {}
    for p in preds:
        c = out.setdefault(p.grade_rule or "unknown", {"correct": 0, "wrong": 0})
        c["correct" if p.correct else "wrong"] += 1
    return out


def count_misses(preds: list[Prediction], gens: list[Generation]) -> Tally:
    """Why each wrong answer is wrong, when it is for a reason other than a wrong number."""
    t = Tally()
    for p, g in zip(preds, gens):
        if p.correct:
            continue
        if g.finish_reason == "prompt_too_long":
            t.add("prompt_too_long", f"{p.problem_id}: {g.error}")
        elif g.finish_reason == "missing_prediction":
            t.add("missing_prediction", p.problem_id)
        elif g.finish_reason == "error":
            t.add("error", f"{p.problem_id}: {(g.error or '')[:160]}")
        elif not g.output.strip():
            t.add("empty_output", p.problem_id)
        elif g.finish_reason == "length":
            t.add("no_stop", f"{p.problem_id}: {g.tokens} tokens without a complete answer")
        elif p.extracted_answer is None:
            t.add("no_answer", p.problem_id)
    return t


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_problems(path: str | Path, limit: int | None) -> tuple[list[Problem], Tally]:
    tally = Tally()
    probs = read_problems(path, FieldMap(), tally)
    seen: set[str] = set()
    uniq = []
    for p in probs:
        if p.id in seen:
            tally.add("duplicate_problem_id", p.id)
            continue
        seen.add(p.id)
        uniq.append(p)
    probs = uniq[:limit] if limit else uniq
    if not probs:
        raise UserError(f"{path}: no problems to evaluate")
    missing = [p.id for p in probs if p.answer is None]
    if missing:
        raise UserError(f"{path}: {len(missing)} problems have no reference answer (first: {missing[0]}); eval needs one per problem")
    return probs, tally


def read_predictions(path: str | Path, probs: list[Problem], f: PredictionFields, tokenizer_for=None) -> tuple[list[Generation], Tally]:
    """Outputs from elsewhere, one per problem in ``probs`` order; a problem without one is a miss."""
    p = Path(path)
    if p.is_dir():
        p = p / "predictions.jsonl"
    tally = Tally()
    by_id: dict[str, tuple[str, dict[str, Any]]] = {}
    known = {x.id for x in probs}
    rows = 0
    for where, rec in iter_raw(p, tally):
        rows += 1
        pid = id_text(get_path(rec, f.id_field))  # 7.0 / "7.0" (pandas) is the problem "7"; dotted paths reach in
        if pid is None:
            tally.add("no_id", f"{where}: no {f.id_field!r} field")
            continue
        if f.output_field not in rec and get_path(rec, f.output_field) is None:
            tally.add("no_output", f"{where}: no {f.output_field!r} field")
            continue
        if pid not in known:
            tally.add("unknown_problem_id", f"{where}: {pid}")
            continue
        if pid in by_id:
            tally.add("duplicate_id", f"{where}: {pid} (the first one is kept)")
            continue
        by_id[pid] = (where, rec)
    if rows and not by_id and (tally.counts.get("no_id") or tally.counts.get("no_output")) == rows:
        raise UserError(f"{p}: no row has the fields {f.id_field!r} and {f.output_field!r}; map them with --id-field / --output-field")
    tok = None
    gens = []
    for prob in probs:
        if prob.id not in by_id:
            gens.append(Generation("", 0, "missing_prediction", error="no prediction for this problem"))
            continue
        where, rec = by_id[prob.id]
        out = get_path(rec, f.output_field)
        out = "" if out is None else str(out)
        raw_tokens = get_path(rec, f.tokens_field) if f.tokens_field else None
        try:
            tokens = whole_number(raw_tokens)  # 123, "123" and 123.0 (a pandas export) alike
        except (TypeError, ValueError):
            raise UserError(f"{where}: {f.tokens_field!r} is not a whole number: {raw_tokens!r}") from None
        if tokens is None:
            if tok is None:
                tok = tokenizer_for() if tokenizer_for else None
            if tok is None:
                raise UserError(f"{where}: no token count ({f.tokens_field!r}); map it with --tokens-field, or pass "
                                "--tokenizer MODEL (a local model whose tokenizer counts the tokens)")
            tokens = len(tok(out, add_special_tokens=False)["input_ids"]) + 1  # + EOS, as generation counts it
            tally.add("tokens_counted_with_tokenizer")
        fr = str(get_path(rec, f.finish_reason_field) or "stop") if f.finish_reason_field else "stop"
        gens.append(Generation(out, tokens, "length" if fr == "length" else "stop"))
    return gens, tally


def _recorded(cfg: EvalConfig, field: str, generated: bool) -> Any:
    """A setting as it applied: always when we generated; for outside predictions only when the user stated it."""
    return getattr(cfg, field) if generated or field in cfg.model_fields_set else None


def evaluate(cfg: EvalConfig, problems_path: str | Path, out_dir: str | Path, model: str | None = DEFAULT_STUDENT,
             adapter: str | None = None, label: str | None = None, predictions: str | Path | None = None,
             tokenizer: str | None = None) -> dict[str, Any]:
    """Score ``model`` (+ ``adapter``) on ``problems_path``, or score ``predictions`` made elsewhere;
    write ``predictions.jsonl``, ``scores.json`` and (``cfg.report``) ``report.md`` + ``report.html``.

    With ``predictions``, ``model`` is the model that made them (its size gives MLS, its tokenizer counts missing
    token counts) and ``tokenizer`` a model whose tokenizer only counts tokens (its size is not used). Without a
    size (``model`` or ``cfg.model_bytes``), MLS is None and Overall is over AS, CQS and ES (see :mod:`scores`)."""
    if cfg.calculator and predictions is not None:
        raise UserError("eval --calculator steers generation; with --predictions nothing is generated: drop one of them")
    if cfg.calculator and cfg.backend != "transformers":
        raise UserError(f"eval --calculator works with --backend transformers only, not {cfg.backend} "
                        "(it steers each token); drop --calculator or use --backend transformers")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs, skipped = load_problems(problems_path, cfg.limit)
    if skipped.total():
        info(f"eval: skipped {skipped.total()} problem rows: " + "; ".join(skipped.lines()[:4]))
    generated = predictions is None
    backend: Backend | None = None
    spec = None
    t0 = time.monotonic()
    if tokenizer is not None and predictions is None:
        raise UserError("eval --tokenizer counts the tokens of --predictions made elsewhere; without --predictions "
                        "the model's own tokenizer counts them: drop --tokenizer")
    if predictions is not None:
        if model:
            spec = resolve(model, adapter)
        tok_spec = resolve(tokenizer) if tokenizer else spec
        gens, pred_tally = read_predictions(predictions, probs, cfg.predictions_fields,
                                            (lambda: load_tokenizer(tok_spec)) if tok_spec else None)
        skipped.merge(pred_tally)
        if pred_tally.total():
            info(f"eval: {predictions}: " + "; ".join(pred_tally.lines()[:6]))
        mbytes = cfg.model_bytes or (model_bytes(spec) if spec else None)
    else:
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        backend = make_backend(cfg, model, adapter, out)
        model = model or DEFAULT_STUDENT  # what make_backend loaded (openai refuses an empty --model)
        t0 = time.monotonic()
        gens = backend.generate(probs)
        mbytes = cfg.model_bytes or backend.model_bytes()
    dt = time.monotonic() - t0
    preds = score_outputs(probs, gens, cfg.reasoning_tags)
    misses = count_misses(preds, gens)
    cqs_meta: dict[str, Any] = {"kind": cfg.cqs}
    if cfg.cqs == "judge":
        verdicts, rubric = judge(cfg.judge, probs, [p.output for p in preds], out / "judge_cache.sqlite")
        for p, v in zip(preds, verdicts):
            p.cqs = {"kind": "judge", **v, "proxy": {k: x for k, x in p.cqs.items() if k != "kind"}}
        failed = sum(v["cqs"] is None for v in verdicts)
        cqs_meta.update({"judge_model": cfg.judge.model, "base_url": cfg.judge.base_url, "rubric": rubric.name,
                         "rubric_sha256": rubric.sha256, "unscored_chains": failed})
        if failed:
            info(f"eval: the judge could not score {failed} of {len(verdicts)} chains (left out of CQS; see predictions.jsonl)")
    if mbytes is None:
        info("eval: model size unknown (pass --model-bytes N, or --model for the local model that made the predictions): "
             "MLS is not scored (null) and Overall is over AS, CQS and ES with their weights renormalised")
    write_jsonl(out / "predictions.jsonl", preds)
    rows = [p.model_dump() for p in preds]
    scores = aggregate(rows, mbytes, cfg.score, cqs_kind=cfg.cqs)
    scores["misses"] = {r: misses.counts.get(r, 0) for r in MISS_REASONS} | {"examples": misses.examples}
    scores["grade_rules"] = grade_rule_counts(preds)
    total_tokens = sum(p.tokens for p in preds)
    ids = [p.id for p in probs]
    problems_sha = _sha(json.dumps([[p.id, p.question, p.answer] for p in probs], ensure_ascii=False))
    comparable = {
        "problem_ids_sha256": _sha("\n".join(ids)), "problems_sha256": problems_sha, "n": len(probs),
        "limit": cfg.limit, "seed": _recorded(cfg, "seed", generated),
        "max_new_tokens": _recorded(cfg, "max_new_tokens", generated),
        "score": cfg.score.model_dump(mode="json", exclude={"bootstrap_samples", "confidence", "bootstrap_seed"}),
        "cqs": {k: cqs_meta.get(k) for k in ("kind", "judge_model", "rubric_sha256")},
    }
    scores["meta"] = {
        "label": label or model or Path(str(predictions)).stem, "model": model, "adapter": adapter, "tokenizer": tokenizer,
        "source": "generated" if generated else f"predictions: {predictions}",
        **(backend.describe() if backend else {"backend": None}),
        "model_bytes_known": mbytes is not None,
        "sampling": {"greedy": True, "max_new_tokens": comparable["max_new_tokens"], "stop_at_answer": cfg.stop_at_answer if generated else None,
                     "calculator": cfg.calculator if generated else None,
                     "seed": comparable["seed"], "dtype": cfg.dtype if generated else None},
        "limit": cfg.limit,
        "split": {"file": str(problems_path), "file_sha256": file_sha256(problems_path), "problems_sha256": problems_sha},
        "problems_file": str(problems_path), "problem_ids_sha256": comparable["problem_ids_sha256"], "problem_ids": ids,
        "comparable": comparable, "cqs": cqs_meta, "skipped_rows": skipped.to_dict(),
        "gen_wall_s": round(dt, 2), "gen_tokens_per_s": round(total_tokens / dt, 2) if generated and dt > 0 else None,
        "versions": package_versions(), "config": cfg.model_dump(mode="json"),
    }
    write_json(out / "scores.json", scores)
    iv = scores["intervals"]
    ci = lambda k: f" [{iv[k][0]:.1f}, {iv[k][1]:.1f}]" if iv.get(k) else ""  # noqa: E731
    miss = ", ".join(f"{k} {v}" for k, v in scores["misses"].items() if k != "examples" and v)
    mls = "n/a (size unknown)" if scores["MLS"] is None else f"{scores['MLS']:.1f}"
    ov = "Overall" if scores["MLS"] is not None else "Overall(AS,CQS,ES; no MLS)"
    info(f"eval {escape(str(scores['meta']['label']))}: AS {scores['AS']:.1f}{ci('AS')}  CQS({cfg.cqs}) {scores['CQS']:.1f}{ci('CQS')}  "
         f"ES {scores['ES']:.1f}{ci('ES')}  MLS {mls}  {escape(ov)} {scores['overall']:.1f}{ci('overall')}  "
         f"({scores['mean_tokens']:.0f} tokens/problem" + (f", {scores['meta']['gen_tokens_per_s']} tok/s" if generated else "")
         + ")" + (f"; misses: {miss}" if miss else ""))
    if cfg.report:
        from .report import report

        report(out)
    return scores


# ---- comparing two evals ------------------------------------------------------------------------------


def _eval_folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name == "scores.json":
        p = p.parent
    if p.is_dir() and not (p / "scores.json").is_file() and (p / "eval" / "student" / "scores.json").is_file():
        p = p / "eval" / "student"
    if not (p / "scores.json").is_file():
        raise UserError(f"{path}: not an eval folder (no scores.json); pass a folder written by `mathdistill eval --out`")
    s = read_json(p / "scores.json")
    if "AS" not in s:
        if "student" in s:
            p = p / "eval" / "student"
            if (p / "scores.json").is_file():
                return p
        raise UserError(f"{path}: scores.json has no per-model scores; pass an eval folder (e.g. RUN/eval/student)")
    if not (p / "predictions.jsonl").is_file():
        raise UserError(f"{p}: no predictions.jsonl beside scores.json; --compare needs the per-problem predictions")
    return p


_SETTING_NAMES = {"limit": "--limit", "seed": "--seed", "max_new_tokens": "--max-new-tokens", "n": "number of problems",
                  "problem_ids_sha256": "problem ids", "problems_sha256": "problems (question/answer)", "score": "score constants",
                  "cqs": "CQS kind/judge"}


def compare(a: str | Path, b: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Paired difference B - A per score, with its bootstrap interval over the same problems.

    Refuses (one line) when A and B did not score the same problems with the same settings."""
    pa, pb = _eval_folder(a), _eval_folder(b)
    sa, sb = read_json(pa / "scores.json"), read_json(pb / "scores.json")
    ca, cb = (s.get("meta", {}).get("comparable") for s in (sa, sb))
    if not ca or not cb:
        raise UserError(f"cannot compare {a} and {b}: {'A' if not ca else 'B'} was scored by an older mathdistill without "
                        "comparable settings; rerun its eval")
    for key, what in _SETTING_NAMES.items():
        if ca.get(key) != cb.get(key):
            va, vb = ca.get(key), cb.get(key)
            if key.endswith("sha256"):
                va, vb = f"{str(va)[:12]}...", f"{str(vb)[:12]}..."
            elif key in ("score", "cqs"):
                diff = sorted(k for k in set(va or {}) | set(vb or {}) if (va or {}).get(k) != (vb or {}).get(k))
                va, vb = {k: (ca[key] or {}).get(k) for k in diff}, {k: (cb[key] or {}).get(k) for k in diff}
            hint = " (pass --max-new-tokens/--seed when scoring --predictions, to state how they were made)" if None in (va, vb) else ""
            raise UserError(f"cannot compare {a} and {b}: they differ in {what} (A: {va}, B: {vb}); "
                            f"compare only evals of the same problems and settings{hint}")
    rows_a = {r["problem_id"]: r for r in _read_preds(pa / "predictions.jsonl")}
    rows_b = {r["problem_id"]: r for r in _read_preds(pb / "predictions.jsonl")}
    ids = sa["meta"]["problem_ids"]
    lost = [i for i in ids if i not in rows_a or i not in rows_b]
    if lost:
        raise UserError(f"cannot compare {a} and {b}: predictions.jsonl lacks problem {lost[0]} ({len(lost)} missing); rerun that eval")
    if (sa.get("model_bytes") is None) != (sb.get("model_bytes") is None):
        raise UserError(f"cannot compare {a} and {b}: {'A' if sa.get('model_bytes') is None else 'B'} has no model size, so its "
                        "Overall leaves MLS out; rescore it with --model-bytes N (or --model) so both Overalls have the same terms")
    score_cfg = ScoreConfig.model_validate(sa["meta"]["config"]["score"])
    diff = paired_bootstrap([rows_a[i] for i in ids], [rows_b[i] for i in ids], sa["model_bytes"], sb["model_bytes"], score_cfg)
    result = {"A": {"path": str(pa), "label": sa["meta"].get("label")}, "B": {"path": str(pb), "label": sb["meta"].get("label")},
              "n": len(ids), "cqs_kind": sa.get("cqs_kind"), "diff": diff,
              "interval_method": {"kind": "paired percentile bootstrap over problems", "samples": score_cfg.bootstrap_samples,
                                  "confidence": score_cfg.confidence, "seed": score_cfg.bootstrap_seed}}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(out_dir) / "compare.json", result)
    return result


def _read_preds(path: Path) -> list[dict[str, Any]]:
    from .io import read_jsonl

    return read_jsonl(path)


def format_compare(result: dict[str, Any]) -> list[str]:
    """Plain lines of a comparison table (for the CLI and the README)."""
    conf = int(round(100 * result["interval_method"]["confidence"]))
    lines = [f"A = {result['A']['label']} ({result['A']['path']}), B = {result['B']['label']} ({result['B']['path']}); "
             f"{result['n']} problems, CQS {result['cqs_kind']}",
             f"{'score':<12}{'A':>9}{'B':>9}{'B - A':>9}   {conf}% interval of B - A"]
    for k in INTERVAL_KEYS:
        d = result["diff"][k]
        ci = f"[{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]" if d["ci"] else "n/a"
        verdict = "real difference" if d["significant"] else "not distinguishable from 0" if d["ci"] else "unknown"
        name = "CQS (" + str(result["cqs_kind"]) + ")" if k == "CQS" else k
        f = lambda x, sign="": f"{x:>{sign}9.2f}" if x is not None else f"{'n/a':>9}"  # noqa: E731
        lines.append(f"{name:<12}{f(d['A'])}{f(d['B'])}{f(d['diff'], '+')}   {ci}  {verdict}")
    return lines

