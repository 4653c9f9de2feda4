"""Stage ``curate``: teacher traces -> training rows, through named steps that each count what they removed.

Steps (each optional; ``steps`` lists the ones that run, in order; each has its options under its own key):
  strip_think     remove ``<think>...</think>`` from outputs (also an unclosed leading ``<think>``, a stray ``</think>``)
  drop_empty      drop rows whose output is empty after that
  drop_truncated  drop rows the teacher stopped for length (``finish_reason: length``)
  majority_vote   problems without a reference: label them with the answer most samples agree on
  verify_answer   keep rows whose final answer equals the reference (or the vote's label): rejection sampling
  arith_check     rows whose ``a op b = c`` steps do not hold: drop them, keep and count them, or repair them
  select          per problem: the k shortest rows, or the first k
  length_filter   keep outputs whose length in student-tokenizer tokens is within [min_tokens, max_tokens]
  decontaminate   drop rows whose question shares an n-gram (13 words) with an eval question
  dedup           near-duplicate rows (MinHash LSH, datasketch) across the whole dataset: keep the first

The default recipe (``CurateConfig()``) is the seed's notebook: ``strip_think, drop_empty``. Rows become Alpaca
rows (``instruction`` = the English or Chinese system prompt by the question's language, ``input`` = question,
``output`` = cleaned answer) in the formats asked for, with ``dataset_info.json`` for LLaMA-Factory, and a
report (``curate_report.json``, ``.md``, ``.png``). Same inputs and config, same output bytes.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import Field, field_validator

from .answers import GradeOptions, GradeStats, answers_equal, extract_answer, to_ascii
from .config import StageConfig
from .errors import UserError
from .generate import split_think
from .io import Tally, file_sha256, iter_raw, package_versions, write_dataset_files, write_json
from .progress import bar, info
from .prompts import instruction_for
from .records import FieldMap, Problem, detect_lang, read_problems, stable_id

SEED_STEPS = ["strip_think", "drop_empty"]
HIST_SAMPLE = 5_000  # rows measured for the "before" length histogram (every k-th row beyond this)
TOKENIZE_BATCH = 1024  # texts per tokenizer call


# ------------------------------------------------------------------------------------------ config

class TraceFields(StageConfig):
    """Where a traces file keeps each field; a dotted name reaches inside (``response.body.content``)."""

    problem_id_field: str = Field("problem_id", description="field with the problem id the trace answers")
    content_field: str = Field("content", description="field with the teacher's visible answer")
    reasoning_field: str = Field("reasoning", description="field with the teacher's separate reasoning, if any")
    finish_reason_field: str = Field("finish_reason", description="field with the stop reason (length = truncated)")
    sample_field: str = Field("sample", description="field with the sample index (numbered in file order when absent)")
    question_field: str = Field("question", description="a trace that carries its own question: used when its "
                                                        "problem id is not in the problems files (or none are given)")
    answer_field: str = Field("answer", description="reference answer carried by such a trace")


class VerifyAnswerConfig(StageConfig):
    """verify_answer: rejection sampling against the reference (or the majority vote's label)."""

    no_reference: Literal["keep", "drop"] = Field("keep", description="rows whose problem has neither a reference "
                                                                      "nor a vote label: keep or drop")
    use_math_verify: bool = Field(True, description="compare non-numeric answers with math-verify (else exact only)")
    timeout_s: int = Field(5, ge=1, description="math-verify timeout per comparison, seconds")


class MajorityVoteConfig(StageConfig):
    """majority_vote: label problems without a reference by the answer most of their samples agree on."""

    min_samples: int = Field(2, ge=1, description="problems with fewer samples are not labelled (their rows are dropped)")
    min_agreement: float = Field(0.5, ge=0, le=1, description="share of samples that must give the majority answer "
                                                             "(a tie for first place never labels)")
    keep: Literal["agreeing", "all"] = Field("agreeing", description="rows kept for a labelled problem: those that "
                                                                     "agree with the label, or all")


class SelectConfig(StageConfig):
    """select: which rows of each problem become training rows."""

    mode: Literal["shortest", "all"] = Field("shortest", description="shortest: the k shortest rows; all: the first k rows")
    k: int = Field(1, ge=1, description="rows kept per problem")
    by: Literal["chars", "tokens"] = Field("chars", description="length measure for shortest (tokens: the student tokenizer)")


class LengthFilterConfig(StageConfig):
    """length_filter: output length in student-tokenizer tokens (the ES score counts these)."""

    min_tokens: int = Field(1, ge=0, description="drop outputs shorter than this many tokens")
    max_tokens: int = Field(1024, ge=1, description="drop outputs longer than this many tokens")


class DedupConfig(StageConfig):
    """dedup: MinHash LSH near-duplicate removal across the whole dataset (the first row of a group is kept)."""

    key: Literal["question", "output", "question+output"] = Field("question+output", description="text compared")
    threshold: float = Field(0.85, gt=0, le=1, description="estimated Jaccard similarity at or above which rows are duplicates")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: finer estimates, slower)")
    shingle: int = Field(5, ge=1, description="words per shingle (a CJK character counts as a word)")
    seed: int = Field(1, description="MinHash seed")


class DecontaminateConfig(StageConfig):
    """decontaminate: drop rows whose question shares a long n-gram with any eval question."""

    ngram: int = Field(13, ge=1, description="n-gram length in words (a CJK character counts as a word); shorter "
                                             "questions are compared whole")
    eval_problems: list[str] = Field(default_factory=list, description="eval problem files (--eval-problems adds to these)")
    check_output: bool = Field(False, description="also drop rows whose output shares an n-gram with an eval question")


