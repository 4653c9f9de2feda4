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

Uncertainty: every score gets a percentile bootstrap interval over problems (``intervals``), and
:func:`paired_bootstrap` gives the difference between two models on the same problems with its interval
(the same resampled problems for both, so per-problem difficulty cancels out).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
from pydantic import Field

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
    bootstrap_samples: int = Field(2000, ge=100, description="bootstrap resamples behind every interval")
    confidence: float = Field(0.95, gt=0, lt=1, description="coverage of the bootstrap intervals")
    bootstrap_seed: int = Field(0, description="seed of the bootstrap resampling (intervals are reproducible)")


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


def overall(as_: float, cqs: float, es: float, mls: float, cfg: ScoreConfig | None = None) -> float:
    c = cfg or ScoreConfig()
    return c.w_as * as_ + c.w_cqs * cqs + c.w_es * es + c.w_mls * mls


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


def _per_problem(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(correct 0/1, cqs 0-100 or NaN where no score, tokens) per problem."""
    correct = np.array([float(bool(r["correct"])) for r in rows])
    cqs = np.array([np.nan if (r.get("cqs") or {}).get("cqs") is None else float(r["cqs"]["cqs"]) for r in rows])
    tokens = np.array([float(r["tokens"]) for r in rows])
    return correct, cqs, tokens


def _scores_of(correct: np.ndarray, cqs: np.ndarray, tokens: np.ndarray, model_bytes: float,
               cfg: ScoreConfig) -> dict[str, np.ndarray]:
    """Every score for each row of index-resampled matrices (shape: resamples x problems)."""
    acc = 100.0 * correct.mean(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no judged chain: NaN CQS
        cq = np.nanmean(cqs, axis=-1)
    t = tokens.mean(axis=-1)
    with np.errstate(divide="ignore"):
        es = np.where(t <= 0, 100.0, 100.0 * np.clip(np.log(cfg.t_hi / np.maximum(t, 1e-12)) / math.log(cfg.t_hi / cfg.t_lo), 0, 1))
    mls = np.full_like(acc, mls_score(model_bytes, cfg.s_lo, cfg.s_hi))
    ov = cfg.w_as * acc + cfg.w_cqs * np.nan_to_num(cq) + cfg.w_es * es + cfg.w_mls * mls
    return {"AS": acc, "CQS": cq, "ES": es, "MLS": mls, "overall": ov, "mean_tokens": t}


def _resample_index(n: int, cfg: ScoreConfig) -> np.ndarray:
    rng = np.random.default_rng(cfg.bootstrap_seed)
    return rng.integers(0, n, size=(cfg.bootstrap_samples, n))


def _interval(x: np.ndarray, cfg: ScoreConfig) -> list[float] | None:
    a = (1 - cfg.confidence) / 2
    x = x[~np.isnan(x)]
    if x.size == 0:
        return None
    lo, hi = np.percentile(x, [100 * a, 100 * (1 - a)])
    return [round(float(lo), 4), round(float(hi), 4)]


def bootstrap_intervals(rows: Sequence[dict[str, Any]], model_bytes: float, cfg: ScoreConfig | None = None) -> dict[str, Any]:
    """Percentile bootstrap interval (``cfg.confidence``) of every score, resampling problems with replacement.

    MLS does not depend on the problems, so its interval is a single point.
    """
    cfg = cfg or ScoreConfig()
    if not rows:
        return {}
    correct, cqs, tokens = _per_problem(rows)
    idx = _resample_index(len(rows), cfg)
    boot = _scores_of(correct[idx], cqs[idx], tokens[idx], model_bytes, cfg)
    return {k: _interval(boot[k], cfg) for k in INTERVAL_KEYS}


def interval_method(cfg: ScoreConfig) -> dict[str, Any]:
    return {"kind": "percentile bootstrap over problems", "samples": cfg.bootstrap_samples,
            "confidence": cfg.confidence, "seed": cfg.bootstrap_seed}


def paired_bootstrap(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], bytes_a: float, bytes_b: float,
                     cfg: ScoreConfig | None = None) -> dict[str, dict[str, Any]]:
    """Per score: A, B, the difference B - A and its bootstrap interval over the same problems.

    ``rows_a[i]`` and ``rows_b[i]`` must be the same problem; each resample draws the same problems for both.
    """
    cfg = cfg or ScoreConfig()
    if len(rows_a) != len(rows_b) or not rows_a:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists of predictions of the same problems")
    pa, pb = _per_problem(rows_a), _per_problem(rows_b)
    full_a = _scores_of(*pa, bytes_a, cfg)
    full_b = _scores_of(*pb, bytes_b, cfg)
    idx = _resample_index(len(rows_a), cfg)
    boot_a = _scores_of(*(x[idx] for x in pa), bytes_a, cfg)
    boot_b = _scores_of(*(x[idx] for x in pb), bytes_b, cfg)
    out = {}
    for k in INTERVAL_KEYS:
        a, b = float(full_a[k]), float(full_b[k])
        ci = _interval(boot_b[k] - boot_a[k], cfg)
        out[k] = {"A": round(a, 4), "B": round(b, 4), "diff": round(b - a, 4), "ci": ci,
                  "significant": bool(ci is not None and (ci[0] > 0 or ci[1] < 0))}
    return out


def aggregate(preds: Iterable[dict[str, Any]], model_bytes: int, cfg: ScoreConfig | None = None,
              cqs_kind: str = "proxy") -> dict[str, Any]:
    """Scores over prediction dicts (``correct``, ``tokens``, ``cqs``...), overall, intervals and ``by_family``."""
    cfg = cfg or ScoreConfig()
    preds = list(preds)
    comps = components_of(cqs_kind)
    scale = 100.0 if cqs_kind == "proxy" else 1.0  # proxy components are 0-1, judge components 0-100

    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rows)
        if n == 0:
            return {"n": 0}
        correct, cqs_arr, tokens = _per_problem(rows)
        full = {k: float(v) for k, v in _scores_of(correct, cqs_arr, tokens, model_bytes, cfg).items()}
        judged = [r for r in rows if (r.get("cqs") or {}).get("cqs") is not None]
        steps = sum(_proxy_of(r).get("steps", 0) for r in rows)
        steps_ok = sum(_proxy_of(r).get("steps_ok", 0) for r in rows)
        cqs = full["CQS"] if judged else 0.0
        return {
            "AS": round(full["AS"], 4), "CQS": round(cqs, 4), "ES": round(full["ES"], 4), "MLS": round(full["MLS"], 4),
            "overall": round(overall(full["AS"], cqs, full["ES"], full["MLS"], cfg), 4),
            "mean_tokens": round(full["mean_tokens"], 3), "model_bytes": int(model_bytes), "n": n, "cqs_kind": cqs_kind,
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
    return out


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
