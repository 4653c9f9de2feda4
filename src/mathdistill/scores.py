"""The challenge's four scores and Overall, as DESIGN.md defines them; every constant lives in ScoreConfig.

    Overall = w_AS·AS + w_CQS·CQS + w_ES·ES + w_MLS·MLS          (each term 0-100)
    ES  = 100 · clip(log(T_hi / T) / log(T_hi / T_lo), 0, 1)      T = mean completion tokens per problem
    MLS = 100 · clip(log(S_hi / S) / log(S_hi / S_lo), 0, 1)      S = bytes of the weight files as served

CQS without a judge is an offline *proxy*, always labelled ``cqs_kind="proxy"``: per chain, the mean of
five checks (each 0 or 1, step accuracy a share):
  step_accuracy  share of ``a op b = c`` steps that hold (0 when the chain has none)
  consistent     the final answer equals the result of the last checked step (or no steps and an answer)
  has_steps      at least one checked arithmetic step
  no_repetition  no line or 8-gram repeated 3 or more times (degenerate loops)
  same_language  the chain is written in the question's language

CQS with a judge (``cqs_kind="judge"``, see :mod:`mathdistill.judge`) is the judge's 0-100 score per chain;
a chain the judge could not score is left out of the CQS mean and counted (``cqs_missing``).

MLS needs the model's size. When it is unknown (predictions made elsewhere, no ``--model-bytes``), MLS is
``None`` (``null`` in scores.json) and Overall is computed over the known terms with their weights renormalised
to sum to 1, ``(w_AS·AS + w_CQS·CQS + w_ES·ES) / (w_AS + w_CQS + w_ES)``; ``overall_terms`` names the terms
used, so such an Overall is never mistaken for the four-term one.

Uncertainty: every score gets a percentile bootstrap interval over problems (``intervals``), and
:func:`paired_bootstrap` gives the difference B - A between two models on the same problems with its interval;
both through the one bootstrap of :mod:`mathdistill.stats` (one index draw, NaN-aware, no clamping).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
from pydantic import Field

from . import stats
from .answers import answers_equal, extract_answer, strip_think
from .arith import find_steps, format_number
from .config import StageConfig
from .records import detect_lang


class ScoreConfig(StageConfig):
    """Score constants (DESIGN.md defaults; another edition of the challenge weighted CQS 0.4, AS 0.3)."""

    w_as: float = Field(0.4, description="weight of answer accuracy in Overall")
    w_cqs: float = Field(0.3, description="weight of chain-of-thought quality in Overall")
    w_es: float = Field(0.2, description="weight of efficiency (tokens per problem) in Overall")
    w_mls: float = Field(0.1, description="weight of lightness (model bytes) in Overall")
    t_lo: float = Field(64, description="tokens per problem at or below which ES = 100")
    t_hi: float = Field(4096, description="tokens per problem at or above which ES = 0")
    s_lo: float = Field(50e6, description="model bytes at or below which MLS = 100")
    s_hi: float = Field(16e9, description="model bytes at or above which MLS = 0")
    bootstrap_samples: int = Field(stats.SAMPLES, ge=100, description="bootstrap resamples behind every interval "
                                   "(eval, eval --compare, the ablation leaderboard)")
    confidence: float = Field(stats.CONFIDENCE, gt=0, lt=1, description="coverage of the bootstrap intervals")
    bootstrap_seed: int = Field(stats.SEED, description="seed of the bootstrap resampling (intervals are reproducible)")


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def es_score(mean_tokens: float, t_lo: float = 64, t_hi: float = 4096) -> float:
    if mean_tokens <= 0:
        return 100.0
    return 100.0 * _clip01(math.log(t_hi / mean_tokens) / math.log(t_hi / t_lo))


def mls_score(model_bytes: float, s_lo: float = 50e6, s_hi: float = 16e9) -> float:
    if model_bytes <= 0:
        return 100.0
    return 100.0 * _clip01(math.log(s_hi / model_bytes) / math.log(s_hi / s_lo))


def overall(as_: float, cqs: float, es: float, mls: float | None, cfg: ScoreConfig | None = None) -> float:
    """The weighted sum of the four scores (0-100); with ``mls=None`` (size unknown) the weighted mean of the
    other three, their weights renormalised to sum to 1."""
    c = cfg or ScoreConfig()
    if mls is None:
        return (c.w_as * as_ + c.w_cqs * cqs + c.w_es * es) / (c.w_as + c.w_cqs + c.w_es)
    return c.w_as * as_ + c.w_cqs * cqs + c.w_es * es + c.w_mls * mls


def overall_terms(model_bytes: float | None) -> list[str]:
    """The scores an Overall is made of: all four, or AS, CQS, ES when the model size is unknown."""
    return ["AS", "CQS", "ES"] + ([] if model_bytes is None else ["MLS"])


def _repeats(text: str) -> bool:
    lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 8]
    if lines and Counter(lines).most_common(1)[0][1] >= 3:
        return True
    words = text.split()
    grams = Counter(tuple(words[i:i + 8]) for i in range(max(0, len(words) - 7)))
    return bool(grams) and grams.most_common(1)[0][1] >= 3


CQS_COMPONENTS = ("step_accuracy", "consistent", "has_steps", "no_repetition", "same_language")


def cqs_proxy(output: str, question: str) -> dict[str, Any]:
    """The offline CQS proxy of one chain: its components and ``cqs`` (0-100)."""
    text = strip_think(output or "")
    steps = find_steps(text)
    n_ok = sum(s.ok for s in steps)
    answer = extract_answer(text)
    if steps:
        consistent = answer is not None and answers_equal(answer, format_number(steps[-1].value, 6))
    else:
        consistent = answer is not None
    comp = {
        "step_accuracy": n_ok / len(steps) if steps else 0.0,
        "consistent": float(consistent),
        "has_steps": float(bool(steps)),
        "no_repetition": float(not _repeats(text)),
        "same_language": float(bool(text.strip()) and detect_lang(text) == detect_lang(question)),
    }
    return {**comp, "steps": len(steps), "steps_ok": n_ok, "cqs": 100.0 * sum(comp.values()) / len(comp)}


JUDGE_COMPONENTS = ("logic", "step_correctness", "consistency", "no_padding")
SCORE_KEYS = ("AS", "CQS", "ES", "MLS", "overall")
INTERVAL_KEYS = SCORE_KEYS + ("mean_tokens",)


def components_of(cqs_kind: str) -> tuple[str, ...]:
    return JUDGE_COMPONENTS if cqs_kind == "judge" else CQS_COMPONENTS


def score_columns(rows: Sequence[dict[str, Any]], model_bytes: float | None = None) -> dict[str, np.ndarray]:
    """Per-problem columns of prediction rows (``predictions.jsonl``), each of shape ``(n,)``: ``correct`` (0/1),
    ``cqs`` (0-100; NaN where the judge gave no score), ``tokens``, and ``bytes`` (the model size repeated, NaN
    when unknown: a constant column, so a resample of it is the same model)."""
    correct = np.array([float(bool(r["correct"])) for r in rows])
    cqs = np.array([np.nan if (r.get("cqs") or {}).get("cqs") is None else float(r["cqs"]["cqs"]) for r in rows])
    tokens = np.array([float(r["tokens"]) for r in rows])
    size = np.full(len(rows), np.nan if model_bytes is None else float(model_bytes))
    return {"correct": correct, "cqs": cqs, "tokens": tokens, "bytes": size}


def score_stat(cfg: ScoreConfig | None = None) -> stats.Stat:
    """The statistic behind every score interval: resampled :func:`score_columns` (shape ``(samples, n)``) ->
    AS, CQS, ES, MLS, overall and mean_tokens per resample (shape ``(samples,)``), by the formulas of
    :func:`aggregate`. CQS is the mean over judged chains (NaN when none); Overall counts a NaN CQS as 0, as
    :func:`aggregate` does; MLS is NaN when the size is unknown and Overall then renormalises over AS, CQS, ES."""
    c = cfg or ScoreConfig()

    def stat(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        acc = 100.0 * np.asarray(cols["correct"], dtype=float).mean(axis=-1)
        cq = stats.nanmean(cols["cqs"])
        t = np.asarray(cols["tokens"], dtype=float).mean(axis=-1)
        with np.errstate(divide="ignore"):
            es = np.where(t <= 0, 100.0, 100.0 * np.clip(np.log(c.t_hi / np.maximum(t, 1e-12)) / math.log(c.t_hi / c.t_lo), 0, 1))
        size = np.asarray(cols["bytes"], dtype=float)[..., 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            mls = np.where(size <= 0, 100.0,
                           100.0 * np.clip(np.log(c.s_hi / np.maximum(size, 1e-12)) / math.log(c.s_hi / c.s_lo), 0, 1))
        known = c.w_as * acc + c.w_cqs * np.nan_to_num(cq) + c.w_es * es
        ov = np.where(np.isnan(mls), known / (c.w_as + c.w_cqs + c.w_es), known + c.w_mls * np.nan_to_num(mls))
        return {"AS": acc, "CQS": cq, "ES": es, "MLS": mls, "overall": ov, "mean_tokens": t}

    return stat


def score_intervals(cols: dict[str, np.ndarray], cfg: ScoreConfig | None = None,
                    indices: np.ndarray | None = None) -> dict[str, stats.Interval]:
    """Every score of one model (:func:`score_columns`) with its interval (``indices``: a shared draw from
    :func:`stats.bootstrap_indices`; otherwise drawn from ``cfg``'s samples and seed)."""
    c = cfg or ScoreConfig()
    return stats.bootstrap(cols, score_stat(c), samples=c.bootstrap_samples, confidence=c.confidence,  # type: ignore[return-value]
                           seed=c.bootstrap_seed, indices=indices)


def score_differences(cols_a: dict[str, np.ndarray], cols_b: dict[str, np.ndarray], cfg: ScoreConfig | None = None,
                      indices: np.ndarray | None = None) -> dict[str, stats.Interval]:
    """B - A of every score, both models scored on the same problems in the same order, with paired intervals."""
    c = cfg or ScoreConfig()
    return stats.paired_bootstrap(cols_a, cols_b, score_stat(c), samples=c.bootstrap_samples,  # type: ignore[return-value]
                                  confidence=c.confidence, seed=c.bootstrap_seed, indices=indices)


def _pair(iv: stats.Interval) -> list[float] | None:
    d = iv.as_dict()
    return None if d["lo"] is None else [d["lo"], d["hi"]]


def bootstrap_intervals(rows: Sequence[dict[str, Any]], model_bytes: float | None,
                        cfg: ScoreConfig | None = None) -> dict[str, Any]:
    """Percentile bootstrap interval ``[lo, hi]`` (``cfg.confidence``) of every score, resampling problems with
    replacement (None where no resample gives a value: CQS with no judged chain, MLS of an unknown size).

    MLS does not depend on the problems, so its interval is a single point.
    """
    if not rows:
        return {}
    ivs = score_intervals(score_columns(rows, model_bytes), cfg)
    return {k: _pair(ivs[k]) for k in INTERVAL_KEYS}


def interval_method(cfg: ScoreConfig) -> dict[str, Any]:
    return {"kind": "percentile bootstrap over problems", "samples": cfg.bootstrap_samples,
            "confidence": cfg.confidence, "seed": cfg.bootstrap_seed}


def paired_bootstrap(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], bytes_a: float | None,
                     bytes_b: float | None, cfg: ScoreConfig | None = None) -> dict[str, dict[str, Any]]:
    """Per score: A, B, the difference B - A and its paired bootstrap interval over the same problems
    (:func:`stats.paired_bootstrap`). ``rows_a[i]`` and ``rows_b[i]`` must be the same problem.
    Raises ValueError on lists of different length or empty ones."""
    if len(rows_a) != len(rows_b) or not rows_a:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists of predictions of the same problems")
    ca, cb = score_columns(rows_a, bytes_a), score_columns(rows_b, bytes_b)
    stat = score_stat(cfg)
    full_a, full_b = stat(stats.resample(ca, np.arange(len(rows_a))[None, :])), stat(stats.resample(cb, np.arange(len(rows_b))[None, :]))
    diffs = score_differences(ca, cb, cfg)
    out = {}
    for k in INTERVAL_KEYS:
        d = diffs[k].as_dict()
        a, b = float(full_a[k][0]), float(full_b[k][0])
        r = lambda x: None if math.isnan(x) else round(x, 4)  # noqa: E731
        out[k] = {"A": r(a), "B": r(b), "diff": d["point"], "ci": _pair(diffs[k]), "significant": diffs[k].excludes_zero()}
    return out


