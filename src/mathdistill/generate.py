"""Stage ``generate``: teacher traces for problems, behind one backend interface.

Backends:
- ``reference`` (embedded default): the chain shipped with the problem (GSM-Symbolic's ``answer_cot``, or the
  built-in solver's chain) becomes the teacher's trace. No model, no network.
- ``openai``: any OpenAI-compatible chat-completions endpoint (``--base-url``, ``--model``) through
  :func:`mathdistill.client.run_requests`; the key comes from ``MATHDISTILL_API_KEY`` or ``OPENAI_API_KEY``
  only, never from a flag or a file.
- ``vllm``: offline ``vllm.LLM.chat`` on a local GPU, imported only when chosen.

Both model backends go through the run's SQLite cache (``DIR/cache.sqlite``, :mod:`mathdistill.cache`):
every finished sample is committed there first, and ``traces.jsonl`` / ``failures.jsonl`` are written
from the cache at the end (also after Ctrl-C), so a rerun of the same command makes only the calls that
are missing and the traces file is complete, one row per (problem, sample), never duplicated.

``--from-file`` imports a batch-inference export instead (no calls): a field mapping names the question,
answer, reasoning and output fields (dotted paths reach nested fields), bad lines are counted with file:line.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field

from .cache import CallCache, NewCall
from .client import ChatClientConfig, ChatRequest, RunStats, plan_requests, request_keys, run_requests, split_think
from .config import StageConfig
from .errors import PartialRun, UserError
from .io import Tally, each_item, file_sha256, get_path, iter_raw, package_versions, prepare_out_dir, write_json, write_jsonl
from .progress import info
from .prompts import instruction_for, messages
from .records import (FieldMap, Problem, Trace, detect_lang, finish_reason_beside, id_text, read_problems, render_question, request_error,
                      split_reasoning, stable_id)

__all__ = ["GenerateConfig", "ReferenceNoise", "generate", "reference_traces", "noisy_reference_traces", "generate_out_dir"]

CACHE_FILE = "cache.sqlite"
# Files a generate run writes: a folder holding only these is reused by a rerun (a resume), no --overwrite.
OUTPUT_FILES = {"traces.jsonl", "failures.jsonl", "generate_summary.json", "problems.jsonl", "noise.jsonl", CACHE_FILE,
                f"{CACHE_FILE}-wal", f"{CACHE_FILE}-shm", f"{CACHE_FILE}-journal"}
VLLM_CHUNK = 256  # prompts per vllm.LLM.chat call: finished chunks are committed to the cache
MAX_SHOWN = 5  # failures listed in the closing message


class ReferenceNoise(StageConfig):
    """SIMULATED teacher errors put into reference chains on purpose (reference backend only), so curation recipes
    have something to verify, repair and select: the traces are NOT teacher outputs. Each kind hits a sample
    with its own probability, drawn from (seed, problem id, sample), so the same settings give the same traces."""

    wrong_answer: float = Field(0.0, ge=0, le=1, description="share of samples that misread one number of the "
                                "problem: an operand of the first step is changed and every later step recomputed, "
                                "so each step holds but the final answer is wrong (what verify_answer catches)")
    arith_slip: float = Field(0.0, ge=0, le=1, description="share of samples with one wrong arithmetic result "
                              "(a step's result off by 1, 2 or 10)")
    slip_carried: float = Field(0.5, ge=0, le=1, description="share of those slips the chain goes on with (later "
                                "steps and the answer recomputed from the wrong value); the others are a wrong "
                                "number written once, the final answer stays right")
    think: float = Field(0.0, ge=0, le=1, description="share of samples written as <think>working</think> + final "
                         "answer line")
    verbose: float = Field(0.0, ge=0, le=1, description="share of samples padded with a restatement of the question "
                           "and a re-check of every step (longer, not wrong)")
    seed: int = Field(0, description="seed of the perturbations")


class GenerateConfig(ChatClientConfig):
    """Which teacher writes the traces, and how it is sampled (endpoint fields: see ChatClientConfig)."""

    backend: Literal["reference", "openai", "vllm"] = Field("reference", description="teacher backend")
    samples: int = Field(1, ge=1, description="samples per problem")
    cache: bool = Field(True, description="keep every call in DIR/cache.sqlite and answer reruns from it "
                        "(off: every call is made again, no cache file is written, and a killed run keeps nothing)")
    id_field: str = Field("id", description="field with the problem id: of the --from-file export (dotted path for "
                          "nested), else of --problems")
    question_field: str = Field("question", description="field with the question: of the --from-file export, else of "
                                "--problems (e.g. problem)")
    answer_field: str = Field("answer", description="field with the reference answer: of the --from-file export, "
                              "else of --problems")
    reasoning_field: str = Field("reasoning", description="--from-file: field with the teacher's reasoning, if any")
    reference_think: bool = Field(False, description="reference backend: write each chain as <think>working</think> "
                                  "then its final answer line, as teacher outputs with inline think tags look")
    output_field: str = Field("output", description="--from-file: field with the teacher's output "
                              "(inline <think>...</think>, SkyThought's and <reasoning> tags are split off into the reasoning); a * "
                              "part imports every item as a sample (response.body.choices.*.message.content: all n choices)")
    finish_reason_field: str | None = Field(None, description="--from-file: field with the stop reason (length = "
                                            "truncated); unset: the nearest finish_reason beside --output-field "
                                            "(response.body.choices.0.finish_reason in an OpenAI Batch output)")
    question_template: str | None = Field(None, description="build each question from several fields of a problems "
                                          "or --from-file row, e.g. \"{question}\\n\\nOptions:\\n{options}\" "
                                          "(lists become A. ..., B. ... lines); unset: --question-field alone")
    reference_noise: ReferenceNoise | None = Field(None, description="reference backend: SIMULATED teacher errors "
                                                   "(a test bed for curation, not teacher outputs); with it, "
                                                   "`samples` samples per problem (without it, one)")


def generate_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """The output folder: new, or one that holds only an earlier generate run's files (a rerun resumes
    from its cache), or any folder with ``overwrite``."""
    p = Path(out)
    if p.is_dir() and not overwrite:
        names = [f.name for f in p.iterdir()]
        if names and all(n in OUTPUT_FILES or (n.startswith(".") and n.endswith(".tmp")) for n in names):
            return p
    return prepare_out_dir(p, overwrite)


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


NOISY_TEACHER = "reference+simulated_noise"  # the teacher name of every trace the noise option writes
_SLIPS = (-10, -2, -1, 1, 2, 10)


def _plain_steps(text: str) -> list:
    from .arith import format_like, located_steps

    return [s for s in located_steps(text) if s.ok and s.span and format_like(s.value, text[s.span[0]:s.span[1]])]


def _misread(chain: str, rng: random.Random) -> str | None:
    """Change the last operand of the first step and recompute every step after it."""
    from .arith import NUMBER, format_like, parse_number, repair_steps

    steps = _plain_steps(chain)
    if not steps:
        return None
    a = steps[0].span[0]
    line_start = chain.rfind("\n", 0, a) + 1
    eq = chain.rfind("=", line_start, a)
    nums = list(re.finditer(rf"(?<![\d.,])(?:{NUMBER})(?![\d]|[.,]\d)", chain[line_start:eq]))
    if not nums:
        return None
    m = nums[-1]
    v = parse_number(m.group(0))
    new = format_like(v + rng.choice((1, 2, 3)), m.group(0)) if v is not None else None
    if new is None:
        return None
    pos = line_start + m.start()
    text = chain[:pos] + new + chain[line_start + m.end():]
    return repair_steps(text, start=pos + len(new)).text  # later steps recomputed from the misread number


def _slip(chain: str, rng: random.Random, carried: bool) -> str | None:
    """One step's result off by a few; ``carried``: the chain goes on with it (later steps recomputed)."""
    from .arith import format_like, repair_steps, whole_number

    steps = _plain_steps(chain)
    if not steps:
        return None
    s = rng.choice(steps)
    a, b = s.span
    old = chain[a:b]
    new = format_like(s.value + rng.choice(_SLIPS), old)
    if new is None or new == old:
        return None
    tail = chain[b:]
    if carried:
        tail = whole_number(old).sub(new, tail)
        return repair_steps(chain[:a] + new + tail, start=a + len(new)).text
    return chain[:a] + new + tail


