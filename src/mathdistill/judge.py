"""CQS by an LLM judge: any OpenAI-compatible model grades each chain 0-100 on a published rubric.

The rubric is a versioned file (``rubrics/judge_v1.md``, or a path to your own): its text is part of every
request, so the client's cache keys change with it and a judged CQS always names the rubric and its hash.
The judge answers with one JSON object per chain (``logic``, ``step_correctness``, ``consistency``,
``no_padding``, ``score``); an answer that cannot be read is recorded with its reason and the chain is left
out of the CQS mean (``cqs_missing``), never scored 0 for the judge's fault.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field

from .answers import strip_think
from .client import ChatClientConfig, ChatRequest, run_requests
from .config import StageConfig
from .errors import UserError
from .records import Problem
from .scores import JUDGE_COMPONENTS

DEFAULT_RUBRIC = "judge_v1"


class JudgeConfig(StageConfig):
    """The judge endpoint behind ``cqs: judge`` (the key comes from MATHDISTILL_API_KEY or OPENAI_API_KEY)."""

    base_url: str | None = Field(None, description="judge's OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="judge model name at the endpoint")
    rubric: str = Field(DEFAULT_RUBRIC, description="rubric: a name in mathdistill/rubrics (judge_v1) or a path to a .md file")
    temperature: float = Field(0.0, ge=0, description="judge sampling temperature (0: the same chain gets the same grade)")
    max_tokens: int = Field(512, ge=16, description="judge completion token limit")
    concurrency: int = Field(8, ge=1, description="judge calls in flight at once")
    timeout_s: float = Field(120.0, gt=0, description="per-call timeout, seconds")
    max_retries: int = Field(5, ge=0, description="retries per call on 429/5xx/timeouts")
    max_chain_chars: int = Field(12_000, ge=200, description="longer chains are cut to their head and tail before judging")


@dataclass(frozen=True)
class Rubric:
    name: str
    system: str
    user: str
    sha256: str


def load_rubric(name: str = DEFAULT_RUBRIC) -> Rubric:
    """A rubric by name (shipped in ``mathdistill/rubrics``) or by path; split at its SYSTEM / USER markers."""
    p = Path(name)
    if p.suffix == ".md" and p.is_file():
        text, label = p.read_text(encoding="utf-8"), p.stem
    else:
        f = resources.files("mathdistill.rubrics") / f"{name}.md"
        if not f.is_file():
            shipped = sorted(x.name[:-3] for x in resources.files("mathdistill.rubrics").iterdir() if x.name.endswith(".md"))
            raise UserError(f"unknown judge rubric {name!r}; shipped rubrics: {', '.join(shipped)} (or give a path to a .md file)")
        text, label = f.read_text(encoding="utf-8"), name
    if "=== SYSTEM ===" not in text or "=== USER ===" not in text:
        raise UserError(f"rubric {name}: needs a '=== SYSTEM ===' and a '=== USER ===' section")
    system = text.split("=== SYSTEM ===", 1)[1].split("=== USER ===", 1)[0].strip()
    user = text.split("=== USER ===", 1)[1].strip()
    for key in ("{question}", "{chain}"):
        if key not in user:
            raise UserError(f"rubric {name}: the USER section must contain {key}")
    return Rubric(label, system, user, hashlib.sha256(text.encode()).hexdigest())


def _cut(chain: str, limit: int) -> str:
    if len(chain) <= limit:
        return chain
    half = limit // 2
    return f"{chain[:half]}\n[... {len(chain) - 2 * half} characters cut ...]\n{chain[-half:]}"


def judge_messages(rubric: Rubric, question: str, reference: str | None, chain: str, max_chars: int = 12_000) -> list[dict[str, str]]:
    # str.replace, not str.format: chains are full of braces (LaTeX, JSON)
    user = (rubric.user.replace("{question}", question).replace("{reference}", reference or "(none given)")
            .replace("{chain}", _cut(chain, max_chars)))
    return [{"role": "system", "content": rubric.system}, {"role": "user", "content": user}]


_OBJ = re.compile(r"\{[^{}]*\}", re.S)


def parse_verdict(text: str | None) -> dict[str, Any]:
    """The judge's JSON verdict -> ``{"cqs": 0-100, <components>, "reason"}``. Raises ValueError with the reason."""
    body = strip_think(text or "").strip()
    if not body:
        raise ValueError("empty judge reply")
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", body)
    cands = [body] + [m.group(0) for m in reversed(list(_OBJ.finditer(body)))]
    obj = None
    for c in cands:
        try:
            v = json.loads(c)
        except json.JSONDecodeError:
            continue
        if isinstance(v, dict):
            obj = v
            break
    if obj is None:
        raise ValueError(f"no JSON object in judge reply: {body[:80]!r}")

    def num(key: str) -> float | None:
        v = obj.get(key)
        if v is None:
            return None
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{key} is not a number: {v!r}") from None
        if not 0 <= x <= 100:
            raise ValueError(f"{key} out of 0-100: {x}")
        return x

    comps = {k: num(k) for k in JUDGE_COMPONENTS}
    score = num("score")
    if score is None:
        if any(v is None for v in comps.values()):
            raise ValueError("judge reply has no 'score' and not every criterion")
        score = sum(comps.values()) / len(comps)  # type: ignore[arg-type]
    return {"cqs": score, **comps, "reason": str(obj.get("reason", ""))[:500]}


def judge(cfg: JudgeConfig, problems: list[Problem], outputs: list[str], cache_path: str | Path | None = None) -> tuple[list[dict[str, Any]], Rubric]:
    """One judge verdict per (problem, output), in order; a failed call or unreadable reply has ``cqs`` None
    and ``error`` set."""
    if not cfg.base_url or not cfg.model:
        raise UserError("cqs: judge needs a judge endpoint: --judge-base-url URL and --judge-model NAME (or judge.base_url / judge.model in the config)")
    rubric = load_rubric(cfg.rubric)
    client_cfg = ChatClientConfig(base_url=cfg.base_url, model=cfg.model, temperature=cfg.temperature, top_p=1.0,
                                  max_tokens=cfg.max_tokens, seed=0, concurrency=cfg.concurrency,
                                  timeout_s=cfg.timeout_s, max_retries=cfg.max_retries)
    reqs = [ChatRequest(judge_messages(rubric, p.question, p.answer, out, cfg.max_chain_chars), key=p.id)
            for p, out in zip(problems, outputs)]
    verdicts = []
    for r in run_requests(client_cfg, reqs, cache_path, desc="judge"):
        base = {"judge_model": cfg.model, "rubric": rubric.name}
        if r.error:
            verdicts.append({"cqs": None, "error": f"judge call failed: {r.error}", **base})
            continue
        try:
            verdicts.append({**parse_verdict(r.content or r.reasoning), **base})
        except ValueError as e:
            verdicts.append({"cqs": None, "error": f"unreadable judge reply: {e}", **base})
    return verdicts, rubric
