"""The one bootstrap behind every interval (eval, ``eval --compare``, the ablation leaderboard, the run report).

Percentile bootstrap over problems (Efron & Tibshirani 1993, ch. 13; ``scipy.stats.bootstrap(method=
"percentile")`` computes the same interval): draw ``samples`` resamples of the problem indices with
replacement, recompute the statistic on each, and take the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
quantiles of the draws. Rules every caller shares:

* **One index draw** (:func:`bootstrap_indices`, seeded) is used for every statistic and every model scored on
  the same problems, so a difference is *paired*: the problem-to-problem variation both share cancels out.
* **Sign: B - A.** :func:`paired_bootstrap` returns ``stat(b) - stat(a)``, the second argument minus the first
  (a leaderboard cell minus the baseline, the student minus the base).
* **NaN-aware.** A statistic may be NaN on a resample (CQS when no chain of the resample was judged); those draws
  are left out of the quantiles. An interval with no finite draw is ``(nan, nan)``, written as ``null``.
* **No clamping.** The interval is the quantiles of the draws as they are; for a non-linear statistic (ES of the
  mean tokens) the point estimate may lie outside it.

* **Seeds.** A model trained with several seeds: :func:`hierarchical_draws` / :func:`hierarchical_bootstrap`
  resample the seeds, then the problems with the same shared index draw, so intervals cover training noise too.

Defaults (``SAMPLES``, ``CONFIDENCE``, ``SEED``) are the defaults of ``scores.ScoreConfig``'s
``bootstrap_samples``, ``confidence`` and ``bootstrap_seed``; callers pass the config's values.

``values`` is a 1-D array over problems, or a mapping of such columns (all the same length); ``stat`` receives the
resampled array(s) with problems on the last axis, shape ``(samples, n)``, and returns shape ``(samples,)``, or a
mapping name -> such an array (then every function returns a mapping name -> :class:`Interval`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

Columns = Union[np.ndarray, Mapping[str, np.ndarray]]
Stat = Callable[[Any], Any]

SAMPLES = 2000  # resamples; the ends of a 95 % interval move by well under 0.5 points between seeds at this count
CONFIDENCE = 0.95
SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval (``lo``/``hi`` NaN when no draw was finite)."""

    point: float
    lo: float
    hi: float
    confidence: float = CONFIDENCE

    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (the difference is unlikely to be noise)."""
        return self.lo > 0 or self.hi < 0  # False for NaN ends

    def as_dict(self, digits: int = 4) -> dict[str, float | None]:
        """``{"point", "lo", "hi"}`` rounded; NaN is written as None (JSON ``null``)."""
        r = lambda x: None if x is None or math.isnan(x) else round(float(x), digits)  # noqa: E731
        return {"point": r(self.point), "lo": r(self.lo), "hi": r(self.hi)}


def mean(x: np.ndarray) -> np.ndarray:
    """Default statistic: the mean over problems (last axis)."""
    return np.asarray(x, dtype=float).mean(axis=-1)


def nanmean(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (no warning) where every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(x, dtype=float), axis=-1)


def _n(values: Columns) -> int:
    if isinstance(values, Mapping):
        lens = {len(v) for v in values.values()}
        if len(lens) != 1:
            raise ValueError(f"columns differ in length: {sorted(lens)}")
        return lens.pop()
    return len(values)


def resample(values: Columns, idx: np.ndarray) -> Columns:
    """``values`` taken at the index matrix ``idx`` (each column the same way)."""
    if isinstance(values, Mapping):
        return {k: np.asarray(v)[idx] for k, v in values.items()}
    return np.asarray(values)[idx]


def _as_columns(values: Columns) -> Columns:
    if isinstance(values, Mapping):
        return {k: np.asarray(v, dtype=float) for k, v in values.items()}
    return np.asarray(values, dtype=float)


def bootstrap_indices(n: int, samples: int = SAMPLES, seed: int = SEED) -> np.ndarray:
    """``(samples, n)`` problem indices drawn with replacement (``numpy.random.default_rng(seed)``); pass the
    same array to every statistic and model compared. Raises ValueError when ``n < 1``."""
    if n < 1:
        raise ValueError("bootstrap needs at least one problem")
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def percentile(draws: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the finite draws (NaN left out);
    ``(nan, nan)`` when none is finite."""
    x = np.asarray(draws, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(x, [a, 1.0 - a])
    return float(lo), float(hi)


def interval(point: float, draws: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """``point`` with the percentile interval of ``draws`` (not clamped to contain the point)."""
    lo, hi = percentile(draws, confidence)
    return Interval(float(point), lo, hi, confidence)


def _intervals(points: Any, draws: Any, confidence: float) -> Interval | dict[str, Interval]:
    if isinstance(points, Mapping):
        return {k: interval(float(np.asarray(points[k]).reshape(-1)[0]), draws[k], confidence) for k in points}
    return interval(float(np.asarray(points).reshape(-1)[0]), draws, confidence)


def _sub(b: Any, a: Any) -> Any:
    if isinstance(b, Mapping):
        return {k: np.asarray(b[k], dtype=float) - np.asarray(a[k], dtype=float) for k in b}
    return np.asarray(b, dtype=float) - np.asarray(a, dtype=float)


def bootstrap(values: Columns, stat: Stat = mean, *, samples: int = SAMPLES, confidence: float = CONFIDENCE,
              seed: int = SEED, indices: np.ndarray | None = None) -> Interval | dict[str, Interval]:
    """``stat`` over all problems with its percentile-bootstrap interval (``indices``: a shared draw from
    :func:`bootstrap_indices`; otherwise one is drawn from ``samples`` and ``seed``)."""
    values = _as_columns(values)
    n = _n(values)
    idx = bootstrap_indices(n, samples, seed) if indices is None else indices
    point = stat(resample(values, np.arange(n)[None, :]))
    return _intervals(point, stat(resample(values, idx)), confidence)


def paired_bootstrap(a: Columns, b: Columns, stat: Stat = mean, *, samples: int = SAMPLES,
                     confidence: float = CONFIDENCE, seed: int = SEED,
                     indices: np.ndarray | None = None) -> Interval | dict[str, Interval]:
    """``stat(b) - stat(a)`` (B - A) for two results on the same problems in the same order, with the interval
    of the difference from resampling the problems once for both. Raises ValueError when the lengths differ."""
    a, b = _as_columns(a), _as_columns(b)
    n = _n(a)
    if _n(b) != n:
        raise ValueError(f"paired results must cover the same problems: {n} vs {_n(b)}")
    idx = bootstrap_indices(n, samples, seed) if indices is None else indices
    full = np.arange(n)[None, :]
    point = _sub(stat(resample(b, full)), stat(resample(a, full)))
    return _intervals(point, _sub(stat(resample(b, idx)), stat(resample(a, idx))), confidence)


def _nanmean0(x: np.ndarray) -> np.ndarray:
    """Mean over the first axis ignoring NaN; NaN (no warning) where every value is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=0)


def hierarchical_draws(per_seed: Sequence[Columns], stat: Stat = mean, *, indices: np.ndarray,
                       seed: int = SEED) -> tuple[Any, Any]:
    """Two-stage bootstrap over training seeds, then problems (Davison & Hinkley, *Bootstrap Methods*, §3.8).

    ``per_seed``: one result per training seed, all on the same problems in the same order. Stage 2 uses the
    shared problem draw ``indices`` (:func:`bootstrap_indices`, shape ``(samples, n)``) for every seed, so a
    difference to another model drawn with the same ``indices`` stays paired over problems; stage 1 resamples the
    seeds with replacement, independently per draw (``numpy.random.default_rng(seed)``; give each model its own
    ``seed``). Returns ``(point, draws)``: the point is the mean over seeds of ``stat`` on all problems (shape
    ``(1,)``), a draw the mean over the resampled seeds of their ``stat`` on that problem resample (shape
    ``(samples,)``); mappings when ``stat`` returns one. NaN-aware: a seed whose statistic is NaN is left out of
    the mean. With one seed the draws are exactly :func:`bootstrap`'s. Raises ValueError without a seed."""
    if not per_seed:
        raise ValueError("hierarchical bootstrap needs at least one seed")
    cols = [_as_columns(v) for v in per_seed]
    n = _n(cols[0])
    if any(_n(c) != n for c in cols):
        raise ValueError("every seed must cover the same problems")
    full = np.arange(n)[None, :]
    pts = [stat(resample(c, full)) for c in cols]
    drs = [stat(resample(c, indices)) for c in cols]
    s, samples = len(cols), indices.shape[0]
    pick = np.random.default_rng(seed).integers(0, s, size=(samples, s)) if s > 1 else np.zeros((samples, 1), int)

    def combine(point_list: list[Any], draw_list: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        d = np.stack([np.asarray(x, dtype=float).reshape(-1) for x in draw_list])  # (S, samples)
        p = _nanmean0(np.stack([np.asarray(x, dtype=float).reshape(-1)[:1] for x in point_list]))
        return p, _nanmean0(d[pick.T, np.arange(samples)[None, :]])

    if isinstance(pts[0], Mapping):
        both = {k: combine([p[k] for p in pts], [d[k] for d in drs]) for k in pts[0]}
        return {k: v[0] for k, v in both.items()}, {k: v[1] for k, v in both.items()}
    return combine(pts, drs)


def hierarchical_bootstrap(per_seed: Sequence[Columns], stat: Stat = mean, *, samples: int = SAMPLES,
                           confidence: float = CONFIDENCE, seed: int = SEED,
                           indices: np.ndarray | None = None) -> Interval | dict[str, Interval]:
    """``stat`` averaged over training seeds with its interval over seeds and problems
    (:func:`hierarchical_draws`; ``indices``: a shared problem draw, otherwise drawn from ``samples`` and ``seed``)."""
    cols = [_as_columns(v) for v in per_seed]
    idx = bootstrap_indices(_n(cols[0]), samples, seed) if indices is None else indices
    point, draws = hierarchical_draws(cols, stat, indices=idx, seed=seed)
    return _intervals(point, draws, confidence)