def _verbose(chain: str, question: str) -> str:
    """The question restated, the chain, every step re-checked, then the final line."""
    from .arith import located_steps

    lines = chain.strip().splitlines()
    checks = [f"Check: {s.expr} = {s.claimed}. Yes." for s in located_steps(chain)]
    body = lines[:-1] if len(lines) > 1 else lines
    return "\n".join([f"Let me restate the problem. {question.strip()}", "Let me solve it step by step.", *body,
                      "Let me double-check each calculation.", *checks, *(lines[-1:] if len(lines) > 1 else [])])


def noisy_reference_traces(probs: Iterable[Problem], noise: "ReferenceNoise", samples: int,
                           tally: Tally) -> tuple[list[Trace], list[dict[str, Any]]]:
    """``samples`` traces per problem, each its reference chain with SIMULATED errors (see :class:`ReferenceNoise`);
    and one record per trace naming what was done to it (``noise.jsonl``)."""
    from .answers import answers_equal, extract_answer

    out, log = [], []
    for p in probs:
        chain = ((p.meta or {}).get("reference_cot") or "").strip()
        if not chain:
            tally.add("no_reference_chain", p.id)
            continue
        for k in range(samples):
            rng = random.Random(f"{noise.seed}|{p.id}|{k}")
            draws = {kind: rng.random() < getattr(noise, kind) for kind in ("wrong_answer", "arith_slip", "think", "verbose")}
            carried = rng.random() < noise.slip_carried
            text, applied, missed = chain, [], []  # missed: drawn, but the chain has no step it can change
            if draws["wrong_answer"]:
                t = _misread(text, rng)
                if t is None or (p.answer is not None and answers_equal(extract_answer(t), p.answer)):
                    missed.append("wrong_answer")
                else:
                    text = t
                    applied.append("wrong_answer")
            if draws["arith_slip"]:
                t = _slip(text, rng, carried)
                if t is None:
                    missed.append("arith_slip")
                else:
                    text = t
                    applied.append("arith_slip_carried" if carried else "arith_slip")
            if draws["verbose"]:
                text = _verbose(text, p.question)
                applied.append("verbose")
            if draws["think"]:
                text = think_wrapped(text)
                applied.append("think")
            # the tags stay in the visible output, as reference_think does; curate's strip_think splits them
            out.append(Trace(problem_id=p.id, teacher=NOISY_TEACHER, sample=k, content=text, finish_reason="stop"))
            log.append({"problem_id": p.id, "sample": k, "applied": applied, "not_applicable": missed})
    return out, log


