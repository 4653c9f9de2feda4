"""An OpenAI-compatible chat-completions client for teachers, judges and endpoint evals.

One place for the endpoint machinery that ``generate`` (teacher traces), ``eval --backend openai`` and the
CQS judge share: concurrency, retries, and (issue 3) the SQLite cache of every call.

Public API (other modules call only this)::

    ChatRequest(messages, key=..., sample=0)          # one call; ``key`` names it in results (e.g. problem id)
    ChatClientConfig(base_url=..., model=..., ...)     # endpoint + sampling + limits
    results = run_requests(cfg, requests, cache_path=None, desc="generate")   # list[ChatResult], request order

The API key is read from ``MATHDISTILL_API_KEY`` or ``OPENAI_API_KEY`` only, and never written anywhere.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from .config import StageConfig
from .progress import bar

KEY_VARS = ("MATHDISTILL_API_KEY", "OPENAI_API_KEY")


def api_key() -> str | None:
    for var in KEY_VARS:
        if os.environ.get(var):
            return os.environ[var]
    return None


class ChatClientConfig(StageConfig):
    """An OpenAI-compatible endpoint and how to sample from it."""

    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    model: str | None = Field(None, description="model name at the endpoint")
    temperature: float = Field(0.6, ge=0, description="sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(4096, ge=1, description="completion token limit per call")
    seed: int | None = Field(None, description="sampling seed passed to the endpoint (+ sample index)")
    concurrency: int = Field(16, ge=1, description="calls in flight at once")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout, seconds")
    max_retries: int = Field(5, ge=0, description="retries per call on 429/5xx/timeouts")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields passed through")


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    key: str = ""  # caller's name for this request (problem id), echoed in the result
    sample: int = 0  # sample index: part of the cache key, offsets the seed


@dataclass
class ChatResult:
    request: ChatRequest
    content: str = ""
    reasoning: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    error: str | None = None  # set when the call failed for good; the reason
    cached: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


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


async def _run(cfg: ChatClientConfig, requests: list[ChatRequest], desc: str) -> list[ChatResult]:
    from openai import AsyncOpenAI, OpenAIError

    client = AsyncOpenAI(base_url=cfg.base_url, api_key=api_key() or "EMPTY", timeout=cfg.timeout_s,
                         max_retries=cfg.max_retries)
    sem = asyncio.Semaphore(cfg.concurrency)
    results: list[ChatResult | None] = [None] * len(requests)

    async def one(i: int, req: ChatRequest, b) -> None:
        async with sem:
            t0 = time.monotonic()
            try:
                r = await client.chat.completions.create(
                    model=cfg.model, messages=req.messages, temperature=cfg.temperature, top_p=cfg.top_p,
                    max_tokens=cfg.max_tokens, seed=None if cfg.seed is None else cfg.seed + req.sample,
                    extra_body=cfg.extra_body or None)
            except OpenAIError as e:
                results[i] = ChatResult(req, error=f"{type(e).__name__}: {str(e)[:200]}")
                b.advance()
                return
            choice = r.choices[0]
            msg = choice.message
            rc = getattr(msg, "reasoning_content", None) or (msg.model_extra or {}).get("reasoning_content")
            inline, content = split_think(msg.content)
            results[i] = ChatResult(
                req, content=content, reasoning="\n".join(x for x in (rc, inline) if x) or None,
                finish_reason=choice.finish_reason,
                prompt_tokens=r.usage.prompt_tokens if r.usage else None,
                completion_tokens=r.usage.completion_tokens if r.usage else None,
                latency_s=round(time.monotonic() - t0, 4))
            b.advance()

    try:
        with bar(desc, total=len(requests), unit="call") as b:
            await asyncio.gather(*(one(i, r, b) for i, r in enumerate(requests)))
    finally:
        await client.close()
    return results  # type: ignore[return-value]


def run_requests(cfg: ChatClientConfig, requests: list[ChatRequest], cache_path: str | Path | None = None,
                 desc: str = "calls") -> list[ChatResult]:
    """Send every request (bounded concurrency, retries); results in request order, failures carry ``error``.

    ``cache_path``: SQLite file of finished calls (not yet implemented in this minimal client: see issue 3).
    """
    if not cfg.base_url or not cfg.model:
        from .errors import UserError

        raise UserError("an OpenAI-compatible backend needs --base-url URL and --model NAME")
    return asyncio.run(_run(cfg, requests, desc))