class ArithCheckConfig(StageConfig):
    """arith_check: chains whose ``a op b = c`` steps (arith.find_steps, exact) do not all hold."""

    action: Literal["drop", "keep", "repair"] = Field(
        "drop", description="drop such rows; keep them and count them; or repair: write the exact result in place of "
        "each wrong one (and, where the chain reused the wrong number, recompute it from there); a row is kept only "
        "when every step then holds and its final answer is unchanged, or changed to one equal to the reference "
        "(or the vote's label); other rows are dropped and counted")
    max_fixes: int = Field(20, ge=1, description="repair: most wrong results fixed in one chain (more: dropped)")


FormatName = Literal["alpaca_json", "alpaca_jsonl", "sharegpt", "messages", "parquet"]


class CurateConfig(StageConfig):
    """The curation recipe: which steps run, in order, each with its options under its own name."""

    steps: list[str] = Field(default_factory=lambda: list(SEED_STEPS),
                             description="curate steps in order; known: strip_think, drop_empty, drop_truncated, "
                                         "majority_vote, verify_answer, arith_check, select, length_filter, "
                                         "decontaminate, dedup")
    keep_think: bool = Field(False, description="keep the teacher's reasoning as <think>...</think> before the answer")
    dataset_name: str = Field("mathdistill", description="dataset name in dataset_info.json (LLaMA-Factory)")
    formats: list[FormatName] = Field(default_factory=lambda: ["alpaca_json"],
                                      description="training files to write: alpaca_json (dataset.json), alpaca_jsonl, "
                                                  "sharegpt, messages (chat JSONL), parquet")
    tokenizer: str = Field("smollm2-135m", description="student tokenizer (a model spec) for length_filter, select by "
                                                       "tokens and the report's token histograms; loaded only when a step needs it")
    plot: bool = Field(True, description="write curate_report.png")
    problem_fields: FieldMap = Field(default_factory=FieldMap, description="field names in the problems files")
    trace_fields: TraceFields = Field(default_factory=TraceFields, description="field names in the traces file")
    verify_answer: VerifyAnswerConfig = Field(default_factory=VerifyAnswerConfig, description="verify_answer options")
    majority_vote: MajorityVoteConfig = Field(default_factory=MajorityVoteConfig, description="majority_vote options")
    arith_check: ArithCheckConfig = Field(default_factory=ArithCheckConfig, description="arith_check options")
    select: SelectConfig = Field(default_factory=SelectConfig, description="select options")
    length_filter: LengthFilterConfig = Field(default_factory=LengthFilterConfig, description="length_filter options")
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig, description="decontaminate options")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="dedup options")

    @field_validator("steps")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown curate step(s) {unknown}; known: {sorted(STEPS)}")
        twice = sorted({s for s in v if v.count(s) > 1})
        if twice:
            raise ValueError(f"curate step(s) listed twice: {twice}")
        return v

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one format is needed")
        if len(set(v)) != len(v):
            raise ValueError(f"a format is listed twice: {v}")
        return v


# ---------------------------------------------------------------------------------------- the rows

@dataclass(slots=True)
class Row:
    idx: int  # position in the traces file (ties are broken by it: deterministic)
    where: str  # file:line of the trace
    pid: str  # the trace's problem id
    sample: int  # the trace's sample index
    finish_reason: str | None
    problem: Problem
    output: str  # the visible answer, as the steps leave it
    reasoning: str | None = None
    label: str | None = None  # majority-vote answer, for problems without a reference
    agreement: float | None = None  # share of the problem's samples that gave the label
    answer: str | None = None  # extracted final answer (cached)
    _text: str | None = None  # cached training output
    _tokens: int | None = None  # cached student-token count of the training output

    def text(self, keep_think: bool) -> str:
        if self._text is None:
            out = self.output.strip()
            if keep_think and self.reasoning:
                out = f"<think>\n{self.reasoning.strip()}\n</think>\n\n{out}"
            self._text = out
        return self._text

    def changed(self) -> None:
        self._text = self._tokens = self.answer = None


@dataclass
class Ctx:
    cfg: CurateConfig
    tally: Tally
    eval_paths: list[Path]
    grade: GradeStats = field(default_factory=GradeStats)
    agreement: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> counts beside "removed" (repaired rows)
    _tok: Any = None

    @property
    def tokenizer_loaded(self) -> bool:
        return self._tok is not None

    def tokenizer(self):
        if self._tok is None:
            from .models import load_tokenizer, resolve

            t = time.monotonic()
            self._tok = load_tokenizer(resolve(self.cfg.tokenizer))
            info(f"curate: student tokenizer {self.cfg.tokenizer} loaded in {time.monotonic() - t:.1f}s")
        return self._tok

    def count_tokens(self, texts: list[str]) -> list[int]:
        tok = self.tokenizer()
        fast = getattr(tok, "backend_tokenizer", None)  # the Rust tokenizer: same ids, no Python lists per text
        out: list[int] = []
        with bar("tokenize", total=len(texts), unit="row") as b:
            for i in range(0, len(texts), TOKENIZE_BATCH):
                chunk = texts[i: i + TOKENIZE_BATCH]
                if fast is not None:
                    out.extend(len(e.ids) for e in fast.encode_batch(chunk, add_special_tokens=False))
                else:
                    out.extend(len(ids) for ids in tok(chunk, add_special_tokens=False)["input_ids"])
                b.advance(len(chunk))
        return out

    def tokens(self, rows: list[Row]) -> list[int]:
        todo = [r for r in rows if r._tokens is None]
        if todo:
            for r, n in zip(todo, self.count_tokens([r.text(self.cfg.keep_think) for r in todo])):
                r._tokens = n
        return [r._tokens for r in rows]  # type: ignore[misc]