def read_problem_file(path: str | Path, tally: Tally, question_template: str | None = None,
                      fields: FieldMap | None = None) -> list[Problem]:
    """Problems from any supported file (or a shipped benchmark name: gsm8k[:200]), read as ``curate`` and
    ``eval`` read them (records.read_problems: ids and answers may be numbers, extra columns are ignored;
    ``fields`` names the columns); bad rows and repeated ids are counted with file:line, the first of an id kept."""
    probs, seen, wheres = [], set(), []
    read = read_problems(path, fields or FieldMap(), tally, question_template, wheres)
    for p, where in zip(read, wheres):
        if p.id in seen:
            tally.add("duplicate_id", f"{where}: {p.id} (the first one is kept)")
            continue
        seen.add(p.id)
        probs.append(p)
    return probs


def teacher_requests(cfg: GenerateConfig, probs: list[Problem]) -> list[ChatRequest]:
    reqs = []
    for p in probs:
        msgs = messages(instruction_for(p.lang), p.question)  # one list per problem: its samples share it
        reqs.extend(ChatRequest(msgs, key=p.id, sample=k) for k in range(cfg.samples))
    return reqs


def require_vllm(cfg: GenerateConfig):
    """The ``vllm`` module, or one clear line saying why it cannot run here (no package, no GPU)."""
    try:
        import vllm  # imported only here: the package works without it
    except ImportError:
        raise UserError("generate --backend vllm needs vLLM and a CUDA GPU, and vLLM is not installed here: "
                        "pip install vllm on a GPU machine, or serve the model with `vllm serve` and use "
                        "--backend openai --base-url URL") from None
    import torch

    if not torch.cuda.is_available():
        raise UserError("generate --backend vllm needs a CUDA GPU and none is visible here; use --backend openai "
                        "against a vLLM server instead")
    if not cfg.model:
        raise UserError("generate --backend vllm needs --model (a local model folder or hub id)")
    return vllm


