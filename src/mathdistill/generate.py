"""Stage ``generate``: teacher traces for problems, behind one backend interface.

Backends:
- ``reference`` (embedded default): the chain shipped with the problem (GSM-Symbolic's ``answer_cot``, or the
  built-in solver's chain) becomes the teacher's trace. No model, no network.
- ``openai``: any OpenAI-compatible chat-completions endpoint (``--base-url``, ``--model``); the key comes
  from ``MATHDISTILL_API_KEY`` or ``OPENAI_API_KEY`` only, never from a flag or a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field

from .client import ChatClientConfig, ChatRequest, run_requests, split_think
from .errors import PartialRun, UserError
from .io import Tally, read_jsonl, write_json, write_jsonl
from .progress import info
from .prompts import instruction_for, messages
from .records import Problem, Trace

__all__ = ["GenerateConfig", "generate", "split_think", "reference_traces"]


class GenerateConfig(ChatClientConfig):
    """Which teacher writes the traces, and how it is sampled (endpoint fields: see ChatClientConfig)."""

    backend: Literal["reference", "openai"] = Field("reference", description="teacher backend")
    samples: int = Field(1, ge=1, description="samples per problem")
    reference_think: bool = Field(False, description="reference backend: write each chain as <think>working</think> "
                                  "then its final answer line, as teacher outputs with inline think tags look")


def think_wrapped(chain: str) -> str:
    """``<think>`` + every line but the last + ``</think>`` + the last line (the final answer)."""
    lines = chain.strip().splitlines()
    if len(lines) < 2:
        return chain.strip()
    return "<think>\n" + "\n".join(lines[:-1]).strip() + "\n</think>\n\n" + lines[-1].strip()


def reference_traces(probs: Iterable[Problem], tally: Tally, think: bool = False) -> list[Trace]:
    out = []
    for p in probs:
        chain = (p.meta or {}).get("reference_cot")
        if not chain:
            tally.add("no_reference_chain", p.id)
            continue
        if think:  # the tags stay in the visible output, as in the seed's task-1 rows; curate decides
            out.append(Trace(problem_id=p.id, teacher="reference", sample=0, content=think_wrapped(chain),
                             finish_reason="stop"))
            continue
        reasoning, content = split_think(chain)
        out.append(Trace(problem_id=p.id, teacher="reference", sample=0, reasoning=reasoning, content=content,
                         finish_reason="stop"))
    return out


def openai_traces(cfg: GenerateConfig, probs: list[Problem], tally: Tally, cache_path: Path) -> list[Trace]:
    reqs = [ChatRequest(messages(instruction_for(p.lang), p.question), key=p.id, sample=k)
            for p in probs for k in range(cfg.samples)]
    traces = []
    for r in run_requests(cfg, reqs, cache_path, desc="generate"):
        if r.error:
            tally.add("failed", f"{r.request.key}#{r.request.sample}: {r.error}")
            continue
        traces.append(Trace(problem_id=r.request.key, teacher=cfg.model or "openai", sample=r.request.sample,
                            reasoning=r.reasoning, content=r.content, finish_reason=r.finish_reason,
                            prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens, latency_s=r.latency_s))
    return traces


def generate(cfg: GenerateConfig, problems_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``traces.jsonl`` for the problems in ``problems_path``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs = [Problem.model_validate(r) for r in read_jsonl(problems_path)]
    tally = Tally()
    if cfg.backend == "reference":
        traces = reference_traces(probs, tally, think=cfg.reference_think)
    elif cfg.backend == "openai":
        if not cfg.base_url or not cfg.model:
            raise UserError("generate --backend openai needs --base-url URL and --model NAME")
        traces = openai_traces(cfg, probs, tally, out / "cache.sqlite")
    else:  # pragma: no cover - pydantic restricts the values
        raise UserError(f"unknown backend {cfg.backend!r}")
    write_jsonl(out / "traces.jsonl", traces)
    summary = {"problems": len(probs), "traces": len(traces), "backend": cfg.backend, "skipped": tally.to_dict(),
               "config": cfg.model_dump(mode="json")}
    write_json(out / "generate_summary.json", summary)
    info(f"generate: {len(traces)} traces from {len(probs)} problems ({cfg.backend})"
         + (f"; skipped {tally.total()}: {', '.join(f'{k} {v}' for k, v in tally.counts.items())}" if tally.total() else ""))
    failed = sum(v for k, v in tally.counts.items() if k.startswith("failed"))
    if failed:
        raise PartialRun(f"generate: {failed} calls failed for good (see {out / 'generate_summary.json'}); rerun to retry them")
    return summary
