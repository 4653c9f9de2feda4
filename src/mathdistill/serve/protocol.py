"""The OpenAI wire format: request models (validated, extra fields ignored as OpenAI does), typed errors, and
the responses, built from the ``openai`` package's own types (``ChatCompletion``, ``ChatCompletionChunk``,
``Completion``) so that what we send is what the official client parses.

Chat and completions differ only in the shape of a choice; :class:`ChatShape` and :class:`TextShape` build
each one's stream chunks and whole response, and :mod:`mathdistill.serve.app` drives both the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from openai.types import Completion, CompletionChoice, CompletionUsage, ErrorObject
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as ChatChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice, ChoiceDelta
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class APIError(Exception):
    """An error answered in OpenAI's JSON shape ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": dump(ErrorObject(message=self.message, type=self.type, param=self.param, code=self.code))}


# ------------------------------------------------------------------------------------------ request schemas


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class SamplingBody(BaseModel):
    """Fields both endpoints honour; anything else a client sends is ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None  # not checked: the server has one model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens (benchmarks)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatBody(SamplingBody):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionBody(SamplingBody):
    prompt: str | list[str]


@dataclass(frozen=True)
class Sampling:
    """One request's generation settings, as the engine applies them to each of its ``n`` rows."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    ignore_eos: bool = False


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def parse_body(model: type[BaseModel], data: Any) -> Any:
    """``data`` validated as ``model``; :class:`APIError` 400 naming the first bad field otherwise."""
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        path = []
        for x in err["loc"]:
            if isinstance(x, str) and not x.isidentifier() or x in _TYPE_TAGS:
                break  # pydantic names the union member it tried ("str", "list[_Part]"): not a field
            path.append(str(x))
        loc = ".".join(path)
        got = f" (got {json.dumps(err['input'])[:80]})" if err["type"] != "missing" and "input" in err else ""
        raise APIError(400, f"{loc}: {err['msg']}{got}", param=loc or None) from None


# ---------------------------------------------------------------------------------------------- responses


def usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                           total_tokens=prompt_tokens + completion_tokens)


def dump(obj: BaseModel) -> dict[str, Any]:
    """The JSON body of a response object: the fields we set (explicit ``None`` included), as OpenAI sends them."""
    return obj.model_dump(mode="json", exclude_unset=True)


class ChatShape:
    """``/v1/chat/completions``: chunks carry a ``delta``; the first chunk of each choice names the role."""

    prefix = "chatcmpl"

    def __init__(self, rid: str, created: int, model: str, fingerprint: str, include_usage: bool = False):
        self.head = {"id": rid, "created": created, "model": model, "system_fingerprint": fingerprint}
        self.extra = {"usage": None} if include_usage else {}

    def _chunk(self, choices: list[ChunkChoice], **kw: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(**self.head, object="chat.completion.chunk", choices=choices, **(kw or self.extra))

    def opening(self, n: int) -> list[ChatCompletionChunk]:
        return [self._chunk([ChunkChoice(index=i, delta=ChoiceDelta(role="assistant", content=""), logprobs=None,
                                         finish_reason=None)]) for i in range(n)]

    def delta(self, index: int, text: str) -> ChatCompletionChunk:
        return self._chunk([ChunkChoice(index=index, delta=ChoiceDelta(content=text), logprobs=None, finish_reason=None)])

    def finish(self, index: int, reason: str) -> ChatCompletionChunk:
        return self._chunk([ChunkChoice(index=index, delta=ChoiceDelta(), logprobs=None, finish_reason=reason)])

    def usage_chunk(self, u: CompletionUsage) -> ChatCompletionChunk:
        return self._chunk([], usage=u)

    def whole(self, texts: list[str], reasons: list[str], u: CompletionUsage) -> ChatCompletion:
        return ChatCompletion(**self.head, object="chat.completion", usage=u, choices=[
            ChatChoice(index=i, message=ChatCompletionMessage(role="assistant", content=t), logprobs=None, finish_reason=r)
            for i, (t, r) in enumerate(zip(texts, reasons))])


class TextShape(ChatShape):
    """``/v1/completions``: every chunk is a ``text_completion`` with a ``text`` piece; no opening chunks."""

    prefix = "cmpl"

    def _chunk(self, choices: list[CompletionChoice], **kw: Any) -> Completion:  # type: ignore[override]
        return Completion(**self.head, object="text_completion", choices=choices, **(kw or self.extra))

    def opening(self, n: int) -> list[Completion]:  # type: ignore[override]
        return []

    def delta(self, index: int, text: str) -> Completion:  # type: ignore[override]
        # a streamed piece has finish_reason null, which the type (written for whole responses) does not allow
        return self._chunk([CompletionChoice.model_construct(index=index, text=text, logprobs=None, finish_reason=None)])

    def finish(self, index: int, reason: str) -> Completion:  # type: ignore[override]
        return self._chunk([CompletionChoice(index=index, text="", logprobs=None, finish_reason=reason)])  # type: ignore[arg-type]

    def whole(self, texts: list[str], reasons: list[str], u: CompletionUsage) -> Completion:  # type: ignore[override]
        return Completion(**self.head, object="text_completion", usage=u, choices=[
            CompletionChoice(index=i, text=t, logprobs=None, finish_reason=r) for i, (t, r) in enumerate(zip(texts, reasons))])