def vllm_run(cfg: GenerateConfig, reqs: list[ChatRequest], cache: CallCache, stats: RunStats) -> None:
    """Offline vLLM on a local GPU: the same cache keys and rows as the openai backend."""
    vllm = require_vllm(cfg)
    t0 = time.monotonic()
    plan = plan_requests(cfg, reqs, cache)
    stats.requests += len(reqs)
    stats.cached += sum(len(plan.by_key[k]) for k in plan.hits)
    if not plan.jobs:
        return
    llm = vllm.LLM(model=cfg.model, seed=cfg.seed or 0, trust_remote_code=False)
    for start in range(0, len(plan.jobs), VLLM_CHUNK):
        jobs = plan.jobs[start:start + VLLM_CHUNK]
        sps = [vllm.SamplingParams(n=len(j.samples), temperature=cfg.temperature, top_p=cfg.top_p,
                                   max_tokens=cfg.max_tokens,
                                   seed=None if cfg.seed is None else cfg.seed + j.samples[0], **cfg.extra_body)
               for j in jobs]
        outs = llm.chat([j.messages for j in jobs], sps, use_tqdm=True)
        rows = []
        for job, sp, out in zip(jobs, sps, outs):
            pt = len(out.prompt_token_ids or [])
            request = json.dumps({"model": cfg.model, "messages": job.messages, "sampling_params": repr(sp)},
                                 ensure_ascii=False)
            response = json.dumps({"prompt_tokens": pt, "outputs": [
                {"index": c.index, "text": c.text, "finish_reason": c.finish_reason, "tokens": len(c.token_ids)}
                for c in out.outputs]}, ensure_ascii=False)
            m = getattr(out, "metrics", None)  # arrival/finish times, when this vLLM version reports them
            latency = (round(m.finished_time - m.arrival_time, 4)
                       if getattr(m, "finished_time", None) and getattr(m, "arrival_time", None) else None)
            for j, (s, k, c) in enumerate(zip(job.samples, job.keys, out.outputs)):
                reasoning, content = split_think(c.text)
                rows.append(NewCall(key=k, model=cfg.model, sample=s, endpoint="vllm", request_json=request,
                                    response_json=response, choice_index=j, content=content, reasoning=reasoning,
                                    finish_reason=c.finish_reason, prompt_tokens=pt, completion_tokens=len(c.token_ids),
                                    latency_s=latency, attempts=1))
                stats.completion_tokens += len(c.token_ids)
            stats.prompt_tokens += pt
            stats.calls += 1
        cache.put(rows)
        stats.ok += len(rows)
    stats.seconds = round(time.monotonic() - t0, 3)


