"""What the caller hands the client and gets back: the endpoint config, one request, one result, run stats."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from ..config import StageConfig

KEY_VARS = ("MATHDISTILL_API_KEY", "OPENAI_API_KEY")
RESERVED_BODY_KEYS = ("model", "messages", "n", "stream")  # set by the client itself, not by --extra-body
RATE_MIN_CALLS = 5  # finished calls with usage before the observed token rate is trusted for a warning
TIMEOUT_MARGIN = 1.25  # a full-length answer should fit in --timeout with this much room


def api_key() -> str | None:
    """The API key from ``MATHDISTILL_API_KEY`` or ``OPENAI_API_KEY`` (in that order), or None."""
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
    token_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="request field that carries max_tokens: max_tokens (most servers) or "
        "max_completion_tokens (OpenAI reasoning models); switched for the rest of the run when the endpoint "
        "answers 400 asking for max_completion_tokens")
    seed: int | None = Field(None, description="sampling seed passed to the endpoint (+ sample index)")
    concurrency: int = Field(16, ge=1, description="calls in flight at once")
    rpm: float | None = Field(None, gt=0, description="requests-per-minute limit (none: unlimited)")
    tpm: float | None = Field(None, gt=0, description="tokens-per-minute limit: prompt (estimated, 4 chars/token) "
                              "+ max_tokens per sample are reserved per call, the unused part is returned when "
                              "the endpoint reports usage (none: unlimited)")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout, seconds")
    max_retries: int = Field(5, ge=0, description="retries per call on 429/408/409/5xx, timeouts, dropped "
                             "connections, unparsable bodies and 200s without an answer; then the call is "
                             "recorded as failed")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay, seconds; doubles each retry, with jitter")
    backoff_max_s: float = Field(60.0, ge=0, description="longest retry delay, seconds")
    retry_after_max_s: float = Field(300.0, ge=0, description="longest Retry-After honoured, seconds")
    n_mode: Literal["auto", "n", "separate"] = Field(
        "auto", description="several samples of one prompt: auto (n= in one call, separate calls once the "
        "endpoint refuses n), n (always n=), separate (one call per sample)")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields passed through, "
                                       "a JSON object, e.g. '{\"top_k\": 20}'")

    @field_validator("extra_body", mode="before")
    @classmethod
    def _extra_body_json(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except ValueError as e:
                raise ValueError(f"not valid JSON ({e})") from None
        if not isinstance(v, dict):
            raise ValueError('expected a JSON object, e.g. {"top_k": 20}')
        bad = [k for k in v if k in RESERVED_BODY_KEYS]
        if bad:
            raise ValueError(f"{', '.join(bad)} is set by mathdistill itself (use --model / --samples)")
        return v

    def sampling_params(self) -> dict[str, Any]:
        """The parameters that change what the endpoint answers: part of every cache key (``token_param`` is
        not: both fields ask for the same limit, so a cache filled under one answers the other)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                "seed": self.seed, "extra_body": self.extra_body}


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
    error: str | None = None  # set when the call failed for good: "reason: detail"
    cached: bool = False  # answered from the cache, no call made
    raw: dict[str, Any] = field(default_factory=dict)  # the response choice (fresh calls only)
    reason: str | None = None  # failure reason: timeout | connection | bad_body | no_answer | context_length | http_<status>
    attempts: int = 0  # tries made in this run
    cache_key: str = ""


@dataclass
class RunStats:
    """What a :func:`run_requests` call did; ``generate`` puts it in its summary."""

    requests: int = 0  # results asked for
    cached: int = 0  # answered from the cache
    ok: int = 0  # answered by calls made now
    calls: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    failed: Counter = field(default_factory=Counter)  # by reason
    earlier_failures: int = 0  # results that failed in an earlier run and were tried again now
    prompt_tokens: int = 0  # usage reported for calls made now
    completion_tokens: int = 0
    n_fallback: bool = False  # the endpoint refused n=, samples went out as separate calls
    timeouts: int = 0  # tries that got no answer within timeout_s (retried ones included): possibly billed
    not_answers: int = 0  # tries answered 200 without an answer (finish_reason abort/error, no choices)
    token_param: str | None = None  # set when the run switched to max_completion_tokens after a 400
    seq_tokens: int = 0  # completion tokens per sequence of finished calls that reported usage ...
    seq_seconds: float = 0.0  # ... and their latencies: seq_tokens / seq_seconds is the observed rate
    seq_calls: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["failed"] = dict(sorted(self.failed.items()))
        d["seq_seconds"] = round(self.seq_seconds, 3)
        return d

    @property
    def tokens_per_s(self) -> float | None:
        """Observed completion tokens per second of one sequence (finished calls with usage), or None."""
        return self.seq_tokens / self.seq_seconds if self.seq_calls and self.seq_seconds > 0 else None

    def timeout_warning(self, timeout_s: float, max_tokens: int) -> str | None:
        """One line when a full-length answer (``max_tokens`` at the observed rate) would not finish within
        ``timeout_s``, or when tries timed out; None otherwise."""
        rate = self.tokens_per_s if self.seq_calls >= RATE_MIN_CALLS else None
        need = max_tokens / rate if rate else None
        short = need is not None and need * TIMEOUT_MARGIN > timeout_s
        if not short and not self.timeouts:
            return None
        tries = f"{self.timeouts} {'try' if self.timeouts == 1 else 'tries'}"
        head = f"{tries} timed out (a timed-out call may still be billed); " if self.timeouts else ""
        if need is None:
            return head + f"--timeout {timeout_s:g} s may be short for --max-tokens {max_tokens}"
        if not short:
            return head + (f"--max-tokens {max_tokens} takes ~{need:.0f} s at the observed {rate:.0f} tokens/s, "
                           f"within --timeout {timeout_s:g} s: the endpoint was slow or stalled")
        return head + (f"--timeout {timeout_s:g} s is short for --max-tokens {max_tokens} at the observed "
                       f"{rate:.0f} tokens/s per call (a full-length answer takes ~{need:.0f} s): raise --timeout "
                       f"to {need * TIMEOUT_MARGIN:.0f} or lower --max-tokens")

    def line(self) -> str:
        failed = sum(self.failed.values())
        why = f" ({', '.join(f'{k} {v}' for k, v in sorted(self.failed.items()))})" if failed else ""
        extra = "".join([f", {self.timeouts} timed out" if self.timeouts else "",
                         f", {self.not_answers} not answers" if self.not_answers else ""])
        return (f"{self.ok} answered by {self.calls} calls ({self.retries} retries{extra}), {self.cached} from cache, "
                f"{failed} failed{why}; tokens: {self.prompt_tokens:,} prompt, "
                f"{self.completion_tokens:,} completion; {self.seconds:.1f}s")