def _drop(ctx: Ctx, reason: str, r: Row, detail: str = "") -> None:
    ctx.tally.add(reason, f"{r.where}: {r.pid}" + (f" ({detail})" if detail else ""))


def _groups(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows by problem id, problems in first-appearance order (dicts keep insertion order)."""
    g: dict[str, list[Row]] = {}
    for r in rows:
        g.setdefault(r.problem.id, []).append(r)
    return g


# ------------------------------------------------------------------------------------------- steps

def _strip_think(rows: list[Row], ctx: Ctx) -> list[Row]:
    for r in rows:
        low = r.output.lower()
        if "<think>" in low and "</think>" not in low:
            ctx.tally.add("strip_think: unclosed_think", f"{r.where}: {r.pid}")
        reasoning, content = split_think(r.output)
        if reasoning is not None or content != r.output.strip():
            ctx.tally.add("strip_think: modified")
        r.output = content
        if reasoning:
            r.reasoning = "\n".join(x for x in (r.reasoning, reasoning) if x)
        r.changed()
    return rows


def _drop_empty(rows: list[Row], ctx: Ctx) -> list[Row]:
    keep = []
    for r in rows:
        if r.output.strip():
            keep.append(r)
        else:
            _drop(ctx, "drop_empty: removed", r)
    return keep


def _drop_truncated(rows: list[Row], ctx: Ctx) -> list[Row]:
    keep = []
    for r in rows:
        if (r.finish_reason or "").lower() == "length":
            _drop(ctx, "drop_truncated: removed", r)
        else:
            keep.append(r)
    return keep


def _grade_opts(cfg: CurateConfig) -> GradeOptions:
    v = cfg.verify_answer
    return GradeOptions(use_math_verify=v.use_math_verify, timeout_s=v.timeout_s)


def _answer(r: Row) -> str | None:
    if r.answer is None:
        r.answer = extract_answer(r.output)
    return r.answer


def _majority_vote(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.majority_vote
    opts = _grade_opts(ctx.cfg)
    keep: list[Row] = []
    agreements: list[float] = []
    labelled = 0
    for pid, group in _groups(rows).items():
        if group[0].problem.answer is not None:
            keep.extend(group)  # has a reference: verify_answer's job
            continue
        clusters: list[list[Row]] = []  # rows whose answers are equivalent, in first-seen order
        for r in group:
            a = _answer(r)
            if a is None:
                continue
            for cl in clusters:
                if answers_equal(a, cl[0].answer, opts, ctx.grade):
                    cl.append(r)
                    break
            else:
                clusters.append([r])
        sizes = sorted((len(cl) for cl in clusters), reverse=True)
        top = max(clusters, key=len) if clusters else []  # max keeps the first of equal sizes
        agreement = len(top) / len(group)
        reason = None
        if len(group) < c.min_samples:
            reason = "majority_vote: too_few_samples"
        elif not clusters:
            reason = "majority_vote: no_answer"
        elif len(sizes) > 1 and sizes[0] == sizes[1]:
            reason = "majority_vote: tie"
        elif agreement < c.min_agreement:
            reason = "majority_vote: low_agreement"
        if len(group) >= c.min_samples:
            agreements.append(agreement)
        if reason:
            for r in group:
                _drop(ctx, reason, r, f"agreement {agreement:.2f}")
            continue
        labelled += 1
        for r in group:
            r.label, r.agreement = top[0].answer, round(agreement, 4)
            if c.keep == "all" or any(r is x for x in top):
                keep.append(r)
            else:
                _drop(ctx, "majority_vote: disagrees", r, f"{r.answer!r} vs {r.label!r}")
    ctx.agreement["vote"] = {"problems": len(agreements), "labelled": labelled, "values": agreements}
    return keep


def _verify_answer(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.verify_answer
    opts = _grade_opts(ctx.cfg)
    keep: list[Row] = []
    per_problem: dict[str, list[int]] = {}
    with bar("verify", total=len(rows), unit="row") as b:
        for i, r in enumerate(rows):
            ref = r.problem.answer if r.problem.answer is not None else r.label
            if ref is None:
                if c.no_reference == "keep":
                    ctx.tally.add("verify_answer: kept_no_reference")
                    keep.append(r)
                else:
                    _drop(ctx, "verify_answer: no_reference", r)
            else:
                ok = answers_equal(_answer(r), ref, opts, ctx.grade)
                if r.problem.answer is not None:
                    per_problem.setdefault(r.problem.id, []).append(int(ok))
                if ok:
                    keep.append(r)
                elif r.answer is None:
                    _drop(ctx, "verify_answer: no_answer", r)
                else:
                    _drop(ctx, "verify_answer: wrong", r, f"{r.answer!r} vs {ref!r}")
            if i % 1000 == 999:
                b.advance(1000)
        b.advance(len(rows) % 1000)
    ctx.agreement["reference"] = {"problems": len(per_problem), "traces": sum(len(v) for v in per_problem.values()),
                                  "correct": sum(sum(v) for v in per_problem.values()),
                                  "values": [sum(v) / len(v) for v in per_problem.values()]}
    return keep


def _repair(r: Row, ctx: Ctx, text: str) -> str | None:
    """Repair ``r``'s wrong steps in place; None when done, else why it cannot be (the row is then dropped)."""
    from .arith import repair_steps

    rep = repair_steps(text, max_fixes=ctx.cfg.arith_check.max_fixes)
    if not rep.ok:
        return rep.reason or "unknown"
    before, after = extract_answer(text), extract_answer(rep.text)
    if rep.reused or after != before:  # the answer rests on a repaired value: it must match the reference now
        ref = r.problem.answer if r.problem.answer is not None else r.label
        if ref is None:
            return "no_reference"
        if after is None or not answers_equal(after, ref, _grade_opts(ctx.cfg), ctx.grade):
            return "answer"
    if ctx.cfg.keep_think and r.reasoning:
        reasoning, content = split_think(rep.text)
        r.reasoning, r.output = reasoning, content
    else:
        r.output = rep.text
    r.changed()
    ctx.tally.add("arith_check: repaired", f"{r.where}: {r.pid} (" + "; ".join(
        f"{f.expr} = {f.old} -> {f.new}" + (f", {f.reused} later use(s)" if f.reused else "") for f in rep.fixes[:3]) + ")")
    ctx.tally.add("arith_check: steps_repaired", n=len(rep.fixes))
    if rep.reused:
        ctx.tally.add("arith_check: later_uses_repaired", n=rep.reused)
    ex = ctx.extra.setdefault("arith_check", {"repaired": 0, "steps_repaired": 0})
    ex["repaired"] += 1
    ex["steps_repaired"] += len(rep.fixes)
    return None


def _arith_check(rows: list[Row], ctx: Ctx) -> list[Row]:
    from .arith import find_steps

    action = ctx.cfg.arith_check.action
    if action == "repair":
        ctx.extra["arith_check"] = {"repaired": 0, "steps_repaired": 0}
    keep = []
    for r in rows:
        text = r.text(ctx.cfg.keep_think)
        steps = find_steps(text)
        bad = [s for s in steps if not s.ok]
        if not steps:
            ctx.tally.add("arith_check: no_steps")
        if not bad:
            keep.append(r)
            continue
        detail = f"{bad[0].expr} = {bad[0].claimed} (is {bad[0].value})"
        if action == "drop":
            _drop(ctx, "arith_check: wrong_step", r, detail)
        elif action == "keep":
            ctx.tally.add("arith_check: wrong_step_kept", f"{r.where}: {r.pid} ({detail})")
            keep.append(r)
        else:
            why = _repair(r, ctx, text)
            if why is None:
                keep.append(r)
            else:
                _drop(ctx, f"arith_check: unrepairable_{why}", r, detail)
    return keep


def _select(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.select
    if c.mode == "shortest":
        lengths = ctx.tokens(rows) if c.by == "tokens" else [len(r.text(ctx.cfg.keep_think)) for r in rows]
        length = {id(r): n for r, n in zip(rows, lengths)}
    chosen: set[int] = set()
    for group in _groups(rows).values():
        if c.mode == "shortest":
            group = sorted(group, key=lambda r: (length[id(r)], r.sample, r.idx))
        chosen.update(id(r) for r in group[: c.k])
    keep = []
    for r in rows:
        if id(r) in chosen:
            keep.append(r)
        else:
            _drop(ctx, "select: not_selected", r)
    return keep


def _length_filter(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.length_filter
    keep = []
    for r, n in zip(rows, ctx.tokens(rows)):
        if n < c.min_tokens:
            _drop(ctx, "length_filter: too_short", r, f"{n} tokens")
        elif n > c.max_tokens:
            _drop(ctx, "length_filter: too_long", r, f"{n} tokens")
        else:
            keep.append(r)
    return keep


_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?|[\u3400-\u9fff]|[+\-*/×÷=^%<>]")


def words(text: str) -> list[str]:
    """Lowercase words, numbers, single CJK characters and operator signs (so "12 + 35" differs from "12 - 35")."""
    return _WORD.findall(to_ascii(text).lower())


def ngrams(ws: list[str], n: int) -> set[tuple[str, ...]]:
    """The n-grams of a word list; a shorter list is its own only n-gram."""
    if len(ws) < n:
        return {tuple(ws)} if ws else set()
    return {tuple(ws[i: i + n]) for i in range(len(ws) - n + 1)}


def _decontaminate(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.decontaminate
    if not ctx.eval_paths:
        raise UserError("curate: the decontaminate step needs eval problems: pass --eval-problems FILE "
                        "(or set decontaminate.eval_problems), or remove decontaminate from steps")
    grams: dict[tuple[str, ...], str] = {}
    for path in ctx.eval_paths:
        et = Tally()
        for p in read_problems(path, ctx.cfg.problem_fields, et):
            for g in ngrams(words(p.question), c.ngram):
                grams.setdefault(g, p.id)
        for reason, n in et.counts.items():
            ctx.tally.add(f"decontaminate: eval file {reason}", n=n)
            for ex in et.examples.get(reason, []):
                ctx.tally.add(f"decontaminate: eval file {reason}", ex, n=0)
    hit_by_problem: dict[str, str | None] = {}
    keep = []
    for r in rows:
        pid = r.problem.id
        if pid not in hit_by_problem:
            hit_by_problem[pid] = next((grams[g] for g in ngrams(words(r.problem.question), c.ngram) if g in grams), None)
        hit = hit_by_problem[pid]
        if hit is None and c.check_output:
            hit = next((grams[g] for g in ngrams(words(r.output), c.ngram) if g in grams), None)
        if hit is None:
            keep.append(r)
        else:
            _drop(ctx, "decontaminate: eval_overlap", r, f"eval problem {hit}")
    ctx.agreement.setdefault("decontaminate", {})["eval_ngrams"] = len(grams)
    return keep


def _dedup_text(r: Row, key: str, keep_think: bool) -> str:
    if key == "question":
        return r.problem.question
    if key == "output":
        return r.text(keep_think)
    return r.problem.question + "\n" + r.text(keep_think)


_SHINGLE_MULT = 1_000_003  # combines a shingle's word hashes: h = h * M + word (mod 2**64)


def shingle_hashes(docs: list[list[str]], k: int) -> list["np.ndarray"]:
    """32-bit hashes of the k-word shingles of each document (a shorter document is one shingle).

    Each distinct word is hashed once (xxh32); shingles are combined for all documents in one numpy pass
    (this is the hot loop of dedup on 100k rows), then cut to 32 bits for MinHash's affine32 scheme,
    which pre-mixes its inputs (datasketch.minhash._fmix), so the combination needs no strength of its own.
    """
    import numpy as np
    import xxhash

    cache: dict[str, int] = {}
    ids = [cache[w] if w in cache else cache.setdefault(w, xxhash.xxh32_intdigest(w.encode()))
           for ws in docs for w in ws]
    flat = np.array(ids, dtype=np.uint64)
    mult, mask = np.uint64(_SHINGLE_MULT), np.uint64(0xFFFFFFFF)
    n = max(len(flat) - k + 1, 0)
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(k):
        acc = acc * mult + flat[j: j + n]
    acc &= mask
    out, start = [], 0
    for ws in docs:
        L = len(ws)
        if L >= k:
            out.append(acc[start: start + L - k + 1])
        else:  # shorter than one shingle: the whole document is its shingle
            h = 0
            for x in flat[start: start + L].tolist():
                h = (h * _SHINGLE_MULT + x) & 0xFFFFFFFFFFFFFFFF
            out.append(np.array([h & 0xFFFFFFFF] if L else [], dtype=np.uint64))
        start += L
    return out


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold."""
    from datasketch import MinHashLSH

    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError:  # a threshold so high that one band would do: LSH only finds candidates, Jaccard decides
        return 2, num_perm // 2
    return lsh.b, lsh.r


def _dedup(rows: list[Row], ctx: Ctx) -> list[Row]:
    """Exact duplicates by their normalized words, then near duplicates by MinHash LSH: datasketch's
    MinHash signatures and band parameters; the band index is numpy group ids, because MinHashLSH's
    per-row query + insert (a byteswap per band, twice) was 4 of 8 seconds on 25k rows. A row is dropped
    when a kept row shares a band with it and their estimated Jaccard reaches the threshold (the same
    candidates and estimate as MinHashLSH + MinHash.jaccard; a test checks they agree)."""
    import numpy as np
    from datasketch import MinHash

    c = ctx.cfg.dedup
    exact: dict[str, int] = {}
    todo: list[int] = []
    docs: list[list[str]] = []
    for i, r in enumerate(rows):
        ws = words(_dedup_text(r, c.key, ctx.cfg.keep_think))
        norm = " ".join(ws)
        if norm in exact:
            _drop(ctx, "dedup: exact_duplicate", r, f"of {rows[exact[norm]].where}")
        else:
            exact[norm] = i
            todo.append(i)
            docs.append(ws)
    if not todo:
        return []
    m = MinHash(num_perm=c.num_perm, seed=c.seed, hashfunc=int)  # inputs are hashes already
    sig = np.empty((len(todo), c.num_perm), dtype=m.hashvalues.dtype)
    with bar("dedup", total=len(todo), unit="row") as b:
        for n, hashes in enumerate(shingle_hashes(docs, c.shingle)):
            m.clear()
            m.update_batch(hashes)
            sig[n] = m.hashvalues
            if n % 1000 == 999:
                b.advance(1000)
        b.advance(len(todo) % 1000)
    n_bands, per_band = lsh_bands(c.threshold, c.num_perm)
    band_ids = []  # per band: a group id per row, equal when the band's values are equal
    for k in range(n_bands):
        band = np.ascontiguousarray(sig[:, k * per_band:(k + 1) * per_band])
        _, inv = np.unique(band.view(np.dtype((np.void, band.dtype.itemsize * per_band))).ravel(), return_inverse=True)
        band_ids.append(inv.ravel().tolist())
    buckets: list[dict[int, list[int]]] = [{} for _ in range(n_bands)]
    need = math.ceil(c.threshold * c.num_perm - 1e-9)  # equal values needed: Jaccard estimate >= threshold
    keep_idx: list[int] = []
    for n, i in enumerate(todo):
        cands = sorted({j for k in range(n_bands) for j in buckets[k].get(band_ids[k][n], ())})
        dup = next((j for j in cands if np.count_nonzero(sig[j] == sig[n]) >= need), None)
        if dup is not None:
            _drop(ctx, "dedup: near_duplicate", rows[i], f"of {rows[todo[dup]].where}")
            continue
        for k in range(n_bands):
            buckets[k].setdefault(band_ids[k][n], []).append(n)
        keep_idx.append(i)
    return [rows[i] for i in keep_idx]


STEPS: dict[str, Callable[[list[Row], Ctx], list[Row]]] = {
    "strip_think": _strip_think,
    "drop_empty": _drop_empty,
    "drop_truncated": _drop_truncated,
    "majority_vote": _majority_vote,
    "verify_answer": _verify_answer,
    "arith_check": _arith_check,
    "select": _select,
    "length_filter": _length_filter,
    "decontaminate": _decontaminate,
    "dedup": _dedup,
}


# ------------------------------------------------------------------------------------------- input

def _get(rec: dict[str, Any], name: str) -> Any:
    """``rec[name]``, or a dotted path into nested dicts/lists (``response.choices.0.message.content``)."""
    if name in rec:
        return rec[name]
    cur: Any = rec
    for part in name.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def _text_field(rec: dict[str, Any], name: str, where: str, tally: Tally) -> tuple[str | None, bool]:
    """(text, ok): None when absent or null; not ok when it is not text (a list, a dict)."""
    v = _get(rec, name)
    if v is None:
        return None, True
    if isinstance(v, str):
        return v, True
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v), True
    tally.add(f"bad_field: {name}", f"{where}: a {type(v).__name__}")
    return None, False


def _clean_text(s: str, tally: Tally) -> str:
    if "\r" in s or "\ufeff" in s:
        tally.add("normalized: crlf_or_bom_in_text")
        s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\ufeff", "")
    return s


def _join(cfg: CurateConfig, traces_path: str | Path, problems_paths: list[str | Path], tally: Tally) -> list[Row]:
    probs: dict[str, Problem] = {}
    for pp in problems_paths:
        for p in read_problems(pp, cfg.problem_fields, tally):
            if p.id in probs:
                tally.add("duplicate_problem_id", f"{pp}: {p.id} (the later one is used)")
            probs[p.id] = p
    f = cfg.trace_fields
    rows: list[Row] = []
    samples: dict[str, int] = {}
    for where, rec in iter_raw(traces_path, tally, count_blank=True):
        pid, ok = _text_field(rec, f.problem_id_field, where, tally)
        question, _ = _text_field(rec, f.question_field, where, tally)
        pid = pid.strip() if pid else None
        if pid is None and question and question.strip():
            pid = stable_id(question.strip())
        if pid is None:
            tally.add(f"null_field: {f.problem_id_field}" if ok else "bad_trace_record", where)
            continue
        p = probs.get(pid)
        if p is None and question and question.strip():
            ref, _ = _text_field(rec, f.answer_field, where, tally)
            q = _clean_text(question.strip(), tally)
            p = probs[pid] = Problem(id=pid, question=q, answer=(ref or "").strip() or None, lang=detect_lang(q),
                                     source=str(rec.get("source") or "user"))
        if p is None:
            tally.add("unknown_problem_id", f"{where}: {pid}")
            continue
        content, ok = _text_field(rec, f.content_field, where, tally)
        if not ok:
            continue
        if content is None:
            tally.add(f"null_field: {f.content_field}", where)
            content = ""
        reasoning, _ = _text_field(rec, f.reasoning_field, where, tally)
        finish, _ = _text_field(rec, f.finish_reason_field, where, tally)
        sample = _get(rec, f.sample_field)
        if not isinstance(sample, int) or isinstance(sample, bool):
            if sample is not None:
                tally.add(f"bad_field: {f.sample_field}", f"{where}: {sample!r} (numbered in file order)")
            sample = samples.get(pid, 0)
        samples[pid] = max(samples.get(pid, 0), sample + 1)
        rows.append(Row(len(rows), where, pid, sample, finish, p, _clean_text(content, tally),
                        _clean_text(reasoning, tally) if reasoning else None))
    return rows


# ------------------------------------------------------------------------------------------ report

def _hist(values: list[float], edges: list[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        for i in range(len(edges) - 1):
            if v < edges[i + 1] or i == len(edges) - 2:
                counts[i] += 1
                break
    return counts


def _summary(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    s = sorted(values)
    pct = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {"n": len(s), "mean": round(sum(s) / len(s), 1), "p50": pct(0.5), "p90": pct(0.9), "max": s[-1]}


AGREEMENT_EDGES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def _agreement_report(agreement: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "reference" in agreement:
        a = agreement["reference"]
        out["reference"] = {"problems": a["problems"], "traces": a["traces"], "correct": a["correct"],
                            "share_correct": round(a["correct"] / a["traces"], 4) if a["traces"] else None,
                            "problems_with_a_correct_sample": sum(v > 0 for v in a["values"]),
                            "pass_rate_histogram": {"edges": AGREEMENT_EDGES, "counts": _hist(a["values"], AGREEMENT_EDGES)}}
    if "vote" in agreement:
        a = agreement["vote"]
        out["majority_vote"] = {"problems": a["problems"], "labelled": a["labelled"],
                                "mean_agreement": round(sum(a["values"]) / len(a["values"]), 4) if a["values"] else None,
                                "agreement_histogram": {"edges": AGREEMENT_EDGES, "counts": _hist(a["values"], AGREEMENT_EDGES)}}
    return out


def _plot(path: Path, report: dict[str, Any], before: list[int], after: list[int], unit: str,
          agreement: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    steps = report["steps"]
    names = [s["step"] for s in steps][::-1]
    vals = [s["removed"] for s in steps][::-1]
    if any("repaired" in s for s in steps):  # rows a step changed and kept, beside the rows it removed
        ys = range(len(names))
        bars = ax.barh([y + 0.2 for y in ys], vals, 0.4, color="#c0504d", label="removed")
        ax.bar_label(bars, fontsize=8)
        rep = ax.barh([y - 0.2 for y in ys], [s.get("repaired", 0) for s in steps][::-1], 0.4, color="#4f9a4f",
                      label="repaired (kept)")
        ax.bar_label(rep, labels=[f"{s['repaired']} ({s['steps_repaired']} steps)" if "repaired" in s else ""
                                  for s in steps][::-1], fontsize=8)
        ax.set_yticks(list(ys), names)
        ax.legend(fontsize=8)
        ax.set_xlabel("rows removed / repaired")
    else:
        bars = ax.barh(names, vals, color="#c0504d")
        ax.bar_label(bars, fontsize=8)
        ax.set_xlabel("rows removed")
    ax.set_title(f"{report['rows_in']} rows in -> {report['rows_out']} rows out")
    ax = axes[0][1]
    hi = max(before + after + [1])
    bins = [hi * i / 40 for i in range(41)]
    if before:
        ax.hist(before, bins=bins, alpha=0.5, label=f"before (n={len(before)}, mean {sum(before) / len(before):.0f})")
    if after:
        ax.hist(after, bins=bins, alpha=0.6, label=f"after (n={len(after)}, mean {sum(after) / len(after):.0f})")
    ax.set_xlabel(f"output length ({unit})")
    ax.set_ylabel("rows")
    ax.set_title("Output length (ES counts student tokens)")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    langs = sorted(set(report["languages_in"]) | set(report["languages"]))
    xs = range(len(langs))
    ax.bar([x - 0.2 for x in xs], [report["languages_in"].get(k, 0) for k in langs], 0.4, label="in")
    ax.bar([x + 0.2 for x in xs], [report["languages"].get(k, 0) for k in langs], 0.4, label="out")
    ax.set_xticks(list(xs), langs)
    ax.set_ylabel("rows")
    ax.set_title("Language of the question")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    series = [(k, agreement[k]["values"]) for k, lab in (("reference", "pass rate vs reference"),
                                                          ("vote", "majority agreement")) if k in agreement]
    for k, values in series:
        ax.hist(values, bins=AGREEMENT_EDGES, alpha=0.6,
                label=("share of samples correct (vs reference)" if k == "reference" else "majority-vote agreement")
                + f", {len(values)} problems")
    if not series:
        ax.text(0.5, 0.5, "no answer checks ran\n(add verify_answer or majority_vote)", ha="center", va="center")
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("share of a problem's samples")
    ax.set_ylabel("problems")
    ax.set_title("Answer agreement per problem")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _markdown(report: dict[str, Any], plot: str | None) -> str:
    L = ["# Curate report", "",
         f"**{report['rows_in']} traces in, {report['rows_out']} training rows out** "
         f"(formats: {', '.join(report['files'].values()) or 'none'}).", "",
         "## Removed per step", "", "| step | in | out | removed |", "|---|---|---|---|"]
    L += [f"| {s['step']} | {s['in']} | {s['out']} | {s['removed']} |" for s in report["steps"]]
    repaired = [s for s in report["steps"] if "repaired" in s]
    if repaired:
        L += ["", "## Repaired per step (kept, changed)", "", "| step | rows repaired | steps repaired |", "|---|---|---|"]
        L += [f"| {s['step']} | {s['repaired']} | {s['steps_repaired']} |" for s in repaired]
    counts = report["counts"]["counts"]
    if counts:
        L += ["", "## Reasons (with the first few file:line)", ""]
        for reason, n in counts.items():
            L.append(f"- `{reason}`: {n}")
            L += [f"    - `{w}`" for w in report["counts"]["examples"].get(reason, [])]
    lb, la = report["lengths"]["before"], report["lengths"]["after"]
    unit = report["lengths"]["unit"]
    L += ["", f"## Output length ({unit})", "", "| | rows | mean | p50 | p90 | max |", "|---|---|---|---|---|---|"]
    for name, s in (("before", lb), ("after", la)):
        L.append(f"| {name} | {s['n']} | {s.get('mean', '-')} | {s.get('p50', '-')} | {s.get('p90', '-')} | {s.get('max', '-')} |")
    L += ["", "## Languages", "", "| lang | in | out |", "|---|---|---|"]
    for k in sorted(set(report["languages_in"]) | set(report["languages"])):
        L.append(f"| {k} | {report['languages_in'].get(k, 0)} | {report['languages'].get(k, 0)} |")
    ag = report["agreement"]
    L += ["", "## Answer agreement", ""]
    if "reference" in ag:
        a = ag["reference"]
        L.append(f"- vs reference: {a['correct']} of {a['traces']} samples correct ({a['share_correct']}); "
                 f"{a['problems_with_a_correct_sample']} of {a['problems']} problems have at least one correct sample; "
                 f"pass-rate histogram {a['pass_rate_histogram']['counts']} over edges {AGREEMENT_EDGES}")
    if "majority_vote" in ag:
        a = ag["majority_vote"]
        L.append(f"- majority vote: {a['labelled']} of {a['problems']} problems without a reference labelled; "
                 f"mean agreement {a['mean_agreement']}; histogram {a['agreement_histogram']['counts']}")
    if not ag:
        L.append("- not measured (verify_answer and majority_vote did not run)")
    g = report["grader"]
    if g["total"]:
        L.append(f"- grader: {g['total']} comparisons, {g['fast_share']:.1%} decided by the exact fast path "
                 f"({g['fast_string']} string, {g['fast_number']} number), {g['math_verify']} by math-verify, "
                 f"{g['errors']} errors")
    if plot:
        L += ["", f"![curate report]({plot})"]
    return "\n".join(L) + "\n"


# -------------------------------------------------------------------------------------------- main

def curate(cfg: CurateConfig, traces_path: str | Path, problems_paths: list[str | Path], out_dir: str | Path,
           eval_problems: list[str | Path] | None = None) -> dict[str, Any]:
    """Write the training files, ``dataset_info.json`` and the curate report into ``out_dir``; return the report.

    ``eval_problems`` (files) are added to ``cfg.decontaminate.eval_problems`` for the decontaminate step.
    """
    t_start = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    eval_paths = [Path(p) for p in [*cfg.decontaminate.eval_problems, *(eval_problems or [])]]
    problems_paths = list(problems_paths or [])
    rows = _join(cfg, traces_path, problems_paths, tally)
    ctx = Ctx(cfg, tally, eval_paths)
    n_in = len(rows)
    raw_lengths_text = [r.text(cfg.keep_think) for r in rows]  # "before": as read, think tags and all
    lang_of: dict[str, str] = {}  # problem id -> "en" | "zh", by the question's script
    langs_in: dict[str, int] = {}
    for r in rows:
        lang = lang_of.get(r.problem.id) or lang_of.setdefault(r.problem.id, detect_lang(r.problem.question))
        langs_in[lang] = langs_in.get(lang, 0) + 1
    per_step = []
    timing: dict[str, float] = {"read": round(time.monotonic() - t_start, 2)}
    for name in cfg.steps:
        t = time.monotonic()
        before = len(rows)
        rows = STEPS[name](rows, ctx)
        per_step.append({"step": name, "in": before, "out": len(rows), "removed": before - len(rows),
                         **ctx.extra.get(name, {})})
        timing[name] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    dataset = []
    for r in rows:
        p = r.problem
        lang = lang_of[p.id]
        row = {"instruction": instruction_for(lang), "input": p.question, "output": r.text(cfg.keep_think),
               "problem_id": p.id, "source": p.source, "lang": lang}  # records.Example, as a plain dict
        if r.label is not None:
            row["answer"], row["agreement"] = r.label, r.agreement
        dataset.append(row)
    timing["rows"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    # lengths for the report: student tokens when a step loaded the tokenizer, else characters
    step = max(1, math.ceil(n_in / HIST_SAMPLE))
    if ctx.tokenizer_loaded:
        unit = f"{cfg.tokenizer} tokens"
        before_len = ctx.count_tokens(raw_lengths_text[::step])
        after_len = ctx.tokens(rows)
    else:
        unit = "characters"
        before_len = [len(s) for s in raw_lengths_text[::step]]
        after_len = [len(d["output"]) for d in dataset]
    timing["lengths"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    report: dict[str, Any] = {
        "rows_in": n_in, "rows_out": len(dataset), "steps": per_step, "counts": tally.to_dict(),
        "languages_in": dict(sorted(langs_in.items())),
        "languages": {k: sum(d["lang"] == k for d in dataset) for k in sorted({d["lang"] for d in dataset})},
        "by_family": {f: sum(d["source"] == f for d in dataset) for f in sorted({d["source"] for d in dataset})},
        "lengths": {"unit": unit, "before": _summary(before_len), "after": _summary(after_len),
                    "before_sampled_every": step},
        "agreement": _agreement_report(ctx.agreement),
        "grader": ctx.grade.to_dict(),
        "files": {},
        "inputs": {str(p): file_sha256(p) for p in [Path(traces_path), *map(Path, problems_paths),
                                                    *(eval_paths if "decontaminate" in cfg.steps else [])]},
        "config": cfg.model_dump(mode="json"),
        "versions": package_versions(),
    }
    if not dataset:
        write_json(out / "curate_report.json", report)
        removed = "; ".join(f"{s['step']} removed {s['removed']}" for s in per_step) or "no steps ran"
        raise UserError(f"curate: the dataset is empty after curation ({n_in} rows in; {removed}; "
                        f"unreadable: {tally.total() - sum(s['removed'] for s in per_step)}); see {out / 'curate_report.json'}")
    report["files"] = write_dataset_files(dataset, out, cfg.dataset_name, cfg.formats)
    timing["write"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    plot = None
    if cfg.plot:
        plot = "curate_report.png"
        _plot(out / plot, report, before_len, after_len, unit, ctx.agreement)
    write_json(out / "curate_report.json", report)
    (out / "curate_report.md").write_text(_markdown(report, plot), encoding="utf-8")
    timing["report"] = round(time.monotonic() - t, 2)
    timing["total"] = round(time.monotonic() - t_start, 2)
    steps_txt = ", ".join(f"{s['step']} -{s['removed']}" for s in per_step)
    info(f"curate: {n_in} traces -> {len(dataset)} rows ({steps_txt}) in {timing['total']:.1f}s")
    if tally.total():
        info("curate: " + "; ".join(f"{k} {v}" for k, v in sorted(tally.counts.items())))
    return report | {"timing": timing}  # timings are returned, never written: the files stay byte-identical


__all__ = ["CurateConfig", "curate", "STEPS", "SEED_STEPS", "words", "ngrams", "Row"]
