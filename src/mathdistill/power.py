"""Statistical power of a paired comparison of Overall: what difference an eval of ``n`` problems can resolve.

Minimum detectable effect (MDE) of a paired difference, normal approximation (two-sided level ``alpha``,
power ``1 - beta``; e.g. Chow, Shao & Wang, *Sample Size Calculations in Clinical Research*, 2nd ed., §3.1,
or Cohen, *Statistical Power Analysis*, ch. 2)::

    MDE(n) = (z_{1-alpha/2} + z_{1-beta}) · sigma_d / sqrt(n)          n(delta) = ceil(((z_{1-alpha/2} + z_{1-beta}) · sigma_d / delta)^2)

``sigma_d`` is the standard deviation over problems of the per-problem difference in Overall between two models
scored on the same problems. Overall is not a plain mean over problems (ES is a log of the *mean* tokens), so a
problem's contribution is its influence value (delta method, first order; Efron & Tibshirani ch. 21)::

    u_i = w_AS·100·correct_i + w_CQS·cqs_i + w_ES·(ES(T) - dES/dT · (T - t_i)) + w_MLS·MLS       mean(u) = Overall

    dES/dT = -100 / (T · ln(t_hi / t_lo)) inside [t_lo, t_hi], 0 outside (ES clipped); T = mean tokens.

``sigma_d`` comes from two models' per-problem values when a pilot has them (observed), or from one model's
``sigma`` and an *assumed* between-model correlation ``rho`` of per-problem values:
``sigma_d = sigma · sqrt(2 (1 - rho))`` (both models taken to have the pilot's spread).

The MDE of a difference whose bootstrap interval is known follows from the interval itself (its half-width is
``z_{1-alpha/2}`` standard errors): ``MDE = half_width · (z_{1-alpha/2} + z_{1-beta}) / z_{1-alpha/2}``
(:func:`mde_from_interval`); this is what the leaderboard shows, so it covers seeds too when the interval does.

Training noise (several seeds per cell): ``stats.hierarchical_draws`` resamples seeds, then problems (two-stage
bootstrap; Davison & Hinkley, *Bootstrap Methods*, §3.8), so an interval covers both.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Mapping

import numpy as np

from .scores import ScoreConfig, es_score, mls_score

ALPHA = 0.05
POWER = 0.80


def z(p: float) -> float:
    """Standard normal quantile."""
    return NormalDist().inv_cdf(p)


def z_sum(alpha: float = ALPHA, power: float = POWER) -> float:
    """``z_{1-alpha/2} + z_{power}`` (2.80 at 95 % / 80 %)."""
    return z(1 - alpha / 2) + z(power)


def per_problem_overall(cols: Mapping[str, np.ndarray], model_bytes: float, cfg: ScoreConfig | None = None) -> np.ndarray:
    """Per-problem Overall influence values ``u`` (shape ``(n,)``, points), whose mean is Overall to first order.

    ``cols``: ``correct`` (0/1), ``cqs`` (0-100, NaN where no judge score: counted as 0, as Overall does),
    ``tokens`` per problem (``scores.score_columns``).
    """
    cfg = cfg or ScoreConfig()
    c = np.asarray(cols["correct"], dtype=float)
    q = np.nan_to_num(np.asarray(cols["cqs"], dtype=float))
    t = np.asarray(cols["tokens"], dtype=float)
    mean_t = float(t.mean()) if len(t) else 0.0
    es = es_score(mean_t, cfg.t_lo, cfg.t_hi)
    slope = -100.0 / (mean_t * math.log(cfg.t_hi / cfg.t_lo)) if cfg.t_lo < mean_t < cfg.t_hi else 0.0
    es_i = es + slope * (t - mean_t)
    mls = mls_score(model_bytes, cfg.s_lo, cfg.s_hi)
    return cfg.w_as * 100.0 * c + cfg.w_cqs * q + cfg.w_es * es_i + cfg.w_mls * mls


def sd_diff_observed(u_a: np.ndarray, u_b: np.ndarray) -> float:
    """``sigma_d`` from two models' per-problem values on the same problems (same order)."""
    d = np.asarray(u_a, dtype=float) - np.asarray(u_b, dtype=float)
    if len(d) < 2:
        raise ValueError("need at least two problems to estimate a spread")
    return float(d.std(ddof=1))


def sd_diff_assumed(u: np.ndarray, rho: float) -> float:
    """``sigma_d = sigma · sqrt(2 (1 - rho))`` from one model's per-problem values and an assumed correlation."""
    if not -1.0 <= rho <= 1.0:
        raise ValueError(f"rho must lie in [-1, 1], got {rho}")
    u = np.asarray(u, dtype=float)
    if len(u) < 2:
        raise ValueError("need at least two problems to estimate a spread")
    return float(u.std(ddof=1) * math.sqrt(2.0 * (1.0 - rho)))


def mde(sd_d: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable paired difference (points of Overall) at ``n`` problems."""
    if n < 1:
        raise ValueError("n must be at least 1")
    return z_sum(alpha, power) * sd_d / math.sqrt(n)


def n_for(sd_d: float, delta: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Problems needed to detect a paired difference of ``delta`` points (at least 2)."""
    if delta <= 0:
        raise ValueError("the target difference must be above 0")
    return max(2, math.ceil((z_sum(alpha, power) * sd_d / delta) ** 2))


def mde_from_interval(lo: float, hi: float, confidence: float = 0.95, power: float = POWER) -> float:
    """The MDE implied by a (bootstrap) interval of a difference: ``half_width · (z_a + z_b) / z_a``."""
    za = z(1 - (1 - confidence) / 2)
    return (hi - lo) / 2.0 * (za + z(power)) / za


def resolvable(lo: float, hi: float) -> str:
    """``"resolved"`` when the interval excludes 0, else ``"not resolvable at this size"``: an interval that
    includes 0 says the eval was too small to tell, not that the choice has no effect."""
    if lo > 0 or hi < 0:
        return "resolved"
    return "not resolvable at this size"

