"""Planning (which requests the cache answers, which calls are left) and :func:`run_requests`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import CallCache, call_key, prompt_key
from ..errors import UserError
from ..progress import bar
from .config import ChatClientConfig, ChatRequest, ChatResult, RunStats
from .engine import Engine, Job
from .messages import endpoint_url


@dataclass
class Plan:
    """Which requests the cache answers, and the calls left to make (samples of one prompt grouped)."""

    keys: list[str]  # cache key of each request, in request order
    by_key: dict[str, list[int]]  # key -> indices of the requests that share it
    hits: dict[str, Any]  # key -> CachedCall
    jobs: list[Job]  # calls still to make


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
    groups: dict[str, Job] = {}
    keys = []
    for i, (r, (pk, k)) in enumerate(zip(requests, _keys(cfg, requests))):
        keys.append(k)
        if k in by_key:  # the same request twice (e.g. a duplicated question): one call
            by_key[k].append(i)
            continue
        by_key[k] = [i]
        job = groups.get(pk)
        if job is None:
            groups[pk] = Job(r.messages, [r.sample], [k])
        else:
            job.samples.append(r.sample)
            job.keys.append(k)
    hits = cache.get_many(by_key)
    jobs = []
    for job in groups.values():
        todo = [(s, k) for s, k in zip(job.samples, job.keys) if k not in hits]
        if todo:
            jobs.append(Job(job.messages, [s for s, _ in todo], [k for _, k in todo]))
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
                engine = Engine(cfg, cache, stats, results, by_key, b)
                if cfg.n_mode == "separate":
                    jobs = [Job(j.messages, [s], [k]) for j in jobs for s, k in zip(j.samples, j.keys)]
                engine.progress()
                asyncio.run(engine.run(jobs))
        stats.seconds = round(stats.seconds + time.monotonic() - t0, 3)
        return results
    finally:
        if own:
            cache.close()
