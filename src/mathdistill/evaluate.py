"""Stage ``eval``: run a model on eval problems (greedy) and score AS, CQS, ES, MLS and Overall.

The transformers backend batches prompts of similar length with left padding and the KV cache, and stops
each sequence at EOS or, with ``stop_at_answer``, as soon as its final answer is complete
(``#### N``, "The answer is N.", ``\\boxed{...}``). Evaluation runs in fp32 on CPU by default; the
sampling settings, problem ids and package versions are written next to every score.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from rich.markup import escape

from .answers import answers_equal, extract_answer
from .config import StageConfig
from .errors import UserError
from .io import package_versions, read_jsonl, write_json, write_jsonl
from .models import DEFAULT_STUDENT, load, model_bytes, resolve
from .progress import bar, info
from .prompts import instruction_for, messages
from .records import Prediction, Problem
from .scores import ScoreConfig, aggregate, cqs_proxy


class EvalConfig(StageConfig):
    """How a model is run on the eval set and scored."""

    backend: Literal["transformers"] = Field("transformers", description="generation backend")
    max_new_tokens: int = Field(256, ge=1, description="completion token limit; a chain that hits it is a miss")
    batch_size: int = Field(16, ge=1, description="prompts per generation batch")
    stop_at_answer: bool = Field(True, description="stop a sequence once its final answer is complete")
    limit: int | None = Field(None, ge=1, description="score only the first N problems")
    seed: int = Field(0, description="torch seed (generation is greedy; recorded for comparisons)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype (fp32 for reproducible scores)")
    threads: int | None = Field(None, description="torch threads (None: all cores)")
    score: ScoreConfig = Field(default_factory=ScoreConfig, description="score constants and weights")


_DONE = [
    re.compile(r"####\s*-?[\d,]*\.?\d+\s*[^\d.,\s/]"),
    re.compile(r"####\s*-?[\d,]*\.?\d+\s*\n"),
    re.compile(r"answer is[:\s]*\$?\s*-?[\d,]*\.?\d+(?:/\d+)?\s*\.(?:\s|$)", re.I),
    re.compile(r"\\boxed\{[^{}]*\}"),
]


def answer_complete(text: str) -> bool:
    """Has the text finished writing its final answer?"""
    return any(p.search(text) for p in _DONE)


class AnswerStop:
    """Per-sequence stopping criterion for ``generate``: True where the answer is complete."""

    def __init__(self, tok, prompt_len: int, tail_tokens: int = 24):
        self.tok, self.prompt_len, self.tail = tok, prompt_len, tail_tokens

    def __call__(self, input_ids, scores, **kw):
        import torch

        gen = input_ids[:, self.prompt_len:]
        tails = self.tok.batch_decode(gen[:, -self.tail:], skip_special_tokens=True)
        return torch.tensor([answer_complete(t) for t in tails], dtype=torch.bool, device=input_ids.device)


def _count_tokens(row, eos_ids: set[int], pad_id: int) -> tuple[int, str]:
    """Completion tokens (EOS included) and finish reason of one generated row."""
    ids = row.tolist()
    for i, t in enumerate(ids):
        if t in eos_ids or t == pad_id:
            return i + 1, "stop"
    return len(ids), "length"


def generate_transformers(model, tok, prompts: list[str], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Greedy batched generation; returns ``{"output", "tokens", "finish_reason"}`` in prompt order."""
    import torch
    from transformers import StoppingCriteriaList

    tok.padding_side = "left"
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(enc[i]))
    results: list[dict[str, Any] | None] = [None] * len(prompts)
    eos = tok.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    if gen_eos is not None:
        eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    n_tokens = 0
    t0 = time.monotonic()
    with bar("eval", total=len(prompts), unit="problem") as b:
        for s in range(0, len(order), cfg.batch_size):
            idx = order[s: s + cfg.batch_size]
            batch = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt", padding=True)
            plen = batch["input_ids"].shape[1]
            stops = StoppingCriteriaList([AnswerStop(tok, plen)]) if cfg.stop_at_answer else None
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=False, num_beams=1,
                                     pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos_ids),
                                     stopping_criteria=stops, temperature=None, top_p=None, top_k=None)
            for j, i in enumerate(idx):
                row = out[j, plen:]
                k, reason = _count_tokens(row, eos_ids, tok.pad_token_id)
                text = tok.decode(row[:k], skip_special_tokens=True)
                if reason == "length" and cfg.stop_at_answer and answer_complete(text):
                    reason = "stop"
                results[i] = {"output": text, "tokens": k, "finish_reason": reason}
                n_tokens += k
            b.advance(len(idx))
            b.set_postfix(f"{n_tokens / max(time.monotonic() - t0, 1e-9):.1f} tok/s")
    return results  # type: ignore[return-value]


