"""Eval generation backends behind one interface: ``backend.generate(problems) -> list[Generation]``.

- ``transformers`` (default): greedy batched generation on the KV cache; prompts sorted by token length
  and left-padded, each sequence stopped at EOS or, with ``stop_at_answer``, as soon as its final answer is
  complete (:func:`answer_complete`). Answers equal those of one-prompt-at-a-time greedy generation.
- ``openai``: any OpenAI-compatible endpoint through :mod:`mathdistill.client` (retries, cache); greedy
  (temperature 0); tokens from the response's ``usage``.
- ``vllm``: imported only when asked for (GPU); the same answer-complete truncation as ``transformers``.
- ``llamacpp``: llama.cpp on a GGUF file (:mod:`mathdistill.llamacpp`, imported only when asked for).

Nothing here raises on a bad problem: a prompt longer than the model's context (``prompt_too_long``), a failed
call (``error``) or a model that never stops (``length``) is a :class:`Generation` that scores as a miss.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field

from .calculator import CalcState, Calculator
from .config import StageConfig
from .errors import UserError
from .models import DEFAULT_STUDENT, ModelSpec, end_of_turn_ids, load, load_path, load_tokenizer, model_bytes, resolve
from .progress import bar, info
from .prompts import instruction_for, messages
from .records import Problem

class GenerationConfig(StageConfig):
    """How a backend generates (greedy): which backend, the token budget and batching, and the endpoint settings
    of ``openai``. :class:`mathdistill.evaluate.EvalConfig` extends it with what is scored and how."""

    backend: Literal["transformers", "openai", "vllm", "llamacpp"] = Field("transformers", description="generation backend "
                                                                           "(llamacpp: llama.cpp on a GGUF file)")
    max_new_tokens: int = Field(256, ge=1, description="completion token limit; a chain that hits it is a miss")
    batch_size: int = Field(32, ge=1, description="prompts per generation batch (transformers backend; finished ones leave it); sequences decoded together (llamacpp)")
    stop_at_answer: bool = Field(True, description="stop a sequence once its final answer is complete")
    calculator: bool = Field(False, description="calculator-aware decoding: after 'expression =' the exact result is "
                             "written for the model (transformers backend)")
    seed: int = Field(0, description="torch / endpoint seed (generation is greedy; recorded for comparisons)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype (fp32 for reproducible scores)")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint of the model (backend openai)")
    concurrency: int = Field(16, ge=1, description="endpoint calls in flight at once (backend openai)")
    timeout_s: float = Field(600.0, gt=0, description="per-call timeout, seconds (backend openai)")
    max_retries: int = Field(5, ge=0, description="retries per call on 429/5xx/timeouts (backend openai)")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields passed to the endpoint")


TAIL_TOKENS = 24  # the answer-complete check decodes this many trailing tokens per step (an answer fits)
PRUNE_EVERY = 8  # tokens generated between two removals of finished sequences from a batch

_DONE = [
    re.compile(r"####\s*-?[\d,]*\.?\d+\s*[^\d.,\s/]"),
    re.compile(r"####\s*-?[\d,]*\.?\d+\s*\n"),
    re.compile(r"answer is[:\s]*\$?\s*-?[\d,]*\.?\d+(?:/\d+)?\s*\.(?:\s|$)", re.I),
    re.compile(r"\\boxed\{[^{}]*\}"),
]


def answer_complete(text: str) -> bool:
    """Has the text finished writing its final answer?"""
    return any(p.search(text) for p in _DONE)


@dataclass
class Generation:
    """What a backend made of one problem."""

    output: str
    tokens: int  # completion tokens, EOS included
    finish_reason: str  # stop | length | prompt_too_long | error
    prompt_tokens: int | None = None
    error: str | None = None
    calculator_forced: int = 0  # results the calculator wrote into this output (``--calculator``)


def render_prompt(tok, p: Problem) -> str:
    return tok.apply_chat_template(messages(instruction_for(p.lang), p.question), add_generation_prompt=True, tokenize=False)


def eos_ids_of(model, tok) -> set[int]:
    """Ids that end a completion: the tokenizer's and the generation config's EOS, and the chat template's
    end-of-turn token when it is not the EOS (a base checkpoint whose EOS is ``<|endoftext|>`` still stops at
    ``<|im_end|>``)."""
    eos = tok.eos_token_id
    ids = (set(eos if isinstance(eos, list) else [eos]) - {None}) | end_of_turn_ids(tok)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return ids


def context_limit(model, tok) -> int | None:
    """Tokens the model can attend to (prompt + completion), when its config says."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg  # a multimodal model: its text part
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(tok, "model_max_length", None)
    return v if isinstance(v, int) and 0 < v < 1_000_000 else None


