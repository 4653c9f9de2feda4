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
"""

from __future__ import annotations

import math

from collections import Counter
from typing import Any, Iterable

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


def aggregate(preds: Iterable[dict[str, Any]], model_bytes: int, cfg: ScoreConfig | None = None,
              cqs_kind: str = "proxy") -> dict[str, Any]:
    """Scores over prediction dicts (``correct``, ``tokens``, ``cqs``...), overall and ``by_family``."""
    cfg = cfg or ScoreConfig()
    preds = list(preds)

    def block(rows: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(rows)
        if n == 0:
            return {"n": 0}
        acc = 100.0 * sum(bool(r["correct"]) for r in rows) / n
        cqs = sum(r["cqs"]["cqs"] for r in rows) / n
        mean_tokens = sum(r["tokens"] for r in rows) / n
        steps = sum(r["cqs"].get("steps", 0) for r in rows)
        steps_ok = sum(r["cqs"].get("steps_ok", 0) for r in rows)
        es = es_score(mean_tokens, cfg.t_lo, cfg.t_hi)
        mls = mls_score(model_bytes, cfg.s_lo, cfg.s_hi)
        return {
            "AS": round(acc, 4), "CQS": round(cqs, 4), "ES": round(es, 4), "MLS": round(mls, 4),
            "overall": round(overall(acc, cqs, es, mls, cfg), 4),
            "mean_tokens": round(mean_tokens, 3), "model_bytes": int(model_bytes), "n": n, "cqs_kind": cqs_kind,
            "cqs_components": {k: round(100.0 * sum(r["cqs"].get(k, 0.0) for r in rows) / n, 3)
                               for k in CQS_COMPONENTS if cqs_kind == "proxy"},
            "step_accuracy": round(100.0 * steps_ok / steps, 3) if steps else None,
            "truncated": sum(r.get("finish_reason") == "length" for r in rows),
        }

    out = block(preds)
    fams = sorted({r["source"] for r in preds})
    out["by_family"] = {f: block([r for r in preds if r["source"] == f]) for f in fams}
    return out