def model_traces(cfg: GenerateConfig, probs: list[Problem], out: Path) -> tuple[list[Trace], list[dict], RunStats, bool]:
    """Run the model backend, then read traces and failures back from the cache. Returns
    (traces, failures, stats, interrupted)."""
    reqs = teacher_requests(cfg, probs)
    stats = RunStats()
    interrupted = False
    with CallCache(out / CACHE_FILE if cfg.cache else ":memory:") as cache:
        try:
            if cfg.backend == "openai":
                run_requests(cfg, reqs, cache, desc="generate", stats=stats)
            else:
                vllm_run(cfg, reqs, cache, stats)
        except KeyboardInterrupt:
            interrupted = True  # calls in flight are cancelled; what finished is in the cache
        keys = request_keys(cfg, reqs)
        rows = cache.get_many(keys)
        failed = {r["key"]: r for r in cache.rows("failures")} if cache.has_failures else {}
    teacher = cfg.model or cfg.backend
    traces, failures = [], []
    for r, k in zip(reqs, keys):
        row = rows.get(k)
        if row is not None:
            traces.append(Trace(problem_id=r.key, teacher=teacher, sample=r.sample, reasoning=row.reasoning,
                                content=row.content, finish_reason=row.finish_reason, prompt_tokens=row.prompt_tokens,
                                completion_tokens=row.completion_tokens, latency_s=row.latency_s))
        elif k in failed:
            f = failed[k]
            failures.append({"problem_id": r.key, "sample": r.sample, "reason": f["reason"], "detail": f["detail"],
                             "attempts": f["attempts"]})
        else:
            failures.append({"problem_id": r.key, "sample": r.sample, "reason": "not_attempted",
                             "detail": "the run was interrupted before this call", "attempts": 0})
    return traces, failures, stats, interrupted


def _text(v: Any) -> str | None:
    if v is None:
        return None
    s = v if isinstance(v, str) else str(v)
    return s.strip() or None


def _finish_reason(rec: dict[str, Any], output_field: str, finish_reason_field: str | None) -> str | None:
    """The stop reason of the same choice as the output: ``--finish-reason-field``, else the nearest
    ``finish_reason`` beside ``--output-field`` (records.finish_reason_beside)."""
    if finish_reason_field:
        return _text(get_path(rec, finish_reason_field))
    return finish_reason_beside(rec, output_field)


def _has_text(v: Any) -> bool:
    return isinstance(v, (str, int, float)) and not isinstance(v, bool) and bool(str(v).strip())