class AnswerStop:
    """Stopping criterion for ``model.generate``: per sequence, True once its answer is complete (when
    ``stop_at_answer``) or it has used its own token budget. Records where each sequence stopped, so
    token counts do not depend on the padding of other sequences in the batch."""

    def __init__(self, tok, prompt_len: int, budgets: list[int], stop_at_answer: bool = True):
        self.tok, self.prompt_len, self.budgets, self.stop_at_answer = tok, prompt_len, budgets, stop_at_answer
        self.done_at: list[int | None] = [None] * len(budgets)  # generated length when it stopped
        self.why: list[str | None] = [None] * len(budgets)

    def __call__(self, input_ids, scores, **kw):
        import torch

        gen = input_ids[:, self.prompt_len:]
        n = gen.shape[1]
        tails = self.tok.batch_decode(gen[:, -TAIL_TOKENS:], skip_special_tokens=True) if self.stop_at_answer else None
        flags = []
        for j in range(gen.shape[0]):
            if self.done_at[j] is None:
                if tails is not None and answer_complete(tails[j]):
                    self.done_at[j], self.why[j] = n, "stop"
                elif n >= self.budgets[j]:
                    self.done_at[j], self.why[j] = n, "length"
            flags.append(self.done_at[j] is not None)
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def finish_row(ids: list[int], eos_ids: set[int], done_at: int | None, why: str | None, budget: int) -> tuple[int, str]:
    """(completion tokens, finish reason) of one generated row: the first EOS, or where the stopping
    criterion stopped it, or the token budget."""
    for i, t in enumerate(ids[: done_at or len(ids)]):
        if t in eos_ids:
            return i + 1, "stop"
    if done_at is not None:
        return done_at, why or "stop"
    return min(len(ids), budget), "length"


def truncate_at_answer(tok, ids: list[int], eos_ids: set[int], budget: int, stop_at_answer: bool) -> tuple[int, str]:
    """The same stopping rule as :class:`AnswerStop`, applied after the fact to a finished row of ids."""
    for k in range(1, min(len(ids), budget) + 1):
        if ids[k - 1] in eos_ids:
            return k, "stop"
        if stop_at_answer and answer_complete(tok.decode(ids[max(0, k - TAIL_TOKENS): k], skip_special_tokens=True)):
            return k, "stop"
    return min(len(ids), budget), "length"


class Backend:
    """Interface: ``generate(problems)`` in problem order; ``model_bytes()`` for MLS (None: unknown)."""

    name = "backend"

    def generate(self, problems: list[Problem]) -> list[Generation]:
        raise NotImplementedError

    def model_bytes(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, cfg: GenerationConfig, spec: ModelSpec, model=None, tok=None):
        self.cfg, self.spec = cfg, spec
        if model is None:
            model, tok = load(spec, dtype=cfg.dtype, merge=True)  # merged LoRA: same function, no adapter overhead
        self.model, self.tok = model, tok
        self.tokens_per_s: float | None = None
        self.calculator_forced = 0

    def model_bytes(self) -> int | None:
        return model_bytes(self.spec)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_files": list(self.spec.served_files), "dtype": self.cfg.dtype,
                "batch_size": self.cfg.batch_size, "context": context_limit(self.model, self.tok),
                **({"calculator_forced": self.calculator_forced} if self.cfg.calculator else {})}

    def generate(self, problems: list[Problem]) -> list[Generation]:
        prompts = [render_prompt(self.tok, p) for p in problems]
        gens = generate_batched(self.model, self.tok, prompts, self.cfg.max_new_tokens, self.cfg.batch_size,
                                self.cfg.stop_at_answer, calculator=self.cfg.calculator)
        self.calculator_forced = sum(g.calculator_forced for g in gens)
        return gens


