"""A fault-injecting OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib asyncio, no framework).

Tests start it in a thread and stop it; benchmarks run it as its own process::

    with FakeOpenAI(faults={"q7": ["429:1", "500"]}, reasoning="field") as srv:
        srv.base_url           # http://127.0.0.1:PORT/v1, a free port
        srv.log                # every request, in arrival order (Call records)

    python tests/fake_openai.py [--delay 0] [--reasoning field]   # prints "PORT <n>", serves until killed

Faults are tokens consumed in order by the requests whose last user message contains the fault's key
(the key ``"*"`` matches every request; specific keys are tried first). Once a list is used up, requests
are answered normally. Tokens:

    ok        a normal answer
    429       HTTP 429 without Retry-After;  429:S  with ``Retry-After: S`` (seconds)
    500, 503, 400, 401, 404, 408, 409 ...   that status with an OpenAI-style error body
    hang      never answer (until the client gives up and disconnects)
    garbled   HTTP 200 with a body that is not JSON
    nochoices HTTP 200 with JSON that has no ``choices``
    drop      close the connection without answering
    gzip      a normal answer, gzip-compressed (``content-encoding: gzip``) though nobody asked for it
    abort_last  a normal answer whose last choice has ``finish_reason: abort`` and no content (not paid)
    NAME      a body real endpoints send, from ``CANNED`` (status + body): quota (``quota_openai``,
              ``quota_deepseek``, ``quota_openrouter``, ...), ``n_*`` refusals of ``n``, ``maxtok_*``
              refusals of ``max_tokens``, ``ctx_*`` context-length errors, and 200s that are not an answer
              (``abort_sglang``, ``error_openrouter``, ``empty_choices``, ``no_message``, ``error_200``)

Answers: ``reasoning`` is ``"field"`` (``message.reasoning_content``), ``"inline"`` (``<think>…</think>``
before the answer in ``content``) or ``"none"``. ``n_support``: ``"yes"`` (``n`` choices), ``"ignore"``
(always one choice) or ``"reject"`` (HTTP 400 when ``n`` > 1, body ``n_reject``, a CANNED name).

Whole-server modes, as real teachers behave: ``token_param="max_completion_tokens"`` answers every request
that sends ``max_tokens`` with OpenAI's 400 for reasoning models; ``context_len=N`` answers a request whose
prompt (words) + ``max_tokens`` exceed N with a 400 worded as ``context_style`` (``vllm``, ``vllm_new``,
``sglang``, ``openai``); ``completion_tokens=K`` reports K completion tokens per choice and
``tokens_per_s=R`` delays each answer by K / R seconds (a paid endpoint's generation speed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
           409: "Conflict", 422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def _err(message: str, type_: str | None = "invalid_request_error", param: str | None = None,
         code: Any = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


def _choice(finish: str, content: str | None = "", **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish, **extra}]}


# Bodies real endpoints send (wording from public bug reports of each), by fault token.
CANNED: dict[str, tuple[int, dict[str, Any]]] = {
    # quota / billing: not a rate limit
    "quota_openai": (429, _err("You exceeded your current quota, please check your plan and billing details. For "
                               "more information on this error, read the docs: https://platform.openai.com/docs/"
                               "guides/error-codes/api-errors.", "insufficient_quota", None, "insufficient_quota")),
    "quota_openai_old": (429, _err("You exceeded your current quota, please check your plan and billing details.",
                                   "insufficient_quota")),
    "quota_deepseek": (402, _err("Insufficient Balance", "unknown_error", None, "invalid_request_error")),
    "quota_openrouter": (402, {"error": {"message": "Insufficient credits. Add more using https://openrouter.ai/"
                                                    "settings/credits", "code": 402}}),
    "quota_openrouter_afford": (402, {"error": {"message": "This request requires more credits, or fewer max_tokens. "
                                                           "You requested up to 16384 tokens, but can only afford "
                                                           "3919. To increase, visit https://openrouter.ai/settings/"
                                                           "credits and add more credits", "code": 402}}),
    "quota_anthropic": (400, {"type": "error", "error": {"type": "invalid_request_error", "message": "Your credit "
                              "balance is too low to access the Anthropic API. Please go to Plans & Billing to "
                              "upgrade or purchase credits."}}),
    # a plain rate limit, for contrast: retried
    "ratelimit_openai": (429, _err("Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): "
                                   "Limit 500, Used 500, Requested 1.", "requests", None, "rate_limit_exceeded")),
    # max_tokens refused by reasoning models
    "maxtok_openai": (400, _err("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                                "'max_completion_tokens' instead.", "invalid_request_error", "max_tokens",
                                "unsupported_parameter")),
    "maxtok_azure": (400, _err("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                               "'max_completion_tokens' instead.", None, None, "invalid_request_body")),
    # n refused
    "n_reject": (400, _err("Invalid 'n': only n=1 is supported by this model.", "invalid_request_error", "n",
                           "unsupported_value")),
    "n_mlx": (400, {"detail": "n must equal 1 (multi-choice is not supported)"}),
    "n_gateway": (400, _err("Model m with provider p does not support the n parameter for multiple choices. Send n "
                            "separate requests instead.")),
    # context length, prompt alone too long (per-sample failure: a shorter --max-tokens cannot help)
    "ctx_prompt_openai": (400, _err("This model's maximum context length is 8192 tokens. However, your messages "
                                    "resulted in 9000 tokens. Please reduce the length of the messages.",
                                    "invalid_request_error", "messages", "context_length_exceeded")),
    "ctx_prompt_vllm": (400, {"object": "error", "message": "The prompt (total length 5000) is too long to fit into "
                              "the model (context length 4096). Make sure that `max_model_len` is no smaller than "
                              "the number of text tokens.", "type": "BadRequestError", "param": None, "code": 400}),
    # other 4xx with no kind: not retried, not n-fallback
    "bad_temperature": (400, _err("Invalid 'temperature': decimal above maximum value.", "invalid_request_error",
                                  "temperature", "decimal_above_max_value")),
    # 200s that are not an answer
    "abort_sglang": (200, _choice("abort", "", matched_stop=None)),
    "error_openrouter": (200, _choice("error", "", error={"message": "Provider returned error", "code": 502})),
    "empty_choices": (200, {"id": "chatcmpl-x", "object": "chat.completion", "choices": []}),
    "no_message": (200, {"id": "chatcmpl-x", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "stop"}]}),
    "error_200": (200, {"error": {"message": "Upstream error from provider", "code": 502}}),
}

CONTEXT_STYLES = {  # (limit, prompt, completion) -> message, as each server words it
    "vllm": lambda lim, p, c: (f"This model's maximum context length is {lim} tokens. However, you requested "
                               f"{p + c} tokens ({p} in the messages, {c} in the completion). Please reduce the "
                               f"length of the messages or completion."),
    "vllm_new": lambda lim, p, c: (f"'max_tokens' or 'max_completion_tokens' is too large: {c}. This model's maximum "
                                   f"context length is {lim} tokens and your request has {p} input tokens "
                                   f"({c} > {lim} - {p})."),
    "sglang": lambda lim, p, c: (f"Requested token count exceeds the model's maximum context length of {lim} tokens. "
                                 f"You requested a total of {p + c} tokens: {p} tokens from the input messages and "
                                 f"{c} tokens for the completion. Please reduce the number of tokens in the input "
                                 f"messages or the completion to fit within the limit."),
    "openai": lambda lim, p, c: (f"This model's maximum context length is {lim} tokens. However, you requested "
                                 f"{p + c} tokens ({p} in the messages, {c} in the completion). Please reduce the "
                                 f"length of the messages or completion."),
}


@dataclass
class Call:
    t: float  # time.monotonic() at arrival
    path: str
    body: dict[str, Any] | None
    authorization: str | None  # the Authorization header as received
    outcome: str  # the fault token that answered it ("ok" for a normal answer)
    choices: int = 0  # completions in the answer (what the caller pays for)

    @property
    def question(self) -> str:
        msgs = (self.body or {}).get("messages") or [{}]
        return str(msgs[-1].get("content", ""))


@dataclass
class FakeOpenAI:
    faults: dict[str, list[str]] = field(default_factory=dict)
    reasoning: str = "field"  # field | inline | none
    n_support: str = "yes"  # yes | ignore | reject
    delay_s: float = 0.0  # added before every normal answer
    hang_s: float = 3600.0  # how long "hang" waits before it gives up itself
    usage: bool = True  # include the usage block in answers
    token_param: str = "max_tokens"  # max_completion_tokens: refuse max_tokens like OpenAI reasoning models
    context_len: int | None = None  # refuse prompt words + max_tokens above this, worded as context_style
    context_style: str = "vllm"
    completion_tokens: int | None = None  # report this many completion tokens per choice
    tokens_per_s: float | None = None  # with completion_tokens: delay each answer by completion_tokens / this
    port: int = 0  # 0: a free port
    log: list[Call] = field(default_factory=list)
    connections: int = 0  # TCP connections accepted so far (a keep-alive client reuses them)

    def __post_init__(self):
        self._faults = {k: list(v) for k, v in self.faults.items()}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ---- lifecycle -------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAI":
        self._thread = threading.Thread(target=self._serve_thread, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._thread:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve_thread(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        server = loop.run_until_complete(self.serve())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def serve(self) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", self.port, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        return server

    # ---- what tests read -------------------------------------------------------------------------------
    def calls(self, contains: str = "") -> list[Call]:
        return [c for c in list(self.log) if contains in c.question]

    def paid(self, contains: str = "") -> int:
        """Completions answered (what a caller pays for) to questions that contain ``contains``."""
        return sum(c.choices for c in self.calls(contains) if c.outcome == "ok")

    # ---- behaviour -------------------------------------------------------------------------------------
    def next_fault(self, question: str) -> str:
        with self._lock:
            for key, queue in self._faults.items():
                if key != "*" and key in question and queue:
                    return queue.pop(0)
            star = self._faults.get("*")
            if star:
                return star.pop(0)
        return "ok"

    @staticmethod
    def prompt_tokens(body: dict[str, Any]) -> int:
        return sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [{}])

    def refusal(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """The whole-server modes' 400s for this request body, or None."""
        if self.token_param == "max_completion_tokens" and "max_tokens" in body:
            return CANNED["maxtok_openai"]
        limit = self.context_len
        want = body.get("max_tokens", body.get("max_completion_tokens")) or 0
        if limit is not None and self.prompt_tokens(body) + want > limit:
            msg = CONTEXT_STYLES[self.context_style](limit, self.prompt_tokens(body), want)
            if self.context_style == "openai":
                return 400, _err(msg, "invalid_request_error", "messages", "context_length_exceeded")
            return 400, {"object": "error", "message": msg, "type": "BadRequestError", "param": None, "code": 400}
        if int(body.get("n") or 1) > 1 and self.n_support == "reject":
            return CANNED["n_reject"]
        return None

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        msgs = body.get("messages") or [{}]
        q = str(msgs[-1].get("content", ""))
        n = int(body.get("n") or 1)
        if self.n_support == "ignore":
            n = 1
        seed = body.get("seed")
        choices = []
        for i in range(n):
            think = f"Let me think about: {q}"
            answer = f"Final answer for {q} (seed {seed}, choice {i}): \\boxed{{42}}"
            msg: dict[str, Any] = {"role": "assistant", "content": answer}
            if self.reasoning == "field":
                msg["reasoning_content"] = think
            elif self.reasoning == "inline":
                msg["content"] = f"<think>{think}</think>\n\n{answer}"
            choices.append({"index": i, "message": msg, "finish_reason": "stop"})
        prompt_tokens = self.prompt_tokens(body)
        completion = (self.completion_tokens * len(choices) if self.completion_tokens is not None
                      else sum(len(c["message"]["content"].split()) for c in choices))
        out = {"id": f"chatcmpl-{len(self.log)}", "object": "chat.completion", "created": int(time.time()),
               "model": body.get("model"), "choices": choices}
        if self.usage:
            out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                            "total_tokens": prompt_tokens + completion}
        return out


