"""The engine behind ``serve --engine llamacpp`` (alias ``--backend llamacpp``): a GGUF file on llama.cpp, the
requests in flight decoded together through ``llama_batch``.

- Each row (a request's choice) takes a sequence slot of :class:`mathdistill.llamacpp.Slots`, the slots the eval
  backend's :func:`~mathdistill.llamacpp.generate_parallel` decodes with: ``max_batch_size`` slots, each its own
  KV stream of ``min(training context, max_prompt_tokens + max_tokens_cap)`` cells, allocated once at start
  (so a request the app accepts always fits its slot).
- Every step is one ``llama_decode``: the next token of every running row, then prompt tokens of newcomers up to
  ``n_batch`` tokens (a long prompt is prefilled in chunks over several steps; its first token is sampled when its
  whole prompt is in). A row that finishes or is cancelled frees its slot at once for the next request.
- Sampling per row, as the transformers engine: argmax at ``temperature`` 0 (the eval backend's greedy), else
  temperature and ``top_p`` (tokens kept until their mass reaches ``top_p``) with a per-row ``numpy`` generator
  seeded ``seed + choice index``. Stopping is :class:`~mathdistill.serve.batcher.Batcher`'s: the GGUF's
  end-of-generation tokens (``llama_vocab_is_eog``: EOS and end of turn), ``max_tokens``, stop strings.
- Prompts are rendered with the file's own chat template and tokenized, and usage counted, by the GGUF's own
  tokenizer. ``--calculator`` is not available here (it stays on the transformers engine).
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

from ..llamacpp import GGUFModel, Slots
from .batcher import Batcher, Job, Row
from .config import ServeConfig

HINT = "; lower --max-batch-size, --max-prompt-tokens or --max-tokens-cap"


class LlamaCppEngine(Batcher):
    """Continuous batching of rows over llama.cpp sequence slots; see the module docstring. Raises
    :class:`~mathdistill.errors.UserError` when llama.cpp cannot allocate the slots' KV cache."""

    def __init__(self, gm: GGUFModel, cfg: ServeConfig):
        super().__init__(cfg)
        self.gm = gm
        self.tok_lock = threading.Lock()
        self.context_len = min(gm.n_ctx_train() or 4096, cfg.max_prompt_tokens + cfg.max_tokens_cap)
        self.n_batch = max(512, 2 * cfg.max_batch_size)  # room for prompt tokens beside every running row
        self.slots: Slots | None = self._slots()

    def _slots(self) -> Slots:
        return Slots(self.gm, self.cfg.max_batch_size, self.context_len, self.n_batch, self.cfg.threads, hint=HINT)

    @property
    def threads(self) -> int:
        return self.slots.threads if self.slots else 0

    def kv_bytes(self) -> int:
        """Bytes of the KV cache allocated for every slot."""
        return self.gm.kv_bytes_per_cell() * self.cfg.max_batch_size * (self.slots.cells if self.slots else self.context_len)

    # ---- public, called from the event loop
    def encode(self, text: str, special: bool) -> list[int]:
        with self.tok_lock:
            return self.gm.tokenize(text, add_special=special)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        with self.tok_lock:
            return self.gm.render_chat(messages)

    def start(self) -> None:
        if self.slots is None:
            self.slots = self._slots()
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.slots is not None and self._thread is None:
            self.slots.close()  # the KV cache goes with the server
            self.slots = None

    # ---- the engine thread
    def _reset(self) -> None:
        self._rows = []
        if self.slots is not None:
            self.slots.clear()

    def _prefill(self, jobs: list[Job]) -> None:
        """Queue each newcomer's rows; they take slots and their prompts go in with the next steps."""
        for j in jobs:
            for i in range(j.sampling.n):
                self._rows.append(Row(j, i, self._generator(j, i)))
        self.stats["prefills"] += 1

    def _step(self) -> None:
        """One ``llama_decode``: running rows' last tokens, then newcomers' prompt tokens while ``n_batch`` has room."""
        feed, sampled = [], []
        for r in self._rows:
            if r.seq < 0 and self.slots.free:  # n above max_batch_size: the rest wait for a free slot
                r.seq = self.slots.take()
            if r.fed == len(r.job.prompt_ids):
                feed.append((r.seq, [r.ids[-1]], True))
                sampled.append(r)
        room = self.n_batch - len(feed)
        for r in self._rows:
            p = r.job.prompt_ids
            if r.seq >= 0 and r.fed < len(p) and room > 0:
                k = min(room, len(p) - r.fed)
                whole = r.fed + k == len(p)
                feed.append((r.seq, p[r.fed:r.fed + k], whole))
                r.fed, room = r.fed + k, room - k
                if whole:
                    sampled.append(r)
        if not feed:
            return
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self._rows))
        logits = self.slots.decode(feed)
        self.stats["steps"] += 1
        self._accept(sampled, self._sample(logits, sampled))
        self._prune()

    def _generator(self, job: Job, index: int) -> Any:
        import numpy as np

        seed = job.sampling.seed
        return np.random.default_rng((seed + index) % (1 << 63) if seed is not None else secrets.randbits(63))

    def _sample(self, logits: Any, rows: list[Row]) -> list[int]:
        """Per-row sampling: argmax where temperature is 0, else temperature + top_p with the row's generator."""
        import numpy as np

        out = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            s = r.job.sampling
            if s.temperature <= 0:
                continue
            x = logits[i].astype(np.float64) / s.temperature
            w = np.exp(x - x.max())
            if s.top_p < 1:
                order = np.argsort(-w, kind="stable")
                p = w[order] / w.sum()
                w[order[(np.cumsum(p) - p) >= s.top_p]] = 0  # keep tokens until their mass reaches top_p (first always)
            c = np.cumsum(w)
            out[i] = int(np.searchsorted(c, r.gen.random() * c[-1], side="right"))
        return out

    def _decode(self, ids: list[int]) -> str:
        return self.gm.decode(ids)

    def _is_eos(self, token: int) -> bool:
        return self.gm.is_eog(token)

    def _prune(self) -> None:
        """Drop finished rows and free their slots."""
        keep = []
        for r in self._rows:
            if r.done is None:
                keep.append(r)
            elif r.seq >= 0:
                self.slots.release(r.seq)
        self._rows = keep