def _cache_kwarg() -> str:
    """``generate``'s name for a KV cache passed in (``cache`` since transformers 5.x, ``past_key_values`` before)."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES

        return "cache" if "cache" in ALL_CACHE_NAMES else "past_key_values"
    except ImportError:
        return "past_key_values"


class _CalcProcessor:
    """``model.generate`` logits processor: the calculator's per-row forcing (``states`` follow the batch rows)."""

    def __init__(self, calc, states):
        self.calc, self.states = calc, states

    def __call__(self, input_ids, scores):
        self.calc.apply(scores, input_ids[:, -2:].tolist(), lambda j, n: input_ids[j, -n:].tolist(), self.states)
        return scores


def generate_batched(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int,
                     stop_at_answer: bool = True, desc: str = "eval", prune_every: int | None = PRUNE_EVERY,
                     calculator: bool = False) -> list[Generation]:
    """Greedy generation, ``batch_size`` prompts at a time grouped by token length (left padding, KV cache).

    ``model.generate`` keeps computing a sequence after it has stopped (it only pads it), so a batch would run
    at the pace of its longest answer. Instead the batch is generated ``prune_every`` tokens at a time: between
    calls, finished sequences leave the batch and the KV cache (``Cache.batch_select_indices``) and ``generate``
    continues the others from the cache. ``prune_every=None``: one ``generate`` call per batch.

    ``calculator``: exact arithmetic results are forced after a trailing ``expression =``
    (:class:`mathdistill.calculator.Calculator`, one state per sequence, kept across calls and pruning).
    """
    import torch
    from transformers import DynamicCache, LogitsProcessorList, StoppingCriteriaList

    calc = Calculator(tok) if calculator else None

    tok.padding_side = "left"
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    limit = context_limit(model, tok)
    eos_ids = eos_ids_of(model, tok)
    cache_kw = _cache_kwarg()
    results: list[Generation | None] = [None] * len(prompts)
    todo = []
    for i, ids in enumerate(enc):
        if limit is not None and len(ids) >= limit:
            results[i] = Generation("", 0, "prompt_too_long", len(ids),
                                    error=f"prompt has {len(ids)} tokens; the model's context is {limit}")
        else:
            todo.append(i)
    order = sorted(todo, key=lambda i: len(enc[i]))
    n_tokens, t0 = 0, time.monotonic()
    with bar(desc, total=len(prompts), unit="problem") as b:
        b.advance(len(prompts) - len(todo))
        for s in range(0, len(order), batch_size):
            rows = order[s: s + batch_size]
            budgets = [max_new_tokens if limit is None else min(max_new_tokens, limit - len(enc[i])) for i in rows]
            batch = tok.pad({"input_ids": [enc[i] for i in rows]}, return_tensors="pt", padding=True)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            plen = ids.shape[1]
            cache = DynamicCache(config=model.config)
            done = 0  # tokens generated so far by the sequences still in the batch
            states = [CalcState() for _ in rows] if calc else []
            while rows:
                step = max(budgets) - done if prune_every is None else min(prune_every, max(budgets) - done)
                stop = AnswerStop(tok, plen, budgets, stop_at_answer)
                procs = LogitsProcessorList([_CalcProcessor(calc, states)] if calc else [])
                with torch.inference_mode():
                    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=step, do_sample=False, num_beams=1,
                                         pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos_ids),
                                         stopping_criteria=StoppingCriteriaList([stop]), logits_processor=procs,
                                         temperature=None, top_p=None,
                                         top_k=None, **{cache_kw: cache})
                new = out.shape[1] - plen - done
                keep = []
                for j, i in enumerate(rows):
                    row = out[j, plen:].tolist()
                    finished = (stop.done_at[j] is not None or any(t in eos_ids for t in row[done:])
                                or len(row) >= budgets[j] or new < step)
                    if not finished:
                        keep.append(j)
                        continue
                    k, reason = finish_row(row, eos_ids, stop.done_at[j], stop.why[j], budgets[j])
                    results[i] = Generation(tok.decode(row[:k], skip_special_tokens=True), k, reason, len(enc[i]),
                                            calculator_forced=states[j].forced if calc else 0)
                    n_tokens += k
                    b.advance()
                done += new
                if keep and len(keep) < len(rows):
                    sel = torch.tensor(keep)
                    cache.batch_select_indices(sel)
                    out, mask = out[sel], mask[sel]
                    rows, budgets = [rows[j] for j in keep], [budgets[j] for j in keep]
                    states = [states[j] for j in keep] if calc else states
                elif not keep:
                    rows = []
                ids = out
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], ids.shape[1] - mask.shape[1]))], dim=1)
            b.set_postfix(f"{n_tokens / max(time.monotonic() - t0, 1e-9):.1f} tok/s")
    return results  # type: ignore[return-value]