def import_traces(cfg: GenerateConfig, from_file: str | Path, probs: list[Problem] | None,
                  tally: Tally) -> tuple[list[Trace], list[Problem]]:
    """Traces from a batch-inference export. With ``probs``, rows are matched to them by id, else by
    question text; without, each distinct question becomes a Problem (id from the id field or its hash).
    A ``*`` in ``--output-field`` (``response.body.choices.*.message.content``) imports every choice of a line as
    its own sample, reasoning and finish_reason read from the same choice (io.each_item)."""
    by_id = {p.id: p for p in probs} if probs is not None else None
    by_q = {" ".join(p.question.split()): p for p in probs} if probs is not None else None
    made: dict[str, Problem] = {}
    samples: dict[str, int] = {}
    seen: dict[tuple, str] = {}  # (problem, custom_id, text) -> the file:line of the first
    teacher = cfg.model or f"import:{Path(from_file).name}"
    traces = []
    for where, rec in iter_raw(from_file, tally, duplicates=True):  # a resubmitted batch: counted, not a sample
        choices = [(get_path(rec, o), r, o, f) for o, r, f in
                   each_item(rec, cfg.output_field, cfg.reasoning_field, cfg.finish_reason_field)]
        if not any(_has_text(c[0]) for c in choices):
            err = request_error(rec)
            if err:
                tally.add("request_failed", f"{where}: {err}")
            else:
                tally.add("missing_output", f"{where}: no text in {cfg.output_field!r}")
            continue
        if cfg.question_template:
            q, missing = render_question(cfg.question_template, rec)
            q_what = f"{', '.join(map(repr, missing))} for --question-template"
        else:
            q, q_what = _text(get_path(rec, cfg.question_field)), f"{cfg.question_field!r} field"
        pid = id_text(get_path(rec, cfg.id_field))
        if by_id is not None:
            p = by_id.get(pid) if pid else None
            p = p or (by_q.get(" ".join(q.split())) if q else None)
            if p is None:
                tally.add("unknown_problem", f"{where}: id {pid!r} / question not in --problems")
                continue
        else:
            if q is None:
                tally.add("missing_question", f"{where}: no {q_what}")
                continue
            pid = pid or stable_id(q)
            p = made.get(pid)
            if p is None:
                p = made[pid] = Problem(id=pid, question=q, answer=_text(get_path(rec, cfg.answer_field)),
                                        lang=detect_lang(q), source="import")
            elif " ".join(p.question.split()) != " ".join(q.split()):
                tally.add("conflicting_id", f"{where}: id {pid!r} already has another question")
                continue
        for output, reasoning_field, output_field, finish_field in choices:
            if not _has_text(output):
                tally.add("missing_output", f"{where}: no text in {output_field!r}")
                continue
            inline, content = split_reasoning(str(output))
            field_r = _text(get_path(rec, reasoning_field)) if reasoning_field else None
            reasoning = "\n".join(x for x in (field_r, inline) if x) or None
            if "custom_id" in rec:  # a batch request answered twice with the same text (a resubmitted batch: new
                key = (p.id, str(rec["custom_id"]), output_field, content, reasoning)  # ids), counted as curate does
                first = seen.setdefault(key, where)
                if first is not where:
                    tally.add("duplicate_line", f"{where}: same sample as {first}")
                    continue
            sample = samples.get(p.id, 0)
            samples[p.id] = sample + 1
            traces.append(Trace(problem_id=p.id, teacher=teacher, sample=sample, reasoning=reasoning, content=content,
                                finish_reason=_finish_reason(rec, output_field, finish_field)))
    return traces, list(made.values())


