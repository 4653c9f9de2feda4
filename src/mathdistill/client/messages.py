"""Reading what the endpoint says (messages, reasoning, whether a 200 is an answer) and its URL."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import UserError

NOT_ANSWER_FINISH = ("abort", "error")  # SGLang aborts, OpenRouter provider errors: a 200 that is not an answer

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


def parse_message(msg: dict[str, Any]) -> tuple[str | None, str]:
    """A chat message -> (reasoning, content): ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning``
    (newer vLLM, OpenRouter) and inline ``<think>`` both land in reasoning, in that order."""
    content = msg.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    field_r = msg.get("reasoning_content") or msg.get("reasoning")
    inline, visible = split_think(content if isinstance(content, str) else "")
    parts = [x.strip() for x in (field_r if isinstance(field_r, str) else None, inline) if x and x.strip()]
    return ("\n".join(parts) or None), visible


def choice_failed(choice: dict[str, Any]) -> str | None:
    """Why one choice is not an answer (``finish_reason`` ``abort`` from SGLang, ``error`` from OpenRouter),
    or None."""
    fr = choice.get("finish_reason")
    if isinstance(fr, str) and fr.lower() in NOT_ANSWER_FINISH:
        err = choice.get("error") or (choice.get("message") or {}).get("content") or ""
        detail = err.get("message") if isinstance(err, dict) else err
        return f"finish_reason {fr!r}{f' ({str(detail)[:120]})' if detail else ''}"
    return None


def not_an_answer(data: Any) -> str | None:
    """Why a parsed 200 body holds no answer to keep, or None when it holds at least one.

    No answer: no ``choices`` list or an empty one (an ``error`` object in its place, as OpenRouter sends
    for a provider failure), a choice without a ``message`` object, or every choice failed
    (:func:`choice_failed`). Such a call is retried like a failed one, never stored. When only some choices
    of an ``n=`` call failed, the others are kept and the failed samples are asked again."""
    if not isinstance(data, dict):
        return f"the body is a JSON {type(data).__name__}, not an object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        err = data.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        what = "no choices" if choices is None else "empty choices" if choices == [] else "choices is not a list"
        return f"{what}{f' (error: {msg})' if msg else ''}"
    if not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
        return "a choice without a message"
    failed = [choice_failed(c) for c in choices]
    if all(failed):
        return failed[0]
    return None


def endpoint_url(base_url: str) -> str:
    """``.../v1`` -> ``.../v1/chat/completions`` (a full chat-completions URL is kept as is; a query
    string stays at the end)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--base-url {base_url!r} is not an http(s) URL; pass e.g. http://127.0.0.1:8000/v1")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def public_endpoint(base_url: str | None) -> str | None:
    """The base URL as stored in the cache: no user:password, no query string (tokens hide there)."""
    if not base_url:
        return None
    p = urlsplit(base_url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


class Redactor:
    """Replaces the API key by ``***`` in any text that would be written (bodies, error details)."""

    def __init__(self, secret: str | None):
        self.secret = secret if secret and len(secret) >= 4 else None

    def __call__(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret and self.secret in text else text