_CONTEXT_ERR = re.compile(r"context length|maximum context|too many tokens|prompt is too long|max_model_len", re.I)


class OpenAIBackend(Backend):
    """Any OpenAI-compatible endpoint; greedy; tokens from ``usage.completion_tokens``."""

    name = "openai"

    def __init__(self, cfg: GenerationConfig, model: str, cache_path: Path | None = None, tokenizer: Any = None):
        from .client import ChatClientConfig

        if not cfg.base_url:
            raise UserError("eval --backend openai needs --base-url URL (and --model NAME, the model at that endpoint)")
        self.cfg, self.model, self.cache_path, self.tok = cfg, model, cache_path, tokenizer
        self.client = ChatClientConfig(base_url=cfg.base_url, model=model, temperature=0.0, top_p=1.0,
                                       max_tokens=cfg.max_new_tokens, seed=cfg.seed, concurrency=cfg.concurrency,
                                       timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, extra_body=cfg.extra_body)
        self.estimated_tokens = 0

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "base_url": self.cfg.base_url, "endpoint_model": self.model,
                "tokens_estimated": self.estimated_tokens}

    def _count(self, text: str) -> int:
        self.estimated_tokens += 1
        if self.tok is not None:
            return len(self.tok(text, add_special_tokens=False)["input_ids"]) + 1
        return max(1, math.ceil(len(text) / 4))  # no usage and no tokenizer: about 4 characters a token

    def generate(self, problems: list[Problem]) -> list[Generation]:
        from .client import ChatRequest, run_requests

        reqs = [ChatRequest(messages(instruction_for(p.lang), p.question), key=p.id) for p in problems]
        out = []
        for r in run_requests(self.client, reqs, self.cache_path, desc="eval"):
            if r.error:
                reason = "prompt_too_long" if _CONTEXT_ERR.search(r.error) else "error"
                out.append(Generation("", 0, reason, r.prompt_tokens, error=r.error))
                continue
            text = f"<think>{r.reasoning}</think>\n{r.content}" if r.reasoning else (r.content or "")
            tokens = r.completion_tokens if r.completion_tokens is not None else self._count(text)
            reason = "length" if r.finish_reason == "length" else "stop"
            out.append(Generation(text, int(tokens), reason, r.prompt_tokens))
        if self.estimated_tokens:
            info(f"eval: the endpoint sent no usage for {self.estimated_tokens} answers; their tokens were "
                 + ("counted with the given tokenizer" if self.tok is not None else "estimated as characters/4"))
        return out