def generate(cfg: GenerateConfig, problems_path: str | Path | None, out_dir: str | Path,
             from_file: str | Path | None = None) -> dict[str, Any]:
    """Write ``traces.jsonl`` (and ``failures.jsonl`` for model backends) for the problems in
    ``problems_path``, or import ``from_file``; return the summary (also ``generate_summary.json``).

    Raises :class:`PartialRun` when some samples failed for good (rerunning retries only those), and
    ``KeyboardInterrupt`` after writing what finished when interrupted.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    t0 = time.monotonic()
    if problems_path is None and from_file is None:
        raise UserError("generate needs --problems FILE (or --from-file EXPORT to import a teacher's outputs)")
    # the field flags name the export's fields with --from-file, else the problems file's (a MATH-style `problem`)
    fields = FieldMap() if from_file is not None else FieldMap(
        id_field=cfg.id_field, question_field=cfg.question_field, answer_field=cfg.answer_field)
    probs = read_problem_file(problems_path, tally, cfg.question_template, fields) if problems_path is not None else None
    summary: dict[str, Any] = {"backend": "import" if from_file else cfg.backend}
    failures: list[dict[str, Any]] = []
    interrupted = False
    if from_file is not None:
        traces, made = import_traces(cfg, from_file, probs, tally)
        if not traces:
            raise UserError(f"{from_file}: no usable row ({'; '.join(tally.lines()[:4]) or 'empty file'}); "
                            f"map the fields with --output-field/--question-field/--id-field")
        if probs is None:
            write_jsonl(out / "problems.jsonl", made)
            probs = made
        summary["imported_from"] = str(from_file)
    elif cfg.backend == "reference" and cfg.reference_noise is not None:
        traces, log = noisy_reference_traces(probs, cfg.reference_noise, cfg.samples, tally)
        write_jsonl(out / "noise.jsonl", log)
        applied = Counter(a for r in log for a in r["applied"])
        summary["simulated_noise"] = {
            "note": "SIMULATED teacher errors put into reference chains on purpose; these traces are not teacher outputs",
            "traces": len(log), "untouched": sum(not r["applied"] for r in log), "applied": dict(sorted(applied.items())),
            "not_applicable": dict(sorted(Counter(a for r in log for a in r["not_applicable"]).items()))}
        info(f"generate: reference chains with SIMULATED teacher errors (not teacher outputs): "
             f"{', '.join(f'{k} {v}' for k, v in sorted(applied.items())) or 'none applied'} of {len(log)} traces")
    elif cfg.backend == "reference":
        traces = reference_traces(probs, tally, think=cfg.reference_think)
    else:
        if cfg.backend == "openai" and (not cfg.base_url or not cfg.model):
            raise UserError("generate --backend openai needs --base-url URL and --model NAME")
        if cfg.backend == "vllm":
            require_vllm(cfg)
        info(f"generate: {len(probs)} problems × {cfg.samples} samples = {len(probs) * cfg.samples} "
             f"completions from {cfg.model} ({cfg.backend}); cache: {out / CACHE_FILE if cfg.cache else 'off'}")
        traces, failures, stats, interrupted = model_traces(cfg, probs, out)
        summary["calls"] = stats.to_dict()
        if cfg.backend == "openai":
            warn = stats.timeout_warning(cfg.timeout_s, cfg.max_tokens)
            summary["warnings"] = [warn] if warn else []
        write_jsonl(out / "failures.jsonl", failures)
    write_jsonl(out / "traces.jsonl", traces)
    by_reason: dict[str, int] = {}
    for f in failures:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
    summary.update({"problems": len(probs), "samples": cfg.samples, "traces": len(traces),
                    "failed": sum(by_reason.values()), "failed_by_reason": by_reason, "interrupted": interrupted,
                    "skipped": tally.to_dict(), "seconds": round(time.monotonic() - t0, 2),
                    "inputs": {str(p): file_sha256(p) for p in (problems_path, from_file) if p is not None},
                    "config": cfg.model_dump(mode="json"), "versions": package_versions()})
    write_json(out / "generate_summary.json", summary)
    _report(summary, tally, out)
    if interrupted:
        raise KeyboardInterrupt
    if failures:
        shown = "; ".join(f"{f['problem_id']}#{f['sample']} {f['reason']}" for f in failures[:MAX_SHOWN])
        raise PartialRun(f"generate: {len(failures)} of {len(probs) * cfg.samples} samples failed for good "
                         f"({', '.join(f'{k} {v}' for k, v in sorted(by_reason.items()))}: {shown}); see "
                         f"{out / 'failures.jsonl'}; rerun the same command to retry only those")
    return summary


def _report(summary: dict[str, Any], tally: Tally, out: Path) -> None:
    info(f"generate: {summary['traces']} traces for {summary['problems']} problems ({summary['backend']}) "
         f"in {out / 'traces.jsonl'}")
    calls = summary.get("calls")
    if calls:
        s = RunStats(**{**calls, "failed": Counter(calls["failed"])})
        info(f"  calls: {s.line()}"
             + (f"; {s.earlier_failures} earlier failures retried" if s.earlier_failures else ""))
    for w in summary.get("warnings", []):
        info(f"  warning: {w}")
    if summary["interrupted"]:
        info(f"  interrupted: finished calls are in {out / CACHE_FILE}; rerun the same command to continue")
    if tally.total():
        info(f"  skipped {tally.total()} input rows:")
        for line in tally.lines():
            info(f"    {line}")