def _response(status: int, body: bytes, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'OK' if status == 200 else 'Error')}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n")
    return head.encode("latin-1") + body


def _canned(status: int, body: dict[str, Any]) -> bytes:
    return _response(status, json.dumps(body).encode())


def _error(status: int, extra: str = "") -> bytes:
    body = json.dumps({"error": {"message": f"injected {status}", "type": "fake", "code": status}}).encode()
    return _response(status, body, extra)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order (clients do not pipeline)."""

    def __init__(self, srv: FakeOpenAI):
        self.srv = srv
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.srv.connections += 1

    def connection_lost(self, exc) -> None:
        if self.busy:
            self.busy.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            size = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + size:
                return
            raw = bytes(self.buf[end + 4:end + 4 + size])
            del self.buf[:end + 4 + size]
            parts = head[0].split(" ")
            path = parts[1] if len(parts) > 1 else "/"
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            call = Call(time.monotonic(), path, body if isinstance(body, dict) else None,
                        headers.get("authorization"), "ok")
            if not path.split("?")[0].rstrip("/").endswith("/chat/completions") or call.body is None:
                call.outcome = "404" if call.body is not None else "400"
                self.srv.log.append(call)
                self.transport.write(_error(int(call.outcome)))
                continue
            call.outcome = self.srv.next_fault(call.question)
            self.srv.log.append(call)
            if call.outcome in CANNED:
                self.transport.write(_canned(*CANNED[call.outcome]))
                continue
            if call.outcome == "ok" and not self.srv.delay_s and not self.srv.tokens_per_s:
                self.transport.write(self._ok(call))  # fast path: no task per request
                continue
            self.busy = asyncio.get_running_loop().create_task(self._slow(call))
            return

    def _ok(self, call: Call) -> bytes:
        refused = self.srv.refusal(call.body)
        if refused is not None:
            call.outcome = str(refused[0])
            return _canned(*refused)
        answer = self.srv.answer(call.body)
        call.choices = len(answer["choices"])
        return _response(200, json.dumps(answer).encode())

    async def _slow(self, call: Call) -> None:
        tok = call.outcome
        t = self.transport
        if tok == "ok":
            srv = self.srv
            gen = (srv.completion_tokens / srv.tokens_per_s if srv.tokens_per_s and srv.completion_tokens
                   and srv.refusal(call.body) is None else 0.0)
            await asyncio.sleep(srv.delay_s + gen)
            out = self._ok(call)
        elif tok == "hang":
            await asyncio.sleep(self.srv.hang_s)
            out = _error(504)
        elif tok == "garbled":
            out = _response(200, b'{"id": "chatcmpl-x", "choices": [{"mess')
        elif tok == "nochoices":
            out = _response(200, b'{"id": "chatcmpl-x", "object": "chat.completion"}')
        elif tok == "gzip":
            import gzip

            call.outcome = "ok"
            answer = self.srv.answer(call.body)
            call.choices = len(answer["choices"])
            out = _response(200, gzip.compress(json.dumps(answer).encode()), "content-encoding: gzip\r\n")
        elif tok == "abort_last":  # an n= answer whose last choice aborted (SGLang): the others are answers
            call.outcome = "ok"
            answer = self.srv.answer(call.body)
            last = answer["choices"][-1]
            last["finish_reason"], last["message"]["content"] = "abort", ""
            last["message"].pop("reasoning_content", None)
            call.choices = len(answer["choices"]) - 1
            out = _response(200, json.dumps(answer).encode())
        elif tok == "drop":
            t.abort()
            return
        else:
            status, _, after = tok.partition(":")
            out = _error(int(status), f"retry-after: {after}\r\n" if after else "")
        if self.transport is t and t is not None:
            t.write(out)
        self.busy = None
        self._next()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fake OpenAI-compatible server on 127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    ap.add_argument("--reasoning", default="field", choices=["field", "inline", "none"])
    a = ap.parse_args(argv)
    srv = FakeOpenAI(reasoning=a.reasoning, delay_s=a.delay, port=a.port)

    async def run() -> None:
        await srv.serve()
        print(f"PORT {srv.port}", flush=True)
        srv.log = _NoLog()  # a long benchmark would otherwise keep every request in memory
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


class _NoLog(list):
    def append(self, item) -> None:  # noqa: D102 - the standalone server keeps no log
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