class VLLMBackend(Backend):
    """vLLM offline generation (GPU), greedy, with the answer-complete truncation of ``transformers``."""

    name = "vllm"

    def __init__(self, cfg: GenerationConfig, spec: ModelSpec):
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UserError("eval --backend vllm needs the vllm package (a GPU machine: pip install 'mathdistill[vllm]'); "
                            "use --backend transformers on CPU") from None
        from vllm import LLM

        self.cfg, self.spec = cfg, spec
        self.tok = load_tokenizer(spec)
        kw: dict[str, Any] = {"model": load_path(spec), "dtype": cfg.dtype, "seed": cfg.seed}
        if spec.adapter:
            kw["enable_lora"] = True
        self.llm = LLM(**kw)

    def model_bytes(self) -> int | None:
        return model_bytes(self.spec)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model_files": list(self.spec.served_files), "dtype": self.cfg.dtype}

    def generate(self, problems: list[Problem]) -> list[Generation]:
        from vllm import SamplingParams

        prompts = [render_prompt(self.tok, p) for p in problems]
        enc = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        limit = getattr(getattr(getattr(self.llm, "llm_engine", None), "model_config", None), "max_model_len", None)
        limit = limit or context_limit(None, self.tok)
        eos_ids = eos_ids_of(None, self.tok)
        results: list[Generation | None] = [None] * len(problems)
        todo = [i for i, ids in enumerate(enc) if limit is None or len(ids) < limit]
        for i in set(range(len(problems))) - set(todo):
            results[i] = Generation("", 0, "prompt_too_long", len(enc[i]),
                                    error=f"prompt has {len(enc[i])} tokens; the model's context is {limit}")
        params = SamplingParams(temperature=0.0, max_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed)
        lora = None
        if self.spec.adapter:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("student", 1, self.spec.adapter)
        outs = self.llm.generate([{"prompt_token_ids": enc[i]} for i in todo], params, lora_request=lora) if todo else []
        for i, o in zip(todo, outs):
            ids = list(o.outputs[0].token_ids)
            budget = self.cfg.max_new_tokens if limit is None else min(self.cfg.max_new_tokens, limit - len(enc[i]))
            k, reason = truncate_at_answer(self.tok, ids, eos_ids, budget, self.cfg.stop_at_answer)
            results[i] = Generation(self.tok.decode(ids[:k], skip_special_tokens=True), k, reason, len(enc[i]))
        return results  # type: ignore[return-value]


# ---- the registry: ``GenerationConfig.backend`` -> a factory ----------------------------------------------

BackendFactory = Callable[[GenerationConfig, "str | None", "str | None", Path], Backend]


def _transformers(cfg: GenerationConfig, model: str | None, adapter: str | None, workdir: Path) -> Backend:
    return TransformersBackend(cfg, resolve(model or DEFAULT_STUDENT, adapter))


def _openai(cfg: GenerationConfig, model: str | None, adapter: str | None, workdir: Path) -> Backend:
    if not model:
        raise UserError("eval --backend openai needs --model NAME (the model's name at the endpoint)")
    return OpenAIBackend(cfg, model, workdir / "cache.sqlite")


def _vllm(cfg: GenerationConfig, model: str | None, adapter: str | None, workdir: Path) -> Backend:
    return VLLMBackend(cfg, resolve(model or DEFAULT_STUDENT, adapter))


def _llamacpp(cfg: GenerationConfig, model: str | None, adapter: str | None, workdir: Path) -> Backend:
    from .llamacpp import LlamaCppBackend  # only when asked for (llama-cpp-python is an extra)

    return LlamaCppBackend.from_config(cfg, resolve(model or DEFAULT_STUDENT, adapter))


BACKENDS: dict[str, BackendFactory] = {"transformers": _transformers, "openai": _openai, "vllm": _vllm,
                                       "llamacpp": _llamacpp}
"""Each ``--backend`` name and how to build it from (config, ``--model``, ``--adapter``, the eval's output folder,
for caches). A new backend: a :class:`Backend` subclass, a factory here, and its name in ``GenerationConfig.backend``."""


def make_backend(cfg: GenerationConfig, model: str | None, adapter: str | None, workdir: Path) -> Backend:
    """The backend ``cfg.backend`` names, ready to generate; :class:`UserError` when its inputs are missing."""
    return BACKENDS[cfg.backend](cfg, model, adapter, Path(workdir))
