"""The engine: workers that take calls off a queue and run each through limits, retries and the cache."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx

from ..cache import CallCache, NewCall
from ..errors import UserError
from ..progress import info
from .config import ChatClientConfig, ChatResult, RunStats, api_key
from .errors import DETAIL_CHARS, Fail, classify
from .limits import Bucket, retry_after_s
from .messages import (
    Redactor,
    choice_failed,
    endpoint_url,
    not_an_answer,
    parse_message,
    public_endpoint,
)
from .transport import http_client

CHARS_PER_TOKEN = 4  # prompt-size estimate for the TPM bucket until the endpoint reports usage


@dataclass
class Job:
    """Samples of one prompt fetched by one call (``n`` = number of samples)."""

    messages: list[dict[str, Any]]
    samples: list[int]
    keys: list[str]
    tries: int = 0  # tries already made for these samples (a re-asked part of an n= call)


class Engine:
    def __init__(self, cfg: ChatClientConfig, cache: CallCache, stats: RunStats, results: list, by_key, bar_):
        self.cfg, self.cache, self.stats, self.results, self.by_key, self.bar = cfg, cache, stats, results, by_key, bar_
        self.url = endpoint_url(cfg.base_url)
        self.endpoint = public_endpoint(cfg.base_url)
        self.key = api_key()
        self.redact = Redactor(self.key)
        self.rpm = Bucket(cfg.rpm) if cfg.rpm else None
        self.tpm = Bucket(cfg.tpm) if cfg.tpm else None
        self.pause_until = 0.0  # monotonic time before which no try starts (after a Retry-After)
        self.use_n = cfg.n_mode != "separate"
        self.token_param = cfg.token_param
        self.jobs: deque[Job] = deque()
        self.any_ok = False
        self.warned_timeout = False
        self.warned_context = False
        self.http: httpx.AsyncClient | None = None

    # ---- one call ----------------------------------------------------------------------------------------
    def body(self, job: Job) -> bytes:
        cfg = self.cfg
        b: dict[str, Any] = {"model": cfg.model, "messages": job.messages, "temperature": cfg.temperature,
                             "top_p": cfg.top_p, self.token_param: cfg.max_tokens}
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

    async def try_once(self, body: bytes) -> tuple[dict[str, Any], bytes, float] | Fail:
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                r = await self.http.post(self.url, content=body)
        except (TimeoutError, httpx.TimeoutException):
            self.stats.timeouts += 1
            return Fail("timeout", f"no answer within {self.cfg.timeout_s:g}s")
        except httpx.ConnectError as e:
            return Fail("connection", self.redact(f"cannot connect: {e}"[:DETAIL_CHARS]), fatal=True)
        except httpx.DecodingError as e:
            return Fail("bad_body", self.redact(f"cannot decode the body: {e}"[:DETAIL_CHARS]))
        except httpx.TransportError as e:
            return Fail("connection", self.redact(f"{type(e).__name__}: {e}"[:DETAIL_CHARS]))
        latency = time.monotonic() - t0
        content = r.content  # decompressed by httpx
        if not 200 <= r.status_code < 300:
            f = classify(r.status_code, content, retry_after_s(r.headers))
            f.detail = self.redact(f.detail)
            return f
        try:
            data = json.loads(content)
        except ValueError as e:
            head = content[:120].decode("utf-8", "replace")
            return Fail("bad_body", self.redact(f"unparsable response ({e}): {head!r}"))
        why = not_an_answer(data)
        if why:
            self.stats.not_answers += 1
            return Fail("no_answer", self.redact(f"HTTP 200 without an answer: {why}")[:DETAIL_CHARS])
        return data, content, latency

    async def run_job(self, job: Job) -> None:
        cfg, stats = self.cfg, self.stats
        n = len(job.samples)
        sent = self.token_param
        body = self.body(job)
        est = len(body) / CHARS_PER_TOKEN + cfg.max_tokens * n
        attempts = job.tries
        while True:
            if sent != self.token_param:  # another call learnt the endpoint wants the other field
                sent, body = self.token_param, self.body(job)
            await self.wait_turn(est)
            attempts += 1
            stats.calls += 1
            out = await self.try_once(body)
            if not isinstance(out, Fail):
                self.store(job, body, out, attempts, est)
                return
            if self.tpm:
                self.tpm.give(est)  # a failed call used no tokens
            if out.kind == "quota":
                self.stop_quota(out)
            if out.kind == "max_completion_tokens" and sent == "max_tokens":
                self.switch_token_param(out)
                continue  # the same call with max_completion_tokens: not a retry of a fault
            if out.kind == "context":
                self.context_overflow(out)  # stops the run when a lower --max-tokens is the fix
            if n > 1 and out.kind == "n" and cfg.n_mode == "auto":
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
                self.check_timeout()
                await asyncio.sleep(delay)
                continue
            self.give_up(job, body, out, attempts)
            return

    # ---- what a failure changes for the whole run ----------------------------------------------------------
    def switch_token_param(self, f: Fail) -> None:
        if self.token_param != "max_completion_tokens":
            info(f"the endpoint refuses max_tokens ({f.detail[:120]}); sending max_completion_tokens for the rest "
                 f"of the run (--token-param max_completion_tokens skips this)")
        self.token_param = self.stats.token_param = "max_completion_tokens"

    def stop_quota(self, f: Fail) -> None:
        kept = (f"{self.stats.ok} finished calls are cached" if self.cache.path != ":memory:"
                else "no cache: --no-cache")
        raise UserError(f"{self.endpoint} says the account is out of quota or credit (HTTP {f.status}: "
                        f"{f.detail[:160]}); this is not a rate limit, so nothing is retried: add credit or use "
                        f"another key, then rerun the same command ({kept})")

    def context_overflow(self, f: Fail) -> None:
        """Prompt + max_tokens over the model's context: one line naming --max-tokens when lowering it is the
        fix (the prompt fits); otherwise (the prompt alone is too long, or no numbers) only this call fails,
        and the first such failure is reported once."""
        c, mt = f.context, self.cfg.max_tokens
        if c.max_tokens_would_help(mt):
            p = c.prompt_tokens(mt)
            raise UserError(f"{self.endpoint}: a prompt of {p} tokens + --max-tokens {mt} exceed the model's "
                            f"context of {c.limit} tokens (HTTP {f.status}); lower --max-tokens (eval: "
                            f"--max-new-tokens) to at most {c.limit - p}, less for longer prompts, or serve the "
                            f"model with a longer context")
        if not self.warned_context:
            self.warned_context = True
            info(f"warning: the endpoint says a prompt + --max-tokens {mt} exceed the model's context "
                 f"({f.detail[:160]}); that sample fails (context_length); if every prompt does, lower --max-tokens")

    def fall_back_to_separate(self, job: Job) -> None:
        if self.use_n:
            info("the endpoint does not support n= for several samples; sending one call per sample")
        self.use_n = False
        self.stats.n_fallback = True
        for s, k in zip(job.samples, job.keys):
            self.jobs.appendleft(Job(job.messages, [s], [k]))

    def check_timeout(self) -> None:
        """Warn once, during the run, when --timeout is short for --max-tokens at the observed rate."""
        if self.warned_timeout:
            return
        line = self.stats.timeout_warning(self.cfg.timeout_s, self.cfg.max_tokens)
        if line:
            self.warned_timeout = True
            info(f"warning: {line}")

    # ---- results -----------------------------------------------------------------------------------------
    def store(self, job: Job, body: bytes, out: tuple[dict[str, Any], bytes, float], attempts: int,
              est: float) -> None:
        data, raw, latency = out
        cfg, stats = self.cfg, self.stats
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
        answered = choices[:len(job.samples)]
        bad = [j for j, c in enumerate(answered) if choice_failed(c)]
        if bad:  # some choices of an n= call aborted: keep the others, ask again for those samples
            stats.not_answers += len(bad)
            stats.retries += 1
            self.jobs.appendleft(Job(job.messages, [job.samples[j] for j in bad], [job.keys[j] for j in bad],
                                     tries=attempts))
            job = Job(job.messages, [s for j, s in enumerate(job.samples) if j not in bad] + job.samples[len(answered):],
                      [k for j, k in enumerate(job.keys) if j not in bad] + job.keys[len(answered):])
            answered = [c for j, c in enumerate(answered) if j not in bad]
        got = answered
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
        if isinstance(ct, int) and latency > 0:  # the slowest sequence of the call took the whole latency
            stats.seq_tokens += max(c or 0 for c in cts)
            stats.seq_seconds += latency
            stats.seq_calls += 1
        for row, choice in zip(rows, got):
            for i in self.by_key[row.key]:
                self.results[i] = ChatResult(
                    self.results[i], content=row.content, reasoning=row.reasoning, finish_reason=row.finish_reason,
                    prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens, latency_s=row.latency_s,
                    raw=choice, attempts=attempts, cache_key=row.key)
        self.progress()
        self.check_timeout()
        self.bar.advance(len(rows))
        if len(got) < len(job.samples):  # the endpoint ignored n: the rest one by one
            rest = Job(job.messages, job.samples[len(got):], job.keys[len(got):])
            if cfg.n_mode == "auto":
                self.fall_back_to_separate(rest)
            else:
                self.jobs.appendleft(rest)

    def give_up(self, job: Job, body: bytes, f: Fail, attempts: int) -> None:
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
        timeouts = f" · timeouts {s.timeouts}" if s.timeouts else ""
        self.bar.set_postfix(f"ok {s.ok} · failed {sum(s.failed.values())} · cached {s.cached} · retries {s.retries}"
                             f"{timeouts}")

    # ---- the run -----------------------------------------------------------------------------------------
    async def run(self, jobs: list[Job]) -> None:
        self.jobs.extend(jobs)
        workers = min(self.cfg.concurrency, len(jobs))
        self.http = http_client(self.url, self.key)

        async def worker() -> None:
            while self.jobs:
                job = self.jobs.popleft()
                if len(job.samples) > 1 and not self.use_n:
                    for s, k in zip(job.samples, job.keys):
                        self.jobs.appendleft(Job(job.messages, [s], [k]))
                    continue
                await self.run_job(job)

        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        finally:  # a UserError or Ctrl-C: cancel the calls in flight; finished ones are committed
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.http.aclose()
