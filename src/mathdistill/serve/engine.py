"""The batching engine behind ``serve --engine transformers``: one background thread, one running batch
(the queue, thread and stopping rules are :class:`~mathdistill.serve.batcher.Batcher`'s, shared with llama.cpp's).

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

import inspect
import secrets
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from ..backends import context_limit, eos_ids_of
from ..calculator import CalcState, Calculator
from .batcher import Batcher, Job, Row
from .config import ServeConfig


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


class Engine(Batcher):
    """Dynamic batcher over one causal LM with a shared KV cache; see the module docstring."""

    def __init__(self, model: Any, tok: Any, cfg: ServeConfig):
        import torch

        super().__init__(cfg)
        self.model, self.tok = model, tok
        self.device = next(model.parameters()).device
        self.tok_lock = threading.Lock()  # a fast tokenizer must not be used from two threads at once
        self.eos_ids = eos_ids_of(model, tok)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos_ids or {0})
        self.context_len = context_limit(model, None) or 4096
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" in params
        # the running batch
        self._cache = None
        self._mask = self._pos = self._next = None
        self._torch = torch
        self.calc = Calculator(tok, lock=self.tok_lock) if cfg.calculator else None

    # ---- public, called from the event loop
    def encode(self, text: str, special: bool) -> list[int]:
        with self.tok_lock:
            return self.tok(text, add_special_tokens=special)["input_ids"]

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        with self.tok_lock:
            return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    # ---- the engine thread
    @contextmanager
    def _session(self) -> Iterator[None]:
        torch = self._torch
        threads = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)  # process-wide in torch: restored when the engine stops
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(threads)

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
        rows = [Row(j, i, self._generator(j, i), CalcState() if self.calc else None)
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

    def _merge(self, rows: list[Row], cache, mask, pos, tokens) -> None:
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

    def _sample(self, logits, rows: list[Row]):
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

    def _is_eos(self, token: int) -> bool:
        return token in self.eos_ids

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
