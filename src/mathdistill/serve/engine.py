"""The batching engine behind ``serve --engine transformers``: one background thread, one running batch.

- A request is tokenized and validated on the event loop, then queued as a :class:`Job` (``n`` rows).
- The engine keeps a running batch of rows with one shared, left-padded KV cache (transformers
  ``DynamicCache``; rows selected with ``Cache.batch_select_indices``; merging two left-padded batches and
  dropping leading columns no row uses have no ``Cache`` method and edit the layers' tensors). When rows wait
  and the batch has room (``max_batch_size``), it prefills the newcomers in one forward pass and merges their
  cache into the batch; then one decode step advances every row by one token. When idle, it first waits
  ``batch_wait_ms`` so that requests arriving together start together.
- Each row samples with its own settings: argmax at ``temperature`` 0, else temperature and ``top_p`` with a
  per-row ``torch.Generator`` (``seed + choice index``: a seeded request gives the same text whatever shares
  its batch). Finished and cancelled rows leave the batch at once.
- With ``--calculator`` each row's :class:`~mathdistill.calculator.CalcState` forces exact arithmetic results
  into that row's logits, from its own token history: transformers' continuous batching (``generate_batch``)
  has no per-row processors, which is why this engine exists (``benchmarks/bench_serve.py`` measures both).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import threading
import time
from collections import deque
from typing import Any

from ..backends import context_limit, eos_ids_of
from ..calculator import CalcState, Calculator
from .config import ServeConfig
from .protocol import Sampling

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """No room in the queue (``max_queue``), or the engine is stopping."""


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

    def __init__(self, job: Job, index: int, gen: Any, calc: CalcState | None = None):
        self.job, self.index, self.gen, self.calc = job, index, gen, calc
        self.ids: list[int] = []
        self.text, self.sent, self.done = "", 0, None
        self.watch = job.stream or bool(job.sampling.stop)  # decode every step (stream deltas, stop strings)

    def last(self, n: int) -> list[int]:
        """The last ``n`` token ids of prompt + completion."""
        return self.ids[-n:] if len(self.ids) >= n else (self.job.prompt_ids + self.ids)[-n:]


def _merge_caches(a: Any, b: Any, pad_a: int, pad_b: int) -> None:
    """Append cache ``b``'s rows to cache ``a``'s, left padding each to the same length ([B, H, L, D])."""
    import torch
    import torch.nn.functional as F

    left = lambda t, n: F.pad(t, (0, 0, n, 0)) if n else t  # noqa: E731
    for la, lb in zip(a.layers, b.layers):
        la.keys = torch.cat([left(la.keys, pad_a), left(lb.keys, pad_b)])
        la.values = torch.cat([left(la.values, pad_a), left(lb.values, pad_b)])


def _drop_leading(cache: Any, first: int) -> None:
    """Drop the first ``first`` positions of every layer (padding no remaining row attends to)."""
    if first:
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]


class Engine:
    """Dynamic batcher over one causal LM with a shared KV cache; see the module docstring."""

    def __init__(self, model: Any, tok: Any, cfg: ServeConfig):
        import torch

        self.model, self.tok, self.cfg = model, tok, cfg
        self.device = next(model.parameters()).device
        self.tok_lock = threading.Lock()  # a fast tokenizer must not be used from two threads at once
        self.eos_ids = eos_ids_of(model, tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos_ids or {0})
        self.context_len = context_limit(model, None) or 4096
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
        rows = [_Row(j, i, self._generator(j, i), CalcState() if self.calc else None)
                for j in jobs for i in range(j.sampling.n)]
        if len(rep) != len(jobs):
            sel = torch.tensor(rep, device=self.device)
            cache.batch_select_indices(sel)  # row r repeated n times
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
        _merge_caches(self._cache, cache, m - a, m - b)
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
        self._cache.batch_select_indices(sel)
        _drop_leading(self._cache, first)
        self._mask, self._pos, self._next = mask[:, first:], self._pos[sel], self._next[sel]
        self._rows = [self._rows[i] for i in keep]
