"""Stage ``serve``: a trained student behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (JSON, or server-sent events with ``stream: true``),
``POST /v1/completions``, ``GET /health``.

How requests become forward passes (:class:`Engine`, one background thread):

- A request is tokenized and validated on the event loop, then queued as a *job* (``n`` rows).
- The engine thread keeps a running batch of rows with one shared KV cache (left padded). Whenever rows wait
  and the batch has room (``max_batch_size`` rows), it prefills the newcomers in one forward pass and merges
  their cache into the running batch; then one decode step advances every running row by one token. When the
  engine is idle, it first waits ``batch_wait_ms`` so that requests arriving together start together.
- Each row samples with its own settings: greedy (``temperature`` 0) by argmax, otherwise temperature and
  ``top_p`` per row and a per-row ``torch.Generator`` (``seed + choice index``, so a seeded request gives the
  same text whatever else shares its batch). Finished and cancelled rows leave the batch at once.
- At most ``max_queue`` jobs wait for room; the next one gets ``503`` with ``Retry-After``. A client that
  disconnects cancels its job, waiting or running.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (invalid
JSON, schema, limits), 401 without the right bearer key, 413 for a body above ``max_body_bytes``, 503 when the
queue is full. ``--engine vllm`` hands serving to vLLM's own OpenAI server for the merged model instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from fastapi import Request  # module level: FastAPI resolves the handlers' annotations here
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .calculator import CalcState, Calculator
from .config import StageConfig
from .errors import UserError
from .models import DEFAULT_STUDENT, ModelSpec, home, load, load_path, resolve
from .progress import info

log = logging.getLogger(__name__)

KEY_VAR = "MATHDISTILL_SERVE_KEY"


class ServeConfig(StageConfig):
    """Where the service listens, how it batches, and the limits it enforces."""

    host: str = Field("127.0.0.1", description="address to bind (loopback only unless you say otherwise)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port)")
    engine: Literal["transformers", "vllm"] = Field("transformers", description="serving engine: built-in batcher on transformers, or vLLM's OpenAI server (GPU)")
    served_model_name: str | None = Field(None, description="model id clients see in /v1/models (None: from --model)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")
    threads: int | None = Field(None, ge=1, description="torch threads (None: all cores)")
    max_batch_size: int = Field(32, ge=1, description="most rows (requests x n) in one forward pass; 1 turns batching off")
    batch_wait_ms: float = Field(10.0, ge=0, description="when idle, how long the first request waits for others to batch with, ms")
    max_queue: int = Field(128, ge=0, description="most requests waiting for a batch slot; beyond it: 503 + Retry-After")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with a 503")
    max_n: int = Field(8, ge=1, description="most choices per request (n, times the prompts of a /v1/completions list)")
    default_max_tokens: int = Field(512, ge=1, description="completion tokens when a request names no max_tokens (clipped to the context)")
    max_tokens_cap: int = Field(2048, ge=1, description="largest max_tokens a request may ask for; above it: 400")
    max_prompt_tokens: int = Field(2048, ge=1, description="longest prompt in tokens; above it: 400")
    max_body_bytes: int = Field(1_000_000, ge=1, description="largest request body, bytes; above it: 413")
    calculator: bool = Field(False, description="calculator-aware decoding: after 'expression =' the exact result is "
                             "written for the model (engine transformers)")


# --------------------------------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class QueueFull(Exception):
    pass


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


# ------------------------------------------------------------------------------------------ request schemas


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part] | None = None


class _Sampling(BaseModel):
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


class ChatBody(_Sampling):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionBody(_Sampling):
    prompt: str | list[str]


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _parse(model: type[BaseModel], data: Any) -> Any:
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


# ------------------------------------------------------------------------------------------------ the engine


class Job:
    """A request in the engine: its prompt, settings and a queue of events for the HTTP handler.

    Events: ``("delta", index, text)``, ``("done", index, finish_reason, completion_tokens)``, ``("error", message)``.
    """

    def __init__(self, prompt_ids: list[int], sampling: Sampling, stream: bool = False,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.prompt_ids, self.sampling, self.stream = prompt_ids, sampling, stream
        self.loop = loop or asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.counted_cancel = False

    def cancel(self) -> None:
        self.cancelled = True  # read by the engine thread at its next step

    def emit(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening
            pass


class _Row:
    __slots__ = ("job", "index", "gen", "ids", "text", "sent", "done", "watch", "calc")

    def __init__(self, job: Job, index: int, gen: Any):
        self.job, self.index, self.gen = job, index, gen
        self.ids: list[int] = []
        self.text, self.sent, self.done = "", 0, None
        self.watch = job.stream or bool(job.sampling.stop)  # decode every step (stream deltas, stop strings)
        self.calc = None  # CalcState with --calculator

    def last(self, n: int) -> list[int]:
        """The last ``n`` token ids of prompt + completion."""
        return self.ids[-n:] if len(self.ids) >= n else (self.job.prompt_ids + self.ids)[-n:]


def _left_pad(t: Any, n: int) -> Any:
    import torch.nn.functional as F

    return F.pad(t, (0, 0, n, 0)) if n else t  # [B, H, L, D]: pad L on the left


class Engine:
    """Dynamic batcher over one causal LM with a shared KV cache; see the module docstring."""

    def __init__(self, model: Any, tok: Any, cfg: ServeConfig):
        import torch

        self.model, self.tok, self.cfg = model, tok, cfg
        self.device = next(model.parameters()).device
        self.tok_lock = threading.Lock()  # a fast tokenizer must not be used from two threads at once
        eos = tok.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos])
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.eos_ids = ids - {None}
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos_ids or {0})
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.context_len = int(getattr(text_cfg, "max_position_embeddings", None) or 4096)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" in params
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # the running batch
        self._rows: list[_Row] = []
        self._cache = None
        self._mask = self._pos = self._next = None
        self._torch = torch
        self.calc = Calculator(tok, lock=self.tok_lock) if cfg.calculator else None
        self.stats = {"requests": 0, "finished": 0, "cancelled": 0, "rejected": 0, "failed": 0, "prefills": 0,
                      "steps": 0, "tokens": 0, "max_rows": 0, "max_queued": 0}

    # ---- public, called from the event loop
    def encode(self, text: str, special: bool) -> list[int]:
        with self.tok_lock:
            return self.tok(text, add_special_tokens=special)["input_ids"]

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        with self.tok_lock:
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.cfg.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (--max-queue {self.cfg.max_queue})")
            self._waiting.append(job)
            self.stats["requests"] += 1
            self.stats["max_queued"] = max(self.stats["max_queued"], len(self._waiting))
            self._cv.notify()

    def load(self) -> dict[str, int]:
        with self._cv:
            return {"queued": len(self._waiting), "running": len(self._rows)}

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="mathdistill-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # ---- the engine thread
    def _loop(self) -> None:
        torch = self._torch
        threads = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)  # process-wide in torch: restored when the engine stops
        try:
            self._serve_forever()
        finally:
            torch.set_num_threads(threads)

    def _serve_forever(self) -> None:
        torch = self._torch
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._waiting and not self._rows and not self._stopping:
                        self._cv.wait()
                    if self._stopping:
                        break
                    if not self._rows and self.cfg.batch_wait_ms > 0:
                        deadline = time.monotonic() + self.cfg.batch_wait_ms / 1000
                        while (sum(j.sampling.n for j in self._waiting) < self.cfg.max_batch_size
                               and not self._stopping and (left := deadline - time.monotonic()) > 0):
                            self._cv.wait(left)
                    new = self._take()
                try:
                    self._drop_cancelled()
                    if new:
                        self._prefill(new)
                    if self._rows:
                        self._step()
                except Exception as e:  # noqa: BLE001 - one bad batch must not stop the service
                    log.exception("generation failed")
                    failed = {id(r.job): r.job for r in self._rows}
                    failed.update({id(j): j for j in new})
                    for job in failed.values():
                        job.emit("error", f"generation failed: {type(e).__name__}: {str(e)[:200]}")
                    self.stats["failed"] += len(failed)
                    self._reset()
        with self._cv:
            pending = list(self._waiting) + [r.job for r in self._rows]
            self._waiting.clear()
        for job in {id(j): j for j in pending}.values():
            job.emit("error", "the server is shutting down")
        self._reset()

    def _take(self) -> list[Job]:
        """Jobs that fit in the running batch, first come first served (cancelled ones are dropped here)."""
        room = self.cfg.max_batch_size - len(self._rows)
        out: list[Job] = []
        while self._waiting:
            job = self._waiting[0]
            if job.cancelled:
                self._waiting.popleft()
                self._count_cancel(job)
                continue
            if job.sampling.n > room and (out or self._rows):
                break
            out.append(self._waiting.popleft())
            room -= job.sampling.n
        return out

    def _count_cancel(self, job: Job) -> None:
        if not job.counted_cancel:
            job.counted_cancel = True
            self.stats["cancelled"] += 1

    def _reset(self) -> None:
        self._rows, self._cache, self._mask, self._pos, self._next = [], None, None, None, None

    def _forward(self, ids, mask, pos, cache, last_only: bool):
        kw = {self._cache_kw: cache, "use_cache": True}
        if last_only and self._keep_kw:
            kw["logits_to_keep"] = 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
        return out.logits[:, -1].float()

    def _generator(self, job: Job, index: int):
        g = self._torch.Generator(device=self.device)
        seed = job.sampling.seed
        g.manual_seed((seed + index) % (1 << 63) if seed is not None else secrets.randbits(63))
        return g

    def _prefill(self, jobs: list[Job]) -> None:
        """One forward pass over the newcomers' prompts (one row per job, then repeated for ``n``)."""
        torch = self._torch
        from transformers import DynamicCache

        L = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), L), dtype=torch.long)
        for r, j in enumerate(jobs):
            ids[r, L - len(j.prompt_ids):] = torch.tensor(j.prompt_ids, dtype=torch.long)
            mask[r, L - len(j.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, pos, cache, last_only=True)
        self.stats["prefills"] += 1
        rep = [r for r, j in enumerate(jobs) for _ in range(j.sampling.n)]
        rows = [_Row(j, i, self._generator(j, i)) for j in jobs for i in range(j.sampling.n)]
        if self.calc is not None:
            for r in rows:
                r.calc = CalcState()
        if len(rep) != len(jobs):
            sel = torch.tensor(rep, device=self.device)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[sel], layer.values[sel]
            mask, logits = mask[sel], logits[sel]
        lengths = mask.sum(1)
        tokens = self._sample(logits, rows)
        self._merge(rows, cache, mask, lengths, tokens)
        self._accept(rows, tokens.tolist())
        self._prune()

    def _merge(self, rows: list[_Row], cache, mask, pos, tokens) -> None:
        torch = self._torch
        if not self._rows:
            self._rows, self._cache, self._mask, self._pos, self._next = rows, cache, mask, pos, tokens
            return
        a, b = self._mask.shape[1], mask.shape[1]
        m = max(a, b)
        for la, lb in zip(self._cache.layers, cache.layers):
            la.keys = torch.cat([_left_pad(la.keys, m - a), _left_pad(lb.keys, m - b)])
            la.values = torch.cat([_left_pad(la.values, m - a), _left_pad(lb.values, m - b)])
        pad = lambda t, n: torch.nn.functional.pad(t, (n, 0)) if n else t  # noqa: E731
        self._mask = torch.cat([pad(self._mask, m - a), pad(mask, m - b)])
        self._pos = torch.cat([self._pos, pos])
        self._next = torch.cat([self._next, tokens])
        self._rows = self._rows + rows

    def _step(self) -> None:
        """One decode step: feed every running row its last token, sample the next."""
        torch = self._torch
        b = len(self._rows)
        self.stats["max_rows"] = max(self.stats["max_rows"], b)
        mask = torch.cat([self._mask, torch.ones((b, 1), dtype=self._mask.dtype, device=self.device)], 1)
        logits = self._forward(self._next[:, None], mask, self._pos[:, None], self._cache, last_only=False)
        self.stats["steps"] += 1
        self._mask, self._pos = mask, self._pos + 1
        self._next = self._sample(logits, self._rows)
        self._accept(self._rows, self._next.tolist())
        self._prune()

    def _sample(self, logits, rows: list[_Row]):
        """Per-row sampling: argmax where temperature is 0, else temperature + top_p with the row's generator."""
        torch = self._torch
        if self.calc is not None:
            self.calc.apply(logits, [r.last(2) for r in rows], lambda j, n: rows[j].last(n), [r.calc for r in rows])
        out = logits.argmax(-1)
        hot = [i for i, r in enumerate(rows) if r.job.sampling.temperature > 0]
        if not hot:
            return out
        sel = torch.tensor(hot, device=logits.device)
        temp = torch.tensor([rows[i].job.sampling.temperature for i in hot], device=logits.device)
        x = logits[sel] / temp[:, None]
        top_p = torch.tensor([rows[i].job.sampling.top_p for i in hot], device=logits.device)
        nucleus = (top_p < 1).nonzero().flatten()
        if len(nucleus):
            y = x[nucleus]
            s, order = y.sort(-1, descending=True)
            p = s.softmax(-1)
            cut = (p.cumsum(-1) - p) >= top_p[nucleus, None]  # keep tokens until their mass reaches top_p (first always)
            x[nucleus] = y.scatter(-1, order, s.masked_fill(cut, float("-inf")))
        probs = x.softmax(-1)
        for j, i in enumerate(hot):
            out[i] = torch.multinomial(probs[j], 1, generator=rows[i].gen)[0]
        return out

    def _decode(self, ids: list[int]) -> str:
        with self.tok_lock:
            return self.tok.decode(ids, skip_special_tokens=True)

    def _accept(self, rows: list[_Row], tokens: list[int]) -> None:
        """Append each row's new token; finish rows at EOS, max_tokens or a stop string; emit text."""
        for r, t in zip(rows, tokens):
            if r.done:
                continue
            s = r.job.sampling
            r.ids.append(t)
            self.stats["tokens"] += 1
            finish = None
            if t in self.eos_ids and not s.ignore_eos:
                finish = "stop"
            elif len(r.ids) >= s.max_tokens:
                finish = "length"
            if r.watch or finish:
                r.text = self._decode(r.ids)
            if r.watch and s.stop:
                hits = [i for i in (r.text.find(x) for x in s.stop) if i >= 0]
                if hits:
                    r.text, finish = r.text[: max(min(hits), r.sent)], "stop"
            if finish:
                if len(r.text) > r.sent:
                    r.job.emit("delta", r.index, r.text[r.sent:])
                r.sent = len(r.text)
                r.done = finish
                r.job.emit("done", r.index, finish, len(r.ids))
                self.stats["finished"] += 1
            elif r.job.stream:
                end = len(r.text) - (max(map(len, s.stop)) - 1 if s.stop else 0)
                while end > r.sent and r.text[end - 1] == "\ufffd":  # an unfinished multi-byte character
                    end -= 1
                if end > r.sent:
                    r.job.emit("delta", r.index, r.text[r.sent:end])
                    r.sent = end

    def _drop_cancelled(self) -> None:
        for r in self._rows:
            if r.job.cancelled and not r.done:
                r.done = "cancelled"
                self._count_cancel(r.job)
        self._prune()

    def _prune(self) -> None:
        """Drop finished rows from the batch, and the leading cache columns no remaining row uses."""
        keep = [i for i, r in enumerate(self._rows) if r.done is None]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._reset()
            return
        torch = self._torch
        sel = torch.tensor(keep, device=self.device)
        mask = self._mask[sel]
        first = int(mask.any(0).to(torch.int8).argmax())
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[sel, :, first:], layer.values[sel, :, first:]
        self._mask, self._pos, self._next = mask[:, first:], self._pos[sel], self._next[sel]
        self._rows = [self._rows[i] for i in keep]


# ------------------------------------------------------------------------------------------------- the app


def _sampling(engine: Engine, req: _Sampling, prompt_len: int, max_tokens: int | None, choices: int,
              prompt_field: str = "messages") -> Sampling:
    cfg = engine.cfg
    if choices > cfg.max_n:
        raise APIError(400, f"n: {choices} choices requested, this server allows at most {cfg.max_n} per request (--max-n)", param="n")
    if prompt_len > cfg.max_prompt_tokens:
        raise APIError(400, f"the prompt has {prompt_len} tokens, above this server's limit of {cfg.max_prompt_tokens} (--max-prompt-tokens)",
                       param=prompt_field, code="context_length_exceeded")
    room = engine.context_len - prompt_len
    if max_tokens is not None:
        if max_tokens > cfg.max_tokens_cap:
            raise APIError(400, f"max_tokens: {max_tokens} is above this server's cap of {cfg.max_tokens_cap} (--max-tokens-cap)", param="max_tokens")
        if max_tokens > room:
            raise APIError(400, f"max_tokens: the prompt ({prompt_len} tokens) plus {max_tokens} completion tokens exceed the model's context of "
                                f"{engine.context_len} tokens", param="max_tokens", code="context_length_exceeded")
    elif room < 1:
        raise APIError(400, f"the prompt ({prompt_len} tokens) fills the model's context of {engine.context_len} tokens",
                       param=prompt_field, code="context_length_exceeded")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop: at most 4 non-empty strings", param="stop")
    return Sampling(max_tokens=max_tokens or min(cfg.default_max_tokens, cfg.max_tokens_cap, room),
                    temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=stop, n=req.n,
                    ignore_eos=req.ignore_eos)


async def _read_json(request: Any, limit: int) -> Any:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise APIError(413, f"request body of {size} bytes is above this server's limit of {limit} bytes (--max-body-bytes)",
                       code="request_too_large")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise APIError(413, f"request body is above this server's limit of {limit} bytes (--max-body-bytes)",
                           code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints longer than Python parses
        raise APIError(400, f"the request body is not valid JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON: nested too deeply") from None


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content)


async def _wait_disconnect(request: Any) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def _events(jobs: list[Job], request: Any) -> AsyncIterator[tuple[int, tuple]]:
    """(job number, event) as they come, until every row of every job is done. A disconnect cancels them all."""
    left = sum(j.sampling.n for j in jobs)
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(k: int, job: Job) -> None:
        while True:
            ev = await job.events.get()
            await queue.put((k, ev))

    pumps = [asyncio.create_task(pump(k, j)) for k, j in enumerate(jobs)]
    gone = asyncio.create_task(_wait_disconnect(request)) if request is not None else None
    try:
        while left:
            get = asyncio.create_task(queue.get())
            waits = {get, gone} if gone else {get}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                raise ClientGone()
            k, ev = get.result()
            if ev[0] == "error":
                raise APIError(500, ev[1], type="server_error", code="generation_failed")
            if ev[0] == "done":
                left -= 1
            yield k, ev
    finally:
        for t in pumps + ([gone] if gone else []):
            t.cancel()
        if left:  # the client went away (or a job failed): stop what still runs
            for j in jobs:
                j.cancel()


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(model: Any, tok: Any, cfg: ServeConfig, name: str = "student", api_key: str | None = None):
    """The FastAPI app serving ``model``; ``app.state.engine`` is its :class:`Engine` (started with the app)."""
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import __version__

    engine = Engine(model, tok, cfg)
    created = int(time.time())
    fingerprint = f"mathdistill-{__version__}"
    key = api_key.encode() if api_key else None

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    async def auth(request: Request) -> None:
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key)):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="mathdistill serve", version=__version__, lifespan=lifespan, dependencies=[Depends(auth)],
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail), code=str(e.status_code)).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return JSONResponse(APIError(400, str(e.errors()[:1])).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("internal error")
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", type="server_error").body(), status_code=500)

    def submit(job: Job) -> None:
        try:
            engine.submit(job)
        except QueueFull as e:
            raise APIError(503, f"server busy: {e}; retry later", type="server_error", code="queue_full",
                           headers={"Retry-After": str(cfg.retry_after_s)}) from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, **engine.load(), "max_batch_size": cfg.max_batch_size, "max_queue": cfg.max_queue,
                "stats": dict(engine.stats)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "mathdistill",
                                            "max_model_len": engine.context_len}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req: ChatBody = _parse(ChatBody, await _read_json(request, cfg.max_body_bytes))
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)} for m in req.messages]
        try:  # off the event loop: a long prompt takes a while to render and tokenize
            prompt = await asyncio.to_thread(engine.render_chat, msgs)
        except Exception as e:  # noqa: BLE001 - a template that rejects the conversation (role order ...)
            raise APIError(400, f"messages: the model's chat template rejected them: {str(e)[:200]}", param="messages") from None
        ids = await asyncio.to_thread(engine.encode, prompt, False)
        sampling = _sampling(engine, req, len(ids), req.max_completion_tokens or req.max_tokens, req.n)
        job = Job(ids, sampling, stream=req.stream)
        submit(job)
        rid, t = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "created": t, "model": name, "system_fingerprint": fingerprint}
        if req.stream:
            usage_chunks = bool((req.stream_options or {}).get("include_usage"))

            async def sse() -> AsyncIterator[str]:
                extra = {"usage": None} if usage_chunks else {}
                chunk = {**head, "object": "chat.completion.chunk"}
                for i in range(req.n):
                    yield _sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                      "logprobs": None, "finish_reason": None}], **extra})
                completion = 0
                try:
                    async for _, ev in _events([job], None):
                        if ev[0] == "delta":
                            c = {"index": ev[1], "delta": {"content": ev[2]}, "logprobs": None, "finish_reason": None}
                        else:
                            completion += ev[3]
                            c = {"index": ev[1], "delta": {}, "logprobs": None, "finish_reason": ev[2]}
                        yield _sse({**chunk, "choices": [c], **extra})
                except APIError as e:
                    yield _sse(e.body())
                    return
                if usage_chunks:
                    yield _sse({**chunk, "choices": [], "usage": _usage(len(ids), completion)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, reasons, completion = [""] * req.n, ["stop"] * req.n, 0
        try:
            async for _, ev in _events([job], request):
                if ev[0] == "delta":
                    texts[ev[1]] += ev[2]
                else:
                    reasons[ev[1]] = ev[2]
                    completion += ev[3]
        except ClientGone:
            return Response(status_code=499)  # nobody reads this
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": None,
                             "finish_reason": reasons[i]} for i in range(req.n)],
                "usage": _usage(len(ids), completion)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req: CompletionBody = _parse(CompletionBody, await _read_json(request, cfg.max_body_bytes))
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt: empty list", param="prompt")
        encoded = [await asyncio.to_thread(engine.encode, p, True) for p in prompts]
        if not all(encoded):
            raise APIError(400, "prompt: an empty prompt", param="prompt")
        jobs = []
        for ids in encoded:
            jobs.append(Job(ids, _sampling(engine, req, len(ids), req.max_tokens, req.n * len(prompts), "prompt"), stream=req.stream))
        try:
            for j in jobs:
                submit(j)
        except APIError:
            for j in jobs:
                j.cancel()
            raise
        n, prompt_tokens = req.n, sum(map(len, encoded))
        rid, t = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": t, "model": name, "system_fingerprint": fingerprint}
        if req.stream:
            usage_chunks = bool((req.stream_options or {}).get("include_usage"))

            async def sse() -> AsyncIterator[str]:
                extra = {"usage": None} if usage_chunks else {}
                completion = 0
                try:
                    async for k, ev in _events(jobs, None):
                        if ev[0] == "delta":
                            c = {"index": k * n + ev[1], "text": ev[2], "logprobs": None, "finish_reason": None}
                        else:
                            completion += ev[3]
                            c = {"index": k * n + ev[1], "text": "", "logprobs": None, "finish_reason": ev[2]}
                        yield _sse({**head, "choices": [c], **extra})
                except APIError as e:
                    yield _sse(e.body())
                    return
                if usage_chunks:
                    yield _sse({**head, "choices": [], "usage": _usage(prompt_tokens, completion)})
                yield "data: [DONE]\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        texts, reasons, completion = [""] * (n * len(jobs)), ["stop"] * (n * len(jobs)), 0
        try:
            async for k, ev in _events(jobs, request):
                if ev[0] == "delta":
                    texts[k * n + ev[1]] += ev[2]
                else:
                    reasons[k * n + ev[1]] = ev[2]
                    completion += ev[3]
        except ClientGone:
            return Response(status_code=499)
        return {**head, "choices": [{"index": i, "text": texts[i], "logprobs": None, "finish_reason": reasons[i]}
                                    for i in range(len(texts))],
                "usage": _usage(prompt_tokens, completion)}

    return app


