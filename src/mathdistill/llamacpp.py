"""llama.cpp as a generation backend: any GGUF file (an export, the base package's file, a user's file).

- :class:`GGUFModel`: one GGUF loaded through llama-cpp-python's C API (``llama_cpp``): its own tokenizer
  (``tokenize``, ``piece``), end-of-generation tokens, training context and chat template.
- :class:`Slots`: a llama.cpp context of sequence slots (one ``seq_id`` each, one KV stream each) fed through one
  ``llama_batch`` per ``llama_decode`` call; a finished sequence frees its KV cells and slot for the next one
  (continuous batching). The eval backend and ``serve --engine llamacpp``
  (:mod:`mathdistill.serve.llamacpp_engine`) both decode through it.
- :func:`generate_parallel`: greedy decoding of many prompts together on :class:`Slots`: up to ``parallel``
  sequences share every ``llama_decode`` call; the next prompt takes a freed slot. Stopping rules are those of the
  transformers backend: an end-of-generation token (EOS, end of turn ``<|im_end|>``), the final answer complete
  (:func:`mathdistill.backends.answer_complete` on the last ``TAIL_TOKENS`` tokens), or the token budget.
- :class:`LlamaCppBackend`: the eval backend (``--backend llamacpp``) on a GGUF file, or on an f16 GGUF written
  once from a model folder or LoRA run (:func:`gguf_file_of`); MLS from the model's own files, as for every
  backend (for a GGUF: its size on disk).

Greedy is an argmax over the logits llama.cpp returns, taken here for each row, so per-row forcing (the
calculator) would be exact; it is not wired in: ``--calculator`` stays on the transformers backend.
Without llama-cpp-python, :func:`require` raises a one-line :class:`UserError` saying how to install it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import TAIL_TOKENS, Backend, Generation, GenerationConfig, answer_complete
from .errors import UserError
from .models import ModelSpec, model_bytes
from .progress import bar, info
from .prompts import CHATML_TEMPLATE, instruction_for, messages
from .records import Problem

INSTALL = "pip install 'mathdistill[llamacpp]' (pip compiles llama-cpp-python from source the first time: ~37 min on 2 busy cores)"


def require() -> Any:
    """The ``llama_cpp`` module, quiet (llama.cpp's own log at error level only); :class:`UserError` without it."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--backend llamacpp needs llama-cpp-python: {INSTALL}") from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def available() -> bool:
    try:
        require()
    except UserError:
        return False
    return True


class GGUFModel:
    """A GGUF file loaded by llama.cpp (``vocab_only``: tokenizer and metadata only, no weights)."""

    def __init__(self, path: str | Path, vocab_only: bool = False):
        L = self.L = require()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such GGUF file")
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.vocab_only = vocab_only
        self.model = L.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise UserError(f"{self.path}: llama.cpp could not load this GGUF (run with a newer llama-cpp-python, "
                            "or check the file with `python -m gguf.scripts.gguf_dump`)")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        if getattr(self, "model", None):
            self.L.llama_model_free(self.model)
            self.model = None

    def __enter__(self) -> GGUFModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown: llama_cpp may be gone already)
            pass

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self.L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids as llama.cpp splits ``text`` (``parse_special``: ``<|im_start|>`` is one control token)."""
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (self.L.llama_token * cap)()
        n = self.L.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (self.L.llama_token * cap)()
            n = self.L.llama_tokenize(self.vocab, raw, len(raw), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for; control tokens (EOS, ``<|im_end|>``) give b"" (skip_special_tokens)."""
        p = self._pieces.get(token)
        if p is None:
            buf = ctypes.create_string_buffer(256)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            p = self._pieces[token] = buf.raw[:n]
        return p

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.piece(t) for t in ids).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self.L.llama_vocab_is_eog(self.vocab, token))

    def n_ctx_train(self) -> int:
        return int(self.L.llama_model_n_ctx_train(self.model))

    def token_text(self, token: int) -> str:
        return self.L.llama_vocab_get_text(self.vocab, token).decode("utf-8", errors="replace")

    def chat_template(self) -> str:
        """The file's ``tokenizer.chat_template``, or ChatML (as :func:`mathdistill.models.prepare_tokenizer`)."""
        return self.meta("tokenizer.chat_template") or CHATML_TEMPLATE

    def render_chat(self, msgs: list[dict[str, str]]) -> str:
        """``msgs`` rendered by the file's chat template with the generation prompt (the Jinja renderer of
        transformers' ``apply_chat_template``, special tokens named as the file names them)."""
        from transformers.utils.chat_template_utils import render_jinja_template

        special = {k: self.token_text(t) for k, t in (("bos_token", self.L.llama_vocab_bos(self.vocab)),
                                                         ("eos_token", self.L.llama_vocab_eos(self.vocab))) if t >= 0}
        out, _ = render_jinja_template([msgs], chat_template=self.chat_template(), add_generation_prompt=True, **special)
        return out[0]

    def render(self, p: Problem) -> str:
        """The prompt the transformers backend renders (same messages, same Jinja renderer as ``apply_chat_template``)."""
        return self.render_chat(messages(instruction_for(p.lang), p.question))

    def kv_bytes_per_cell(self) -> int:
        """Bytes of K and V cache per token (f16, every layer), as llama.cpp allocates them."""
        L = self.L
        heads = max(1, L.llama_model_n_head(self.model))
        return 2 * L.llama_model_n_layer(self.model) * L.llama_model_n_head_kv(self.model) * (L.llama_model_n_embd(self.model) // heads) * 2


@dataclass
class _Row:
    index: int  # position in the caller's prompt list
    prompt: list[int]
    budget: int
    ids: list[int] = field(default_factory=list)


def default_threads() -> int:
    """llama.cpp threads when none are given: the cores not already busy (cores minus the 1-minute load average,
    rounded; at least 1). ggml's threads wait for each other at a spinning barrier after every op, so one thread
    that the OS parks behind another job stalls them all: on 2 cores at a load of ~6, 2 threads decoded 9 tokens/s
    and 1 thread 39 (SmolLM2-135M f16, 16 sequences); llama.cpp's own advice is never to oversubscribe cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


MAX_SEQ = 256  # llama.cpp's LLAMA_MAX_SEQ (src/llama-cparams.h): most sequences one context holds


class Slots:
    """A llama.cpp context with ``n_seq`` sequence slots, each its own KV stream of ``cells`` cells (rounded up
    to 256; ``kv_unified`` off: a sequence attends over its own cells only), fed through one ``llama_batch`` of
    at most ``n_batch`` tokens per :meth:`decode`. ``threads``: llama.cpp threads (None: :func:`default_threads`).
    Used from one thread at a time. Raises :class:`UserError` (ending in ``hint``) when llama.cpp cannot
    allocate the context or a decode fails."""

    def __init__(self, gm: GGUFModel, n_seq: int, cells: int, n_batch: int, threads: int | None = None, hint: str = ""):
        L = self.L = gm.L
        self.gm, self.n_seq, self.n_batch, self.hint = gm, n_seq, n_batch, hint
        if n_seq > MAX_SEQ:
            raise UserError(f"llama.cpp decodes at most {MAX_SEQ} sequences together, {n_seq} asked for{hint}")
        self.cells = -(-cells // 256) * 256
        self.threads = threads or default_threads()
        cp = L.llama_context_default_params()
        cp.n_ctx = n_seq * self.cells
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq
        cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(gm.model, cp)
        if not self.ctx:
            raise UserError(f"llama.cpp could not allocate a context of {cp.n_ctx} tokens for {n_seq} sequences{hint}")
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self.mem = L.llama_get_memory(self.ctx)
        self.free = list(range(n_seq - 1, -1, -1))
        self.pos: dict[int, int] = {}

    def take(self) -> int:
        """A free sequence slot (``IndexError`` when none is)."""
        seq = self.free.pop()
        self.pos[seq] = 0
        return seq

    def release(self, seq: int) -> None:
        """Free ``seq``'s KV cells and slot."""
        self.L.llama_memory_seq_rm(self.mem, seq, -1, -1)
        del self.pos[seq]
        self.free.append(seq)

    def clear(self) -> None:
        """Every slot free, the KV cache empty."""
        self.L.llama_memory_clear(self.mem, True)
        self.free, self.pos = list(range(self.n_seq - 1, -1, -1)), {}

    def decode(self, feed: list[tuple[int, list[int], bool]]):
        """One ``llama_decode`` over ``feed``: (seq, tokens appended at the sequence's next positions, logits
        wanted after its last token). Returns the logits wanted, float32 ``[n_wanted, n_vocab]``, in feed order."""
        import numpy as np

        L, batch, k, outs = self.L, self.batch, 0, []
        for seq, toks, want in feed:
            p = self.pos[seq]
            for j, t in enumerate(toks):
                last = want and j == len(toks) - 1
                batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.seq_id[k][0], batch.logits[k] = t, p + j, 1, seq, last
                if last:
                    outs.append(k)
                k += 1
            self.pos[seq] = p + len(toks)
        batch.n_tokens = k
        rc = L.llama_decode(self.ctx, batch)
        if rc != 0:
            raise UserError(f"llama.cpp decode failed (code {rc}) with {len(feed)} sequences{self.hint}")
        n = self.gm.n_vocab
        return np.stack([np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, i), shape=(n,)) for i in outs]) \
            if outs else np.empty((0, n), np.float32)

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self.L.llama_batch_free(self.batch)
            self.L.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> Slots:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def generate_parallel(gm: GGUFModel, prompts: list[list[int]], max_new_tokens: int, parallel: int = 32,
                      stop_at_answer: bool = True, threads: int | None = None, desc: str = "eval",
                      batch_tokens: int = 512) -> list[Generation]:
    """Greedy completions of tokenized ``prompts`` (ids in ``gm``'s vocabulary), in prompt order.

    Up to ``parallel`` sequences decode together (:class:`Slots`), one token each per ``llama_decode`` call;
    waiting prompts are prefilled in the same calls while slots are free (at most ``batch_tokens`` tokens a
    call, a longer prompt alone). ``threads``: llama.cpp threads (None: :func:`default_threads`). A prompt of at
    least the model's training context is ``prompt_too_long``; otherwise its budget is
    ``min(max_new_tokens, context - prompt)``. Raises :class:`UserError` when llama.cpp cannot allocate the
    context (KV cache of ``parallel x (longest prompt + budget)`` cells)."""
    limit = gm.n_ctx_train() or None
    results: list[Generation | None] = [None] * len(prompts)
    queue: deque[_Row] = deque()
    for i, ids in enumerate(prompts):
        if limit is not None and len(ids) >= limit:
            results[i] = Generation("", 0, "prompt_too_long", len(ids),
                                    error=f"prompt has {len(ids)} tokens; the model's context is {limit}")
        else:
            queue.append(_Row(i, ids, max_new_tokens if limit is None else min(max_new_tokens, limit - len(ids))))
    if not queue:
        return results  # type: ignore[return-value]
    n_seq = max(1, min(parallel, len(queue)))
    n_batch = max(batch_tokens, n_seq, max(len(r.prompt) for r in queue))
    active: dict[int, _Row] = {}
    n_tokens, t0 = 0, time.monotonic()
    with Slots(gm, n_seq, max(len(r.prompt) + r.budget for r in queue), n_batch, threads,
               hint="; lower --batch-size or --max-new-tokens") as slots, \
            bar(desc, total=len(prompts), unit="problem") as b:
        b.advance(len(prompts) - len(queue))
        while queue or active:
            # this call: the next token of each running sequence, then whole prompts of waiting ones while
            # slots are free and the batch has room
            feed = [(seq, [r.ids[-1]], True) for seq, r in active.items()]
            n = len(feed)
            while queue and slots.free and (not feed or n + len(queue[0].prompt) <= n_batch):
                r, seq = queue.popleft(), slots.take()
                feed.append((seq, r.prompt, True))
                n += len(r.prompt)
                active[seq] = r
            for (seq, _, _), logits in zip(feed, slots.decode(feed)):
                r = active[seq]
                tok = int(logits.argmax())
                r.ids.append(tok)
                n_tokens += 1  # the progress rate counts tokens as they come, not when a sequence ends
                if gm.is_eog(tok) or (stop_at_answer and answer_complete(gm.decode(r.ids[-TAIL_TOKENS:]))):
                    reason = "stop"
                elif len(r.ids) >= r.budget:
                    reason = "length"
                else:
                    continue
                results[r.index] = Generation(gm.decode(r.ids), len(r.ids), reason, len(r.prompt))
                del active[seq]
                slots.release(seq)
                b.advance()
            b.set_postfix(f"{n_tokens / max(time.monotonic() - t0, 1e-9):.1f} tok/s")
    return results  # type: ignore[return-value]


