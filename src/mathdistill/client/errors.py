"""What a failed try means: retry it, change the request, fall back to one call per sample, or stop the run.

Error bodies differ by server; the kinds below are matched on the wording real endpoints send (OpenAI,
vLLM, SGLang, DeepSeek, OpenRouter, Anthropic's OpenAI-compatible API):

- ``quota``: the account is out of money, not rate-limited: a 429 ``insufficient_quota`` ("You exceeded
  your current quota"), DeepSeek's 402 "Insufficient Balance", OpenRouter's 402 "Insufficient credits" /
  "can only afford", "credit balance is too low". Retrying cannot help; the run stops at the first one.
- ``max_completion_tokens``: a 400 naming ``max_tokens`` and asking for ``max_completion_tokens`` (OpenAI
  o-series, GPT-5 class). The request is sent again with that field.
- ``context``: a 400 saying prompt + completion exceed the model's context (numbers parsed when given).
- ``n``: a 400 about the ``n`` parameter: only then do samples fall back to one call each.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

RETRYABLE_STATUS = (408, 409, 429)  # plus every 5xx; other 4xx are the request's fault and are not retried
DETAIL_CHARS = 300  # how much of an error body a failure keeps

_QUOTA = re.compile(
    r"insufficient_quota|exceeded your current quota|insufficient[ _](?:balance|credits?|funds)|"
    r"credit balance is too low|billing_hard_limit|billing_not_active|requires more credits|can only afford|"
    r"more credits are required|out of credits|payment required", re.I)
_MAX_COMPLETION = re.compile(r"max_completion_tokens", re.I)
_N_PARAM = re.compile(
    r"""(?<![\w'"`])(?:['"`]n['"`]|n(?=\s*(?:[=<>:]|must\b|is\b|should\b|only\b|can(?:not|'t)?\b|"""
    r"""value\b|parameter\b|param\b|greater\b))|(?<=the )n(?= (?:parameter|param|field)\b))""")
_CONTEXT = re.compile(r"context[ _](?:length|size|window)|maximum context|too long to fit|prompt is too long|"
                      r"exceeds? (?:the )?(?:model'?s? )?(?:max(?:imum)? )?(?:context|model length)|"
                      r"max_new_tokens`? must be <=", re.I)
_LIMIT = (r"context length(?: is| of|:)? \(?(\d+)", r"context window(?: is| of|:)? (\d+)", r"max_model_len\D{0,8}(\d+)",
          r"n_ctx=(\d+)", r"must be <= (\d+)")
_PROMPT = (r"(\d+) (?:tokens )?in the messages", r"(\d+) input tokens", r"(\d+) tokens from the input",
           r"messages resulted in (\d+)", r"prompt \(total length (\d+)\)", r"input length \(?(\d+)",
           r"(\d+) of text input", r"prompt (?:is |has )?(\d+) tokens", r"prompt is too long: (\d+)",
           r"n_prompt_tokens=(\d+)", r"(\d+) `inputs` tokens")
_REQUESTED = (r"you requested (?:about )?(\d+) tokens", r"a total of (\d+) tokens")
_COMPLETION = (r"(\d+) (?:tokens )?in the completion", r"(\d+) tokens for the completion", r"is too large: (\d+)",
               r"(\d+) `max_new_tokens`")


@dataclass
class Context:
    """Numbers of a context-length error, each None when the server did not say."""

    limit: int | None = None
    prompt: int | None = None
    completion: int | None = None
    requested: int | None = None  # prompt + completion, when only the sum is given

    def prompt_tokens(self, max_tokens: int) -> int | None:
        """The prompt's tokens: given, or the requested total less the completion limit sent."""
        if self.prompt is not None:
            return self.prompt
        if self.requested is not None:
            return self.requested - (self.completion if self.completion is not None else max_tokens)
        return None

    def max_tokens_would_help(self, max_tokens: int) -> bool:
        """True when the prompt fits the context and the completion limit is what overflows it; False when
        the prompt alone is too long or the numbers are not given (then only this call fails)."""
        p = self.prompt_tokens(max_tokens)
        return self.limit is not None and p is not None and p < self.limit


@dataclass
class Fail:
    """One failed try: ``reason`` names it in results and ``failures.jsonl``; ``kind`` says what to do."""

    reason: str  # timeout | connection | bad_body | no_answer | context_length | http_<status>
    detail: str
    status: int | None = None
    retry_after: float | None = None
    fatal: bool = False  # the endpoint could not be reached at all
    kind: str | None = None  # quota | max_completion_tokens | context | n (see the module docstring)
    context: Context | None = None

    @property
    def retryable(self) -> bool:
        if self.kind in ("quota", "context"):
            return False
        if self.status is None:
            return True  # timeout, connection, bad_body, no_answer
        return self.status in RETRYABLE_STATUS or self.status >= 500


def _first(patterns: tuple[str, ...], text: str) -> int | None:
    for p in patterns:
        m = re.search(p, text, re.I)
        if m:
            return int(m.group(1))
    return None


def error_fields(body: bytes) -> tuple[str, str]:
    """(message, everything) of an error body: ``error.message`` (or the body) and the message with
    ``type``, ``code`` and ``param`` appended, which the kinds are matched on."""
    try:
        d = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text, text
    err: Any = d.get("error", d) if isinstance(d, dict) else d
    if isinstance(err, dict) and isinstance(err.get("error"), dict):  # OpenRouter nests it once more
        err = err["error"]
    if isinstance(err, dict):
        msg = err.get("message") or err.get("msg") or err.get("detail")
        msg = str(msg if msg else d).strip()
        extra = " ".join(f"{k}={err[k]}" for k in ("type", "code", "param", "n_prompt_tokens", "n_ctx")
                         if err.get(k) not in (None, ""))  # n_*: llama.cpp's server
        return msg, f"{msg} {extra}".strip()
    text = str(err).strip()
    return text, text


def classify(status: int, body: bytes, retry_after: float | None) -> Fail:
    """A non-2xx answer -> :class:`Fail` with its ``kind`` (None: plain retry / give-up rules apply)."""
    msg, full = error_fields(body)
    f = Fail(f"http_{status}", msg[:DETAIL_CHARS], status, retry_after)
    param = re.search(r"param=(\S+)", full)
    if status == 402 or (status in (400, 403, 429) and _QUOTA.search(full)):
        f.kind = "quota"
    elif status in (400, 413, 422) and (_CONTEXT.search(full) or "context_length_exceeded" in full):
        f.kind = "context"  # before max_completion_tokens: vLLM's says "'max_tokens' or 'max_completion_tokens' is too large"
        f.reason = "context_length"
        f.context = Context(_first(_LIMIT, full), _first(_PROMPT, full), _first(_COMPLETION, full),
                            _first(_REQUESTED, full))
    elif status in (400, 422) and _MAX_COMPLETION.search(full) and "max_tokens" in full:
        f.kind = "max_completion_tokens"
    elif status in (400, 422) and ((param and param.group(1).strip("'\"") == "n") or _N_PARAM.search(msg)):
        f.kind = "n"
    return f
