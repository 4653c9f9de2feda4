"""What every serving engine shares: the request queue, the engine thread, and the per-row stopping rules.

:class:`Batcher` owns a queue of :class:`Job` s (``max_queue``), one background thread and a running batch of
:class:`Row` s (``max_batch_size``). Its loop waits for work (``batch_wait_ms`` when idle, so that requests
arriving together start together), hands newcomers to the engine's ``_prefill`` and advances the batch with
``_step``; :meth:`Batcher._accept` applies the same stopping rules to every row whatever model runs it:
end-of-generation token (unless ``ignore_eos``), ``max_tokens``, the first stop string (text cut before it),
and streams text deltas (never half a UTF-8 character, never text a stop string may still claim). The engines
subclass it: :class:`~mathdistill.serve.engine.Engine` (transformers, shared ``DynamicCache``) and
:class:`~mathdistill.serve.llamacpp_engine.LlamaCppEngine` (llama.cpp sequences through ``llama_batch``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from contextlib import AbstractContextManager, nullcontext
from typing import Any

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


class Row:
    """One choice of a job in the running batch: its generator, completion ids and text sent so far.
    ``calc`` (transformers' calculator state) and ``seq``/``fed`` (llama.cpp's sequence slot and prompt tokens
    fed) are the engines' own."""

    __slots__ = ("job", "index", "gen", "ids", "text", "sent", "done", "watch", "calc", "seq", "fed")

    def __init__(self, job: Job, index: int, gen: Any, calc: Any = None, seq: int = -1):
        self.job, self.index, self.gen, self.calc, self.seq = job, index, gen, calc, seq
        self.ids: list[int] = []
        self.text, self.sent, self.done, self.fed = "", 0, None, 0
        self.watch = job.stream or bool(job.sampling.stop)  # decode every step (stream deltas, stop strings)

    def last(self, n: int) -> list[int]:
        """The last ``n`` token ids of prompt + completion."""
        return self.ids[-n:] if len(self.ids) >= n else (self.job.prompt_ids + self.ids)[-n:]


class Batcher:
    """Queue, thread and stopping rules of a serving engine (see the module docstring). A subclass sets
    ``context_len`` and implements ``encode``, ``render_chat``, ``_prefill(jobs)``, ``_step()``, ``_reset()``,
    ``_prune()``, ``_decode(ids)`` and ``_is_eos(token)``; ``_session()`` wraps the thread's whole run."""

    context_len: int = 4096

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._rows: list[Row] = []
        self.stats = {"requests": 0, "finished": 0, "cancelled": 0, "rejected": 0, "failed": 0, "prefills": 0,
                      "steps": 0, "tokens": 0, "max_rows": 0, "max_queued": 0}

    # ---- public, called from the event loop
    def encode(self, text: str, special: bool) -> list[int]:
        raise NotImplementedError

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError

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
        """Requests waiting and rows still generating (a row counts out once its answer is sent, before the
        engine thread drops it from the batch)."""
        with self._cv:
            return {"queued": len(self._waiting), "running": sum(r.done is None for r in list(self._rows))}

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
    def _session(self) -> AbstractContextManager:
        return nullcontext()

    def _loop(self) -> None:
        with self._session():
            self._serve_forever()

    def _serve_forever(self) -> None:
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

    def _prefill(self, jobs: list[Job]) -> None:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        raise NotImplementedError

    def _prune(self) -> None:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _is_eos(self, token: int) -> bool:
        raise NotImplementedError

    def _accept(self, rows: list[Row], tokens: list[int]) -> None:
        """Append each row's new token; finish rows at EOS, max_tokens or a stop string; emit text."""
        for r, t in zip(rows, tokens):
            if r.done:
                continue
            s = r.job.sampling
            r.ids.append(t)
            self.stats["tokens"] += 1
            finish = None
            if self._is_eos(t) and not s.ignore_eos:
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