def aggregate(preds: Iterable[dict[str, Any]], model_bytes: float | None, cfg: ScoreConfig | None = None,
              cqs_kind: str = "proxy") -> dict[str, Any]:
    """Scores over prediction dicts (``correct``, ``tokens``, ``cqs``...), overall, intervals and ``by_family``
    (one block per ``source``, plus one per difficulty level where rows have ``level``: ``math500/level 3``).

    ``model_bytes=None`` (size unknown): ``MLS`` and ``model_bytes`` are None and Overall is over AS, CQS and ES
    with renormalised weights (``overall_terms`` says which terms Overall holds)."""
    cfg = cfg or ScoreConfig()
    preds = list(preds)
    comps = components_of(cqs_kind)
    scale = 100.0 if cqs_kind == "proxy" else 1.0  # proxy components are 0-1, judge components 0-100
    stat = score_stat(cfg)

    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rows)
        if n == 0:
            return {"n": 0}
        cols = score_columns(rows, model_bytes)
        full = {k: float(v[0]) for k, v in stat(stats.resample(cols, np.arange(n)[None, :])).items()}
        judged = [r for r in rows if (r.get("cqs") or {}).get("cqs") is not None]
        steps = sum(_proxy_of(r).get("steps", 0) for r in rows)
        steps_ok = sum(_proxy_of(r).get("steps_ok", 0) for r in rows)
        cqs = full["CQS"] if judged else 0.0
        mls = None if model_bytes is None else round(full["MLS"], 4)
        return {
            "AS": round(full["AS"], 4), "CQS": round(cqs, 4), "ES": round(full["ES"], 4), "MLS": mls,
            "overall": round(overall(full["AS"], cqs, full["ES"], None if model_bytes is None else full["MLS"], cfg), 4),
            "overall_terms": overall_terms(model_bytes),
            "mean_tokens": round(full["mean_tokens"], 3), "model_bytes": None if model_bytes is None else int(model_bytes),
            "n": n, "cqs_kind": cqs_kind,
            "cqs_components": _component_means(judged, comps, scale),
            "cqs_missing": n - len(judged),
            "step_accuracy": round(100.0 * steps_ok / steps, 3) if steps else None,
            "truncated": sum(r.get("finish_reason") == "length" for r in rows),
            "intervals": bootstrap_intervals(rows, model_bytes, cfg),
        }

    out = block(preds)
    out["interval_method"] = interval_method(cfg)
    fams = sorted({r["source"] for r in preds})
    out["by_family"] = {f: block([r for r in preds if r["source"] == f]) for f in fams}
    for root, lv in sorted({(_root(r["source"]), r["level"]) for r in preds if r.get("level") is not None}):
        out["by_family"][f"{root}/level {lv}"] = block([r for r in preds if _root(r["source"]) == root and r.get("level") == lv])
    return out


def _root(source: str) -> str:
    """The benchmark of a family (``math500/Algebra`` -> ``math500``)."""
    return source.split("/", 1)[0]


def _component_means(rows: list[dict[str, Any]], comps: tuple[str, ...], scale: float) -> dict[str, float]:
    """Mean of each CQS component (0-100) over the chains that have it."""
    out = {}
    for k in comps:
        vals = [float(r["cqs"][k]) for r in rows if r["cqs"].get(k) is not None]
        if vals:
            out[k] = round(scale * sum(vals) / len(vals), 3)
    return out


def _proxy_of(r: dict[str, Any]) -> dict[str, Any]:
    """The proxy details of a prediction (kept under ``cqs["proxy"]`` when a judge gave the CQS)."""
    c = r.get("cqs") or {}
    return c.get("proxy", c)
