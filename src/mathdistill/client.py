"""An OpenAI-compatible chat-completions client for teachers, judges and endpoint evals.

One place for the endpoint machinery that ``generate`` (teacher traces), ``eval --backend openai`` and the
CQS judge share: bounded concurrency, requests- and tokens-per-minute limits, retries with backoff and
jitter, and the SQLite cache of every finished call (:mod:`mathdistill.cache`), so no call is paid twice.

Public API (other modules call only this)::

    ChatRequest(messages, key=..., sample=0)          # one call; ``key`` names it in results (e.g. problem id)
    ChatClientConfig(base_url=..., model=..., ...)     # endpoint + sampling + limits
    results = run_requests(cfg, requests, cache_path=None, desc="generate")   # list[ChatResult], request order

Behaviour, in order of a call's life:

- A request whose cache key (:func:`mathdistill.cache.call_key`: model, messages, sampling parameters,
  sample index) is in the cache is answered from it, without a call. Identical requests are sent once.
- Samples of one prompt go out as one call with ``n=k`` (``n_mode="auto"``, the default), falling back for
  good to one call per sample when the endpoint rejects ``n`` (HTTP 400) or answers fewer choices.
- Each try waits for a concurrency slot, the RPM/TPM buckets and any ``Retry-After`` pause, then runs under
  ``timeout_s``. 429, 408, 409, 5xx, timeouts, connection errors and unparsable bodies are retried with
  exponential backoff and jitter (``Retry-After`` wins when the server sends one); other 4xx are not.
- A finished call is committed to the cache before it counts as done; a call that fails for good gets
  ``ChatResult.error``/``reason`` and a row in the cache's ``failures`` table, and the run goes on.
  Only a setup the user must fix stops the run (:class:`UserError`): a refused key (HTTP 401), or no
  connection / HTTP 403/404 before any call succeeded.

The transport is httpcore, httpx's own HTTP engine, with one keep-alive connection per worker (see
:func:`open_pool`): several times the openai SDK's requests/s here, and no hidden SDK retries under
ours. The API key is read from ``MATHDISTILL_API_KEY`` or ``OPENAI_API_KEY`` only, sent only in the
Authorization header, and never written anywhere: request/response bodies are stored without headers, and
any text that would be written (bodies, error details) has the key replaced by ``***``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import re
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator

from .cache import CallCache, NewCall, call_key, prompt_key
from .config import StageConfig
from .errors import UserError
from .progress import bar, info

KEY_VARS = ("MATHDISTILL_API_KEY", "OPENAI_API_KEY")
RETRYABLE_STATUS = (408, 409, 429)  # plus every 5xx; other 4xx are the request's fault and are not retried
CHARS_PER_TOKEN = 4  # prompt-size estimate for the TPM bucket until the endpoint reports usage
DETAIL_CHARS = 300  # how much of an error body a failure keeps
RESERVED_BODY_KEYS = ("model", "messages", "n", "stream")  # set by the client itself, not by --extra-body


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
    rpm: float | None = Field(None, gt=0, description="requests-per-minute limit (none: unlimited)")
    tpm: float | None = Field(None, gt=0, description="tokens-per-minute limit: prompt (estimated, 4 chars/token) "
                              "+ max_tokens per sample are reserved per call, the unused part is returned when "
                              "the endpoint reports usage (none: unlimited)")
    timeout_s: float = Field(600.0, gt=0, description="per-request timeout, seconds")
    max_retries: int = Field(5, ge=0, description="retries per call on 429/408/409/5xx, timeouts, dropped "
                             "connections and unparsable bodies; then the call is recorded as failed")
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
        """The parameters that change what the endpoint answers: part of every cache key."""
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
    reason: str | None = None  # failure reason: timeout | connection | bad_body | http_<status>
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
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["failed"] = dict(sorted(self.failed.items()))
        return d

    def line(self) -> str:
        failed = sum(self.failed.values())
        why = f" ({', '.join(f'{k} {v}' for k, v in sorted(self.failed.items()))})" if failed else ""
        return (f"{self.ok} answered by {self.calls} calls ({self.retries} retries), {self.cached} from cache, "
                f"{failed} failed{why}; tokens: {self.prompt_tokens:,} prompt, "
                f"{self.completion_tokens:,} completion; {self.seconds:.1f}s")


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


class _Redactor:
    def __init__(self, secret: str | None):
        self.secret = secret if secret and len(secret) >= 4 else None

    def __call__(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret and self.secret in text else text


class _Bucket:
    """A token bucket refilled at ``per_minute / 60`` per second, holding one second's worth (at least one
    unit). A take bigger than the bucket waits for a full bucket and leaves it in debt."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.cap = max(1.0, self.rate)
        self.level = self.cap
        self.t = time.monotonic()
        self.lock = asyncio.Lock()  # first come, first served

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.cap, self.level + (now - self.t) * self.rate)
        self.t = now

    async def take(self, n: float) -> None:
        async with self.lock:
            while True:
                self._refill()
                need = min(n, self.cap)
                if self.level >= need:
                    self.level -= n
                    return
                await asyncio.sleep((need - self.level) / self.rate)

    def give(self, n: float) -> None:
        self._refill()
        self.level = min(self.cap, self.level + n)