def render_prompt(tok, p: Problem) -> str:
    return tok.apply_chat_template(messages(instruction_for(p.lang), p.question), add_generation_prompt=True, tokenize=False)


def score_outputs(probs: list[Problem], outs: list[dict[str, Any]]) -> list[Prediction]:
    preds = []
    for p, o in zip(probs, outs):
        ans = extract_answer(o["output"])
        correct = o["finish_reason"] != "length" and answers_equal(ans, p.answer)
        preds.append(Prediction(problem_id=p.id, source=p.source, output=o["output"], extracted_answer=ans,
                                reference=p.answer, correct=correct, tokens=o["tokens"],
                                finish_reason=o["finish_reason"], cqs=cqs_proxy(o["output"], p.question)))
    return preds


def evaluate(cfg: EvalConfig, problems_path: str | Path, out_dir: str | Path, model: str = DEFAULT_STUDENT,
             adapter: str | None = None, label: str | None = None) -> dict[str, Any]:
    """Score ``model`` (+ ``adapter``) on ``problems_path``; write ``predictions.jsonl`` and ``scores.json``."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    probs = [Problem.model_validate(r) for r in read_jsonl(problems_path)]
    if cfg.limit:
        probs = probs[: cfg.limit]
    if not probs:
        raise UserError(f"{problems_path}: no problems to evaluate")
    missing = [p.id for p in probs if p.answer is None]
    if missing:
        raise UserError(f"{problems_path}: {len(missing)} problems have no reference answer (first: {missing[0]}); eval needs one per problem")
    spec = resolve(model, adapter)
    m, tok = load(spec, dtype=cfg.dtype, merge=True)  # merged LoRA: same function, no adapter overhead per token
    prompts = [render_prompt(tok, p) for p in probs]
    t0 = time.monotonic()
    outs = generate_transformers(m, tok, prompts, cfg)
    dt = time.monotonic() - t0
    preds = score_outputs(probs, outs)
    write_jsonl(out / "predictions.jsonl", preds)
    scores = aggregate([p.model_dump() for p in preds], model_bytes(spec), cfg.score, cqs_kind="proxy")
    total_tokens = sum(p.tokens for p in preds)
    scores["meta"] = {
        "label": label or model, "model": model, "adapter": adapter, "model_files": list(spec.served_files),
        "backend": cfg.backend, "sampling": {"greedy": True, "max_new_tokens": cfg.max_new_tokens,
                                             "stop_at_answer": cfg.stop_at_answer, "seed": cfg.seed, "dtype": cfg.dtype},
        "limit": cfg.limit, "problems_file": str(problems_path),
        "problem_ids_sha256": hashlib.sha256("\n".join(p.id for p in probs).encode()).hexdigest(),
        "problem_ids": [p.id for p in probs], "gen_wall_s": round(dt, 2),
        "gen_tokens_per_s": round(total_tokens / dt, 2) if dt > 0 else None, "versions": package_versions(),
        "config": cfg.model_dump(mode="json"),
    }
    write_json(out / "scores.json", scores)
    info(f"eval {escape(label or model)}: AS {scores['AS']:.1f}  CQS(proxy) {scores['CQS']:.1f}  ES {scores['ES']:.1f}  "
         f"MLS {scores['MLS']:.1f}  Overall {scores['overall']:.1f}  ({scores['mean_tokens']:.0f} tokens/problem, "
         f"{scores['meta']['gen_tokens_per_s']} tok/s)")
    return scores
