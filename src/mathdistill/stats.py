"""Bootstrap intervals over per-problem results: is a score, or a difference between two runs, real?

Percentile bootstrap over problems (Efron & Tibshirani, ch. 13): resample problem indices with
replacement ``samples`` times, recompute the statistic on each resample, and take the
``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles. A *paired* difference uses the same
resampled indices for both runs (they were scored on the same problems), so the problem-to-problem
variation that both share cancels out and the interval is narrower than two separate intervals suggest.

The statistic is recomputed per resample, not averaged per problem: ES is a function of the *mean* tokens of
the resample (``scores.es_score`` is not linear), so :func:`score_samples` recomputes AS, CQS, ES, MLS and
Overall exactly as ``scores.aggregate`` does, on every resample.

Public API (plain numpy arrays in, :class:`Interval` out; usable by eval, ablate and anything else)::

    bootstrap_ci(values, stat=mean, samples=1000, confidence=0.95, seed=0) -> Interval
    paired_diff_ci(a, b, stat=mean, samples=1000, confidence=0.95, seed=0) -> Interval     # stat(a) - stat(b)
    bootstrap_indices(n, samples, seed) -> (samples, n) int array    # share one draw across many runs
    score_samples(cols, model_bytes, score_cfg, indices) -> {"AS": (samples,), ..., "overall": ...}
    score_columns(predictions) -> {"correct", "cqs", "tokens"}        # from predictions.jsonl rows

``values`` (and ``a``/``b``) is a 1-D array over problems, or a mapping of such columns (all the same
length); ``stat`` receives the resampled array(s) with problems on the last axis, shape ``(samples, n)``,
and returns shape ``(samples,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

import numpy as np

from .scores import ScoreConfig, mls_score

Columns = Union[np.ndarray, Mapping[str, np.ndarray]]
Stat = Callable[[Any], np.ndarray]

SAMPLES = 1000  # resamples; the interval's ends move by well under 0.5 points between seeds at this count
CONFIDENCE = 0.95
SCORE_FIELDS = ("AS", "CQS", "ES", "MLS", "overall")


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval."""

    point: float
    lo: float
    hi: float
    confidence: float = CONFIDENCE

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (the difference is unlikely to be noise)."""
        return self.lo > 0 or self.hi < 0

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        return {"point": round(self.point, digits), "lo": round(self.lo, digits), "hi": round(self.hi, digits)}


def mean(x: np.ndarray) -> np.ndarray:
    """Default statistic: the mean over problems (last axis)."""
    return np.asarray(x, dtype=float).mean(axis=-1)


def _n(values: Columns) -> int:
    if isinstance(values, Mapping):
        lens = {len(v) for v in values.values()}
        if len(lens) != 1:
            raise ValueError(f"columns differ in length: {sorted(lens)}")
        return lens.pop()
    return len(values)


def _take(values: Columns, idx: np.ndarray) -> Columns:
    if isinstance(values, Mapping):
        return {k: np.asarray(v)[idx] for k, v in values.items()}
    return np.asarray(values)[idx]


def _as_columns(values: Columns) -> Columns:
    if isinstance(values, Mapping):
        return {k: np.asarray(v, dtype=float) for k, v in values.items()}
    return np.asarray(values, dtype=float)


def bootstrap_indices(n: int, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """``(samples, n)`` problem indices drawn with replacement; pass the same array to every run compared."""
    if n < 1:
        raise ValueError("bootstrap needs at least one problem")
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def interval(point: float, draws: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Percentile interval of ``draws`` around ``point``."""
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(np.asarray(draws, dtype=float), [a, 1.0 - a])
    return Interval(float(point), float(min(lo, point)), float(max(hi, point)), confidence)


def bootstrap_ci(values: Columns, stat: Stat = mean, *, samples: int = SAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0, indices: np.ndarray | None = None) -> Interval:
    """``stat`` over all problems, with its percentile-bootstrap interval."""
    values = _as_columns(values)
    n = _n(values)
    idx = bootstrap_indices(n, samples, seed) if indices is None else indices
    point = float(np.asarray(stat(_take(values, np.arange(n)[None, :])))[0])
    return interval(point, stat(_take(values, idx)), confidence)