def gguf_file_of(spec: ModelSpec) -> Path:
    """The GGUF that llama.cpp runs for a model spec: the file itself, or, for a model folder or a LoRA run, an
    f16 GGUF of the merged model written once under ``$MATHDISTILL_HOME/gguf`` (keyed by the weight files).
    Raises :class:`UserError` for a hub id not on disk, or a tokenizer llama.cpp would split differently."""
    if spec.kind == "gguf" and not spec.adapter:
        return Path(spec.path) / str(spec.gguf_file)
    if not spec.served_files:
        raise UserError(f"--backend llamacpp runs a local GGUF or model folder; {spec.name!r} has no local weight files")
    from hashlib import sha256

    from .gguf_export import write_gguf
    from .io import file_sha256
    from .models import home, load

    key = sha256("|".join(f"{Path(f).name}:{Path(f).stat().st_size}:{file_sha256(f, limit=1 << 24)}"
                          for f in spec.served_files).encode()).hexdigest()[:16]
    dest = home() / "gguf" / key / "model-f16.gguf"
    if dest.is_file():
        return dest
    info(f"llamacpp: writing {spec.name} as an f16 GGUF once (cached in {dest.parent}); "
         "MLS stays that of the model's own files")
    model, tok = load(spec, dtype="float32", merge=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        write_gguf(model, tok, tmp, "f16")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class LlamaCppBackend(Backend):
    """Eval backend on llama.cpp: greedy, ``parallel`` sequences through the batch API, the transformers
    backend's stopping rules; tokens counted in the GGUF's own vocabulary; MLS from the file's bytes."""

    name = "llamacpp"

    def __init__(self, spec: ModelSpec, max_new_tokens: int, parallel: int = 32, stop_at_answer: bool = True,
                 threads: int | None = None, seed: int = 0):
        self.spec, self.path = spec, gguf_file_of(spec)
        self.max_new_tokens, self.parallel, self.stop_at_answer = max_new_tokens, parallel, stop_at_answer
        self.threads, self.seed = threads, seed
        self.gm = GGUFModel(self.path)

    @classmethod
    def from_config(cls, cfg: GenerationConfig, spec: ModelSpec) -> LlamaCppBackend:
        """From a :class:`mathdistill.backends.GenerationConfig` (``batch_size`` is the number of parallel
        sequences); ``threads`` when the config has it (eval's), else the idle cores (:func:`default_threads`)."""
        return cls(spec, cfg.max_new_tokens, cfg.batch_size, cfg.stop_at_answer, getattr(cfg, "threads", None), cfg.seed)

    def model_bytes(self) -> int | None:
        return model_bytes(self.spec)

    def describe(self) -> dict[str, Any]:
        import llama_cpp

        return {"backend": self.name, "model_files": [str(self.path)], "llama_cpp_python": llama_cpp.__version__,
                "parallel": self.parallel, "threads": self.threads or default_threads(), "context": self.gm.n_ctx_train(),
                "sampling": "greedy (argmax)", "seed": self.seed}

    def generate(self, problems: list[Problem]) -> list[Generation]:
        prompts = [self.gm.tokenize(self.gm.render(p)) for p in problems]
        return generate_parallel(self.gm, prompts, self.max_new_tokens, self.parallel, self.stop_at_answer, self.threads)


def tokenizer_mismatches(path: str | Path, tok: Any, texts: list[str]) -> list[str]:
    """The texts that llama.cpp tokenizes differently from the HF tokenizer ``tok`` (no special tokens added;
    ``<|im_start|>`` and the like parsed as control tokens by both)."""
    with GGUFModel(path, vocab_only=True) as gm:
        return [t for t in texts if gm.tokenize(t) != tok(t, add_special_tokens=False)["input_ids"]]
