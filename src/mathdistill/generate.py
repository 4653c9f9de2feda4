"""Stage ``generate``: teacher traces for problems, behind one backend interface.

Backends:
- ``reference`` (embedded default): the chain shipped with the problem (GSM-Symbolic's ``answer_cot``, or the
  built-in solver's chain) becomes the teacher's trace. No model, no network.
- ``openai``: any OpenAI-compatible chat-completions endpoint (``--base-url``, ``--model``); the key comes
  from ``MATHDISTILL_API_KEY`` or ``OPENAI_API_KEY`` only, never from a flag or a file.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field

from .config import StageConfig
from .errors import PartialRun, UserError
from .io import Tally, read_jsonl, write_json, write_jsonl
from .progress import bar, info
from .prompts import instruction_for, messages
from .records import Problem, Trace

KEY_VARS = ("MATHDISTILL_API_KEY", "OPENAI_API_KEY")


class GenerateConfig(StageConfig):
    """Which teacher writes the traces, and how it is sampled."""

    backend: Literal["reference", "openai"] = Field("reference", description="teacher backend")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="model name at the endpoint")
    samples: int = Field(1, ge=1, description="samples per problem")
    temperature: float = Field(0.6, ge=0, description="sampling temperature (openai backend)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling (openai backend)")
    max_tokens: int = Field(4096, ge=1, description="completion token limit per call")
    seed: int | None = Field(None, description="sampling seed passed to the endpoint")
    concurrency: int = Field(16, ge=1, description="calls in flight at once")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout, seconds")
    max_retries: int = Field(5, ge=0, description="retries per call on 429/5xx/timeouts")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields passed through")


_THINK = re.compile(r"<think>(.*?)</think>", re.S | re.I)


def split_think(text: str | None) -> tuple[str | None, str]:
    """Inline ``<think>...</think>`` -> (reasoning, visible content). Also an unclosed leading ``<think>``
    (all of it is reasoning) and a stray ``</think>`` (what precedes it is reasoning)."""
    text = text or ""
    parts = _THINK.findall(text)
    rest = _THINK.sub("", text)
    low = rest.lower()
    if "</think>" in low:
        i = low.rfind("</think>")
        parts.append(rest[:i])
        rest = rest[i + len("</think>"):]
    elif low.lstrip().startswith("<think>"):
        parts.append(rest.lstrip()[len("<think>"):])
        rest = ""
    reasoning = "\n".join(p.strip() for p in parts if p.strip()) or None
    return reasoning, rest.strip()


def reference_traces(probs: Iterable[Problem], tally: Tally) -> list[Trace]:
    out = []
    for p in probs:
        chain = (p.meta or {}).get("reference_cot")
        if not chain:
            tally.add("no_reference_chain", p.id)
            continue
        reasoning, content = split_think(chain)
        out.append(Trace(problem_id=p.id, teacher="reference", sample=0, reasoning=reasoning, content=content,
                         finish_reason="stop"))
    return out


def api_key() -> str | None:
    for var in KEY_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


async def _openai_traces(cfg: GenerateConfig, probs: list[Problem], tally: Tally) -> list[Trace]:
    from openai import AsyncOpenAI, OpenAIError

    client = AsyncOpenAI(base_url=cfg.base_url, api_key=api_key() or "EMPTY", timeout=cfg.timeout_s,
                         max_retries=cfg.max_retries)
    sem = asyncio.Semaphore(cfg.concurrency)
    traces: list[Trace] = []

    async def one(p: Problem, k: int, b) -> None:
        async with sem:
            t0 = time.monotonic()
            try:
                r = await client.chat.completions.create(
                    model=cfg.model, messages=messages(instruction_for(p.lang), p.question),
                    temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                    seed=None if cfg.seed is None else cfg.seed + k, extra_body=cfg.extra_body or None)
            except OpenAIError as e:
                tally.add(f"failed: {type(e).__name__}", f"{p.id}#{k}: {str(e)[:120]}")
                b.advance()
                return
            choice = r.choices[0]
            msg = choice.message
            reasoning = getattr(msg, "reasoning_content", None) or (msg.model_extra or {}).get("reasoning_content")
            inline_reasoning, content = split_think(msg.content)
            traces.append(Trace(
                problem_id=p.id, teacher=cfg.model or "openai", sample=k,
                reasoning="\n".join(x for x in (reasoning, inline_reasoning) if x) or None, content=content,
                finish_reason=choice.finish_reason,
                prompt_tokens=r.usage.prompt_tokens if r.usage else None,
                completion_tokens=r.usage.completion_tokens if r.usage else None,
                latency_s=round(time.monotonic() - t0, 4)))
            b.advance()

    with bar("generate", total=len(probs) * cfg.samples, unit="call") as b:
        await asyncio.gather(*(one(p, k, b) for p in probs for k in range(cfg.samples)))
    await client.close()
    order = {p.id: i for i, p in enumerate(probs)}
    return sorted(traces, key=lambda t: (order[t.problem_id], t.sample))


def generate(cfg: GenerateConfig, problems_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``traces.jsonl`` for the problems in ``problems_path``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs = [Problem.model_validate(r) for r in read_jsonl(problems_path)]
    tally = Tally()
    if cfg.backend == "reference":
        traces = reference_traces(probs, tally)
    elif cfg.backend == "openai":
        if not cfg.base_url or not cfg.model:
            raise UserError("generate --backend openai needs --base-url URL and --model NAME")
        traces = asyncio.run(_openai_traces(cfg, probs, tally))
    else:  # pragma: no cover - pydantic restricts the values
        raise UserError(f"unknown backend {cfg.backend!r}")
    write_jsonl(out / "traces.jsonl", traces)
    summary = {"problems": len(probs), "traces": len(traces), "backend": cfg.backend, "skipped": tally.to_dict(),
               "config": cfg.model_dump(mode="json")}
    write_json(out / "generate_summary.json", summary)
    info(f"generate: {len(traces)} traces from {len(probs)} problems ({cfg.backend})"
         + (f"; skipped {tally.total()}: {', '.join(f'{k} {v}' for k, v in tally.counts.items())}" if tally.total() else ""))
    failed = sum(v for k, v in tally.counts.items() if k.startswith("failed"))
    if failed:
        raise PartialRun(f"generate: {failed} calls failed for good (see {out / 'generate_summary.json'}); rerun to retry them")
    return summary