def paired_diff_ci(a: Columns, b: Columns, stat: Stat = mean, *, samples: int = SAMPLES,
                   confidence: float = CONFIDENCE, seed: int = 0, indices: np.ndarray | None = None) -> Interval:
    """``stat(a) - stat(b)`` where ``a`` and ``b`` are results on the same problems (same order), with the
    interval of the difference from resampling the problems once for both."""
    a, b = _as_columns(a), _as_columns(b)
    n = _n(a)
    if _n(b) != n:
        raise ValueError(f"paired runs must cover the same problems: {n} vs {_n(b)}")
    idx = bootstrap_indices(n, samples, seed) if indices is None else indices
    full = np.arange(n)[None, :]
    point = float(np.asarray(stat(_take(a, full)))[0] - np.asarray(stat(_take(b, full)))[0])
    return interval(point, stat(_take(a, idx)) - stat(_take(b, idx)), confidence)


def score_columns(predictions: Iterable[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Per-problem columns from prediction rows (``predictions.jsonl``): correct (0/1), cqs (0-100), tokens."""
    rows = list(predictions)
    return {"correct": np.array([float(bool(r["correct"])) for r in rows]),
            "cqs": np.array([float(r["cqs"]["cqs"]) for r in rows]),
            "tokens": np.array([float(r["tokens"]) for r in rows])}


def _es(mean_tokens: np.ndarray, cfg: ScoreConfig) -> np.ndarray:
    """``scores.es_score`` over an array of mean token counts."""
    t = np.maximum(mean_tokens, 1e-12)
    es = 100.0 * np.clip(np.log(cfg.t_hi / t) / np.log(cfg.t_hi / cfg.t_lo), 0.0, 1.0)
    return np.where(mean_tokens <= 0, 100.0, es)


def score_samples(cols: Mapping[str, np.ndarray], model_bytes: float, cfg: ScoreConfig | None = None,
                  indices: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """AS, CQS, ES, MLS and Overall recomputed on each resample (rows of ``indices``; all problems when None).

    The same formulas as ``scores.aggregate``: AS = 100·mean(correct), CQS = mean(cqs),
    ES = es_score(mean(tokens)), MLS = mls_score(bytes) (a constant per model), Overall = weighted sum.
    """
    cfg = cfg or ScoreConfig()
    idx = np.arange(len(cols["correct"]))[None, :] if indices is None else indices
    as_ = 100.0 * np.asarray(cols["correct"], dtype=float)[idx].mean(axis=-1)
    cqs = np.asarray(cols["cqs"], dtype=float)[idx].mean(axis=-1)
    es = _es(np.asarray(cols["tokens"], dtype=float)[idx].mean(axis=-1), cfg)
    mls = np.full(as_.shape, mls_score(model_bytes, cfg.s_lo, cfg.s_hi))
    ov = cfg.w_as * as_ + cfg.w_cqs * cqs + cfg.w_es * es + cfg.w_mls * mls
    return {"AS": as_, "CQS": cqs, "ES": es, "MLS": mls, "overall": ov}


def score_intervals(cols: Mapping[str, np.ndarray], model_bytes: float, cfg: ScoreConfig | None = None,
                    indices: np.ndarray | None = None, confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """Every score of one model with its interval (``indices`` from :func:`bootstrap_indices`)."""
    point = score_samples(cols, model_bytes, cfg)
    draws = score_samples(cols, model_bytes, cfg, indices if indices is not None else bootstrap_indices(len(cols["correct"])))
    return {k: interval(float(point[k][0]), draws[k], confidence) for k in SCORE_FIELDS}


def score_diff_intervals(a: Mapping[str, np.ndarray], a_bytes: float, b: Mapping[str, np.ndarray], b_bytes: float,
                         cfg: ScoreConfig | None = None, indices: np.ndarray | None = None,
                         confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """Paired differences ``a - b`` of every score, both models scored on the same problems in the same order."""
    if len(a["correct"]) != len(b["correct"]):
        raise ValueError(f"paired runs must cover the same problems: {len(a['correct'])} vs {len(b['correct'])}")
    idx = indices if indices is not None else bootstrap_indices(len(a["correct"]))
    pa, pb = score_samples(a, a_bytes, cfg), score_samples(b, b_bytes, cfg)
    da, db = score_samples(a, a_bytes, cfg, idx), score_samples(b, b_bytes, cfg, idx)
    return {k: interval(float(pa[k][0] - pb[k][0]), da[k] - db[k], confidence) for k in SCORE_FIELDS}