@dataclass
class _Fail:
    reason: str
    detail: str
    status: int | None = None
    retry_after: float | None = None
    fatal: bool = False  # the endpoint could not be reached at all

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return True  # timeout, connection, bad_body
        return self.status in RETRYABLE_STATUS or self.status >= 500


@dataclass
class _Job:
    """Samples of one prompt fetched by one call (``n`` = number of samples)."""

    messages: list[dict[str, Any]]
    samples: list[int]
    keys: list[str]


def retry_after_s(headers) -> float | None:
    """Seconds from ``retry-after-ms``, ``Retry-After: <seconds>`` or ``Retry-After: <HTTP date>``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(ra).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


def _error_detail(body: bytes) -> str:
    try:
        d = json.loads(body)
        err = d.get("error", d) if isinstance(d, dict) else d
        msg = err.get("message") if isinstance(err, dict) else None
        text = str(msg if msg else d)
    except ValueError:
        text = body.decode("utf-8", "replace")
    return text.strip()[:DETAIL_CHARS]


def _decode(body: bytes, encoding: str | None) -> bytes:
    """We send no Accept-Encoding; a server that compresses anyway gets decoded here."""
    enc = (encoding or "identity").strip().lower()
    if enc == "gzip":
        return gzip.decompress(body)
    if enc == "deflate":
        return zlib.decompress(body)
    return body


_SSL: dict[str, Any] = {}  # one SSL context for all connections: loading the CA bundle takes ~70 ms


def open_pool(url: str):
    """A connection pool of ONE keep-alive connection (one per worker), direct or through the proxy that
    ``HTTP(S)_PROXY`` / ``ALL_PROXY`` name for this URL unless ``NO_PROXY`` exempts it (as httpx does).

    httpcore is httpx's own HTTP engine; used without the httpx Client on top, and with a pool per worker
    instead of one shared pool (whose scan of every connection for every request dominated at 64
    connections), it carries about twice the requests per second (benchmarks/bench_generate.py).
    """
    import httpcore
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    ssl_ctx = None
    if parts.scheme == "https":
        if "ctx" not in _SSL:
            import httpx

            _SSL["ctx"] = httpx.create_ssl_context()  # certifi, or SSL_CERT_FILE / SSL_CERT_DIR
        ssl_ctx = _SSL["ctx"]
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not proxy_bypass(parts.hostname or ""):
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.scheme not in ("http", "https"):
            raise UserError(f"proxy {public_endpoint(proxy)} is {p.scheme}; only http(s) proxies are supported "
                            f"(set NO_PROXY={parts.hostname} to go direct)")
        auth = (p.username or "", p.password or "") if p.username else None
        return httpcore.AsyncHTTPProxy(proxy_url=public_endpoint(urlunsplit(p)), proxy_auth=auth,
                                       ssl_context=ssl_ctx, max_connections=1)
    return httpcore.AsyncConnectionPool(ssl_context=ssl_ctx, max_connections=1)


class _Engine:
    def __init__(self, cfg: ChatClientConfig, cache: CallCache, stats: RunStats, results: list, by_key, bar_):
        self.cfg, self.cache, self.stats, self.results, self.by_key, self.bar = cfg, cache, stats, results, by_key, bar_
        self.url = endpoint_url(cfg.base_url)
        self.endpoint = public_endpoint(cfg.base_url)
        key = api_key()
        self.redact = _Redactor(key)
        self.headers = [(b"content-type", b"application/json"), (b"user-agent", b"mathdistill")]
        if key:
            self.headers.append((b"authorization", f"Bearer {key}".encode()))
        self.rpm = _Bucket(cfg.rpm) if cfg.rpm else None
        self.tpm = _Bucket(cfg.tpm) if cfg.tpm else None
        self.pause_until = 0.0  # monotonic time before which no try starts (after a Retry-After)
        self.use_n = cfg.n_mode != "separate"
        self.jobs: deque[_Job] = deque()
        self.any_ok = False

    # ---- one call ----------------------------------------------------------------------------------------
    def body(self, job: _Job) -> bytes:
        cfg = self.cfg
        b: dict[str, Any] = {"model": cfg.model, "messages": job.messages, "temperature": cfg.temperature,
                             "top_p": cfg.top_p, "max_tokens": cfg.max_tokens}
        if cfg.seed is not None:
            b["seed"] = cfg.seed + job.samples[0]
        if len(job.samples) > 1:
            b["n"] = len(job.samples)
        b.update(cfg.extra_body)
        return json.dumps(b, ensure_ascii=False).encode()

    async def wait_turn(self, tokens: float) -> None:
        while (d := self.pause_until - time.monotonic()) > 0:
            await asyncio.sleep(d)
        if self.rpm:
            await self.rpm.take(1)
        if self.tpm:
            await self.tpm.take(tokens)

    async def try_once(self, pool, body: bytes) -> tuple[dict[str, Any], bytes, float] | _Fail:
        import httpcore

        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                r = await pool.request("POST", self.url, content=body,
                                       headers=[*self.headers, (b"content-length", str(len(body)).encode())])
        except (TimeoutError, httpcore.TimeoutException):
            return _Fail("timeout", f"no answer within {self.cfg.timeout_s:g}s")
        except httpcore.ConnectError as e:
            return _Fail("connection", self.redact(f"cannot connect: {e}"[:DETAIL_CHARS]), fatal=True)
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError) as e:
            return _Fail("connection", self.redact(f"{type(e).__name__}: {e}"[:DETAIL_CHARS]))
        latency = time.monotonic() - t0
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in r.headers}
        content = r.content
        try:
            content = _decode(content, headers.get("content-encoding"))
        except (OSError, zlib.error) as e:
            return _Fail("bad_body", f"cannot decode a {headers.get('content-encoding')} body: {e}")
        if not 200 <= r.status < 300:
            return _Fail(f"http_{r.status}", self.redact(_error_detail(content)), r.status, retry_after_s(headers))
        try:
            data = json.loads(content)
            choices = data["choices"]
            if not isinstance(choices, list) or not choices or not all(
                    isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices):
                raise ValueError("no choices with a message")
        except (ValueError, KeyError, TypeError) as e:
            head = content[:120].decode("utf-8", "replace")
            return _Fail("bad_body", self.redact(f"unparsable response ({e}): {head!r}"))
        return data, content, latency

    async def run_job(self, pool, job: _Job) -> None:
        cfg, stats = self.cfg, self.stats
        n = len(job.samples)
        body = self.body(job)
        est = len(body) / CHARS_PER_TOKEN + cfg.max_tokens * n
        attempts = 0
        while True:
            await self.wait_turn(est)
            attempts += 1
            stats.calls += 1
            out = await self.try_once(pool, body)
            if not isinstance(out, _Fail):
                self.store(job, body, out, attempts, est)
                return
            if self.tpm:
                self.tpm.give(est)  # a failed call used no tokens
            if n > 1 and out.status == 400 and cfg.n_mode == "auto":
                self.fall_back_to_separate(job)
                return
            if out.retryable and attempts <= cfg.max_retries:
                delay = min(cfg.backoff_max_s, cfg.backoff_s * 2 ** (attempts - 1))
                delay = delay / 2 + random.uniform(0, delay / 2)  # "equal jitter": spreads a 429 storm apart
                if out.retry_after is not None:
                    wait = min(out.retry_after, cfg.retry_after_max_s)
                    self.pause_until = max(self.pause_until, time.monotonic() + wait)  # every call waits
                    delay = wait + random.uniform(0, 0.1 * wait)
                stats.retries += 1
                self.progress()
                await asyncio.sleep(delay)
                continue
            self.give_up(job, body, out, attempts)
            return

    def fall_back_to_separate(self, job: _Job) -> None:
        if self.use_n:
            info("the endpoint does not support n= for several samples; sending one call per sample")
        self.use_n = False
        self.stats.n_fallback = True
        for s, k in zip(job.samples, job.keys):
            self.jobs.appendleft(_Job(job.messages, [s], [k]))

    def store(self, job: _Job, body: bytes, out: tuple[dict[str, Any], bytes, float], attempts: int,
              est: float) -> None:
        data, raw, latency = out
        cfg, stats = self.cfg, self.stats
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
        got = choices[:len(job.samples)]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        parsed = [parse_message(c["message"]) for c in got]
        if len(got) > 1 and isinstance(ct, int):
            # One usage for several samples: completion tokens split by each sample's share of characters.
            sizes = [len(r or "") + len(c) for r, c in parsed]
            total = sum(sizes) or 1
            cts = [round(ct * s / total) for s in sizes]
        else:
            cts = [ct if isinstance(ct, int) else None] * len(got)
        request_json = self.redact(body.decode())
        response_json = self.redact(raw.decode("utf-8", "replace"))
        rows = []
        for j, (choice, (reasoning, content)) in enumerate(zip(got, parsed)):
            rows.append(NewCall(key=job.keys[j], model=cfg.model or "", sample=job.samples[j], endpoint=self.endpoint,
                                request_json=request_json, response_json=response_json, choice_index=j,
                                content=content, reasoning=reasoning, finish_reason=choice.get("finish_reason"),
                                prompt_tokens=pt if isinstance(pt, int) else None, completion_tokens=cts[j],
                                latency_s=round(latency, 4), attempts=attempts))
        self.cache.put(rows)  # committed before the result counts as done
        self.any_ok = True
        if self.tpm and isinstance(pt, int) and isinstance(ct, int):
            self.tpm.give(est - (pt + ct))
        stats.ok += len(rows)
        stats.prompt_tokens += pt if isinstance(pt, int) else 0
        stats.completion_tokens += ct if isinstance(ct, int) else 0
        for row, choice in zip(rows, got):
            for i in self.by_key[row.key]:
                self.results[i] = ChatResult(
                    self.results[i], content=row.content, reasoning=row.reasoning, finish_reason=row.finish_reason,
                    prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens, latency_s=row.latency_s,
                    raw=choice, attempts=attempts, cache_key=row.key)
        self.progress()
        self.bar.advance(len(rows))
        if len(got) < len(job.samples):  # the endpoint ignored n: the rest one by one
            rest = _Job(job.messages, job.samples[len(got):], job.keys[len(got):])
            if cfg.n_mode == "auto":
                self.fall_back_to_separate(rest)
            else:
                self.jobs.appendleft(rest)

    def give_up(self, job: _Job, body: bytes, f: _Fail, attempts: int) -> None:
        if f.status == 401 or (not self.any_ok and (f.fatal or f.status in (403, 404))):
            where = self.cfg.base_url
            if f.status == 401:
                raise UserError(f"{where} refused the API key (HTTP 401: {f.detail[:120]}); set MATHDISTILL_API_KEY "
                                f"or OPENAI_API_KEY in the environment")
            if f.status is not None:
                raise UserError(f"{where} answered HTTP {f.status} ({f.detail[:120]}); check --base-url and --model")
            raise UserError(f"cannot reach {where} ({f.detail[:120]}); check --base-url and that the server is up")
        request_json = self.redact(body.decode())
        for s, k in zip(job.samples, job.keys):
            self.cache.put_failure(k, self.cfg.model or "", s, f.reason, f.detail, attempts, request_json)
            self.stats.failed[f.reason] += 1
            for i in self.by_key[k]:
                self.results[i] = ChatResult(self.results[i], error=f"{f.reason}: {f.detail}", reason=f.reason,
                                             attempts=attempts, cache_key=k)
        self.progress()
        self.bar.advance(len(job.samples))

    def progress(self) -> None:
        s = self.stats
        self.bar.set_postfix(f"ok {s.ok} · failed {sum(s.failed.values())} · cached {s.cached} · retries {s.retries}")

    # ---- the run -----------------------------------------------------------------------------------------
    async def run(self, jobs: list[_Job]) -> None:
        self.jobs.extend(jobs)
        pools = [open_pool(self.url) for _ in range(min(self.cfg.concurrency, len(jobs)))]

        async def worker(pool) -> None:
            while self.jobs:
                job = self.jobs.popleft()
                if len(job.samples) > 1 and not self.use_n:
                    for s, k in zip(job.samples, job.keys):
                        self.jobs.appendleft(_Job(job.messages, [s], [k]))
                    continue
                await self.run_job(pool, job)

        tasks = [asyncio.create_task(worker(p)) for p in pools]
        try:
            await asyncio.gather(*tasks)
        finally:  # a UserError or Ctrl-C: cancel the calls in flight; finished ones are committed
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(p.aclose() for p in pools), return_exceptions=True)


@dataclass
class Plan:
    """Which requests the cache answers, and the calls left to make (samples of one prompt grouped)."""

    keys: list[str]  # cache key of each request, in request order
    by_key: dict[str, list[int]]  # key -> indices of the requests that share it
    hits: dict[str, Any]  # key -> CachedCall
    jobs: list[_Job]  # calls still to make


def _keys(cfg: ChatClientConfig, requests: list[ChatRequest]) -> list[tuple[str, str]]:
    """(prompt key, cache key) of each request; samples of one prompt share its messages list."""
    params = cfg.sampling_params()
    pkeys: dict[int, str] = {}  # id(messages) -> prompt key, so a prompt is hashed once for all samples
    out = []
    for r in requests:
        pk = pkeys.get(id(r.messages))
        if pk is None:
            pk = pkeys[id(r.messages)] = prompt_key(cfg.model, r.messages, params)
        out.append((pk, call_key(pk, r.sample)))
    return out


def request_keys(cfg: ChatClientConfig, requests: list[ChatRequest]) -> list[str]:
    """The cache key of each request: a hash of (model, messages, sampling parameters, sample index)."""
    return [k for _, k in _keys(cfg, requests)]


def plan_requests(cfg: ChatClientConfig, requests: list[ChatRequest], cache: CallCache) -> Plan:
    by_key: dict[str, list[int]] = {}
    groups: dict[str, _Job] = {}
    keys = []
    for i, (r, (pk, k)) in enumerate(zip(requests, _keys(cfg, requests))):
        keys.append(k)
        if k in by_key:  # the same request twice (e.g. a duplicated question): one call
            by_key[k].append(i)
            continue
        by_key[k] = [i]
        job = groups.get(pk)
        if job is None:
            groups[pk] = _Job(r.messages, [r.sample], [k])
        else:
            job.samples.append(r.sample)
            job.keys.append(k)
    hits = cache.get_many(by_key)
    jobs = []
    for job in groups.values():
        todo = [(s, k) for s, k in zip(job.samples, job.keys) if k not in hits]
        if todo:
            jobs.append(_Job(job.messages, [s for s, _ in todo], [k for _, k in todo]))
    return Plan(keys, by_key, hits, jobs)


def run_requests(cfg: ChatClientConfig, requests: list[ChatRequest],
                 cache_path: str | Path | CallCache | None = None, desc: str = "calls",
                 stats: RunStats | None = None) -> list[ChatResult]:
    """Send every request; results in request order, failures carry ``error`` and ``reason``.

    ``cache_path``: the SQLite cache file (or an open :class:`CallCache`); ``None`` keeps the cache in
    memory for this call only (identical requests are still sent once). ``stats``: filled with what
    happened (calls, retries, cached, failures by reason, tokens).
    Raises :class:`UserError` for a setup the user must fix; ``KeyboardInterrupt`` after cancelling the
    calls in flight (finished calls are in the cache).
    """
    if not cfg.base_url or not cfg.model:
        raise UserError("an OpenAI-compatible backend needs --base-url URL and --model NAME")
    endpoint_url(cfg.base_url)  # a bad URL fails before anything else
    stats = stats if stats is not None else RunStats()
    t0 = time.monotonic()
    own = not isinstance(cache_path, CallCache)
    cache = CallCache(cache_path if cache_path is not None else ":memory:") if own else cache_path
    try:
        plan = plan_requests(cfg, requests, cache)
        results: list[Any] = list(requests)  # each slot becomes a ChatResult
        by_key = plan.by_key
        stats.requests += len(requests)
        for k, row in plan.hits.items():
            for i in by_key[k]:
                results[i] = ChatResult(requests[i], content=row.content, reasoning=row.reasoning,
                                        finish_reason=row.finish_reason, prompt_tokens=row.prompt_tokens,
                                        completion_tokens=row.completion_tokens, latency_s=row.latency_s,
                                        cached=True, attempts=0, cache_key=k)
                stats.cached += 1
        jobs = plan.jobs
        todo_keys = [k for j in jobs for k in j.keys]
        if todo_keys:
            stats.earlier_failures += len(cache.failed_keys(todo_keys))
            with bar(desc, total=len(todo_keys), unit="call") as b:
                engine = _Engine(cfg, cache, stats, results, by_key, b)
                if cfg.n_mode == "separate":
                    jobs = [_Job(j.messages, [s], [k]) for j in jobs for s, k in zip(j.samples, j.keys)]
                engine.progress()
                asyncio.run(engine.run(jobs))
        stats.seconds = round(stats.seconds + time.monotonic() - t0, 3)
        return results
    finally:
        if own:
            cache.close()