# ----------------------------------------------------------------------------------------- running it


def served_name(spec: ModelSpec) -> str:
    """The id clients see: the alias, or the model/run folder's name (``runs/x/train`` -> ``x``)."""
    p = Path(spec.name.rstrip("/"))
    if spec.name in ("", ".") or p.suffix == ".gguf":
        return p.stem or "student"
    return p.parent.name if p.name == "train" and p.parent.name else p.name


class ServerThread:
    """Run an app with uvicorn in a background thread on ``host:port`` (port 0: a free one), as a context manager.

    ``with ServerThread(app) as s: OpenAI(base_url=s.url + "/v1")``. The socket is bound before the thread
    starts, so ``s.port`` is known and nothing else can take it.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        # proto IPPROTO_TCP (not 0) so that asyncio sets TCP_NODELAY on accepted connections (else ~40 ms per reply)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="mathdistill-uvicorn")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 60:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def _merged_folder(spec: ModelSpec, dtype: str) -> str:
    """A folder vLLM can load: the model itself, or base + LoRA merged once into the cache (atomic rename)."""
    if not spec.adapter:
        return load_path(spec)
    h = hashlib.sha256(f"{load_path(spec)}|{dtype}".encode())
    for f in sorted(Path(spec.adapter).iterdir()):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    dest = home() / "merged" / h.hexdigest()[:16]
    if (dest / "config.json").is_file():
        return str(dest)
    info(f"merging the LoRA adapter into the base model once (cached in {dest}) ...")
    model, tok = load(spec, dtype=dtype, merge=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dest)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def check_vllm() -> None:
    """One clear line when vLLM or a CUDA GPU is missing (vLLM is imported lazily, by its own process)."""
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        raise UserError("--engine vllm needs vLLM on a machine with a CUDA GPU: pip install 'mathdistill[vllm]' "
                        "(or serve with the default --engine transformers)")
    import torch

    if not torch.cuda.is_available():
        raise UserError("--engine vllm needs a CUDA GPU and none is visible here; serve with the default --engine transformers")


def vllm_command(cfg: ServeConfig, spec: ModelSpec, api_key: str | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, env) that start vLLM's OpenAI server on the merged model with this config's address and batch
    size. The key travels in ``VLLM_API_KEY`` (the environment), never on the command line."""
    model = spec.path if spec.kind == "hub" and not spec.adapter else _merged_folder(spec, cfg.dtype)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", cfg.served_model_name or served_name(spec), "--host", cfg.host,
            "--port", str(cfg.port), "--max-num-seqs", str(cfg.max_batch_size),
            "--dtype", "auto" if cfg.dtype == "float32" else cfg.dtype]
    env = dict(os.environ)
    env.pop("VLLM_API_KEY", None)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return argv, env


def serve(cfg: ServeConfig, model: str = DEFAULT_STUDENT, adapter: str | None = None, api_key: str | None = None) -> None:
    """Serve ``model`` (+ ``adapter``) until interrupted. ``api_key`` (else ``$MATHDISTILL_SERVE_KEY``) turns on
    bearer auth; it is never written anywhere."""
    import subprocess

    key = api_key or os.environ.get(KEY_VAR) or None
    spec = resolve(model, adapter)
    name = cfg.served_model_name or served_name(spec)
    loopback = cfg.host in ("127.0.0.1", "localhost", "::1")
    if not loopback and not key:
        info(f"[yellow]warning:[/yellow] listening on {cfg.host} without an API key: anyone who can reach this port can "
             f"use the model (set {KEY_VAR} or --api-key)")
    if cfg.engine == "vllm":
        if cfg.calculator:
            raise UserError("serve --calculator works with --engine transformers only (vLLM's server is not steered "
                            "token by token here); drop --calculator or use --engine transformers")
        check_vllm()
        argv, env = vllm_command(cfg, spec, key)
        info(f"handing serving to vLLM: {' '.join(argv[1:])}")
        raise SystemExit(subprocess.call(argv, env=env))

    import torch
    import uvicorn

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    m, tok = load(spec, dtype=cfg.dtype, merge=True)  # merged LoRA: no adapter overhead per token
    app = create_app(m, tok, cfg, name=name, api_key=key)
    engine: Engine = app.state.engine
    kv = _kv_bytes_per_token(m) * cfg.max_batch_size * min(engine.context_len, cfg.max_prompt_tokens + cfg.max_tokens_cap)
    info(f"serving {name} on http://{cfg.host}:{cfg.port}/v1  (auth {'on' if key else 'off'}; batch <= {cfg.max_batch_size} rows, "
         f"queue <= {cfg.max_queue}; context {engine.context_len} tokens; KV cache at most {kv / 2**30:.2f} GiB)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=5)


def _kv_bytes_per_token(model: Any) -> int:
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(c, "num_attention_heads", 1)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    width = next(model.parameters()).element_size()
    return 2 * c.num_hidden_layers * kv_heads * head_dim * width
