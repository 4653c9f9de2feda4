"""The input join: a traces file (any field names, dotted paths) matched to problems by id, or by the question
a trace carries; every unusable line counted with file:line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import Tally, each_item, get_path, iter_raw
from ..records import Problem, detect_lang, finish_reason_beside, id_text, read_problems, render_question, request_error, stable_id, whole_number
from .config import CurateConfig
from .rows import Row


def _text_field(rec: dict[str, Any], name: str, where: str, tally: Tally) -> tuple[str | None, bool]:
    """(text, ok): None when absent or null; not ok when it is not text (a list, a dict)."""
    v = get_path(rec, name)
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


def join_traces(cfg: CurateConfig, traces_path: str | Path, problems_paths: list[str | Path], tally: Tally) -> list[Row]:
    probs: dict[str, Problem] = {}
    for pp in problems_paths:
        for p in read_problems(pp, cfg.problem_fields, tally, question_template=cfg.question_template):
            if p.id in probs:
                tally.add("duplicate_problem_id", f"{pp}: {p.id} (the later one is used)")
            probs[p.id] = p
    f = cfg.trace_fields
    rows: list[Row] = []
    samples: dict[str, int] = {}
    seen: dict[tuple, str] = {}  # exact repeats of a named sample -> the file:line of the first

    for where, rec in iter_raw(traces_path, tally, count_blank=True):
        pid, ok = _text_field(rec, f.problem_id_field, where, tally)
        question, _ = _text_field(rec, f.question_field, where, tally)
        if cfg.question_template:
            question = render_question(cfg.question_template, rec)[0] or question
        pid = id_text(pid)  # 7, 7.0 and "7.0" (pandas) are the problem "7", as in the problems file
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
        # a * in content_field (choices.*: a request sent with n) makes each item a sample, read from its own choice
        items = each_item(rec, f.content_field, f.reasoning_field)
        for content_field, reasoning_field in items:
            content, ok = _text_field(rec, content_field, where, tally)
            if not ok:
                continue
            if content is None:
                err = request_error(rec)
                if err:  # an OpenAI Batch output line whose request failed: no sample at all
                    tally.add("request_failed", f"{where}: {err}")
                    continue
                tally.add(f"null_field: {f.content_field}", where)
                content = ""
            reasoning, _ = _text_field(rec, reasoning_field, where, tally)
            finish, _ = _text_field(rec, f.finish_reason_field, where, tally)
            if finish is None:  # the same choice's stop reason as the content's
                finish = finish_reason_beside(rec, content_field)
            raw = get_path(rec, f.sample_field)
            try:
                sample = whole_number(raw)
            except (TypeError, ValueError):
                sample = None
            explicit = sample is not None and sample >= 0 and len(items) == 1  # n choices: numbered in order
            if not explicit:
                if raw is not None and len(items) == 1:
                    tally.add(f"bad_field: {f.sample_field}", f"{where}: {raw!r} (numbered in file order)")
                sample = samples.get(pid, 0)
            samples[pid] = max(samples.get(pid, 0), sample + 1)
            if explicit or "custom_id" in rec:  # a line that names its sample (or its batch request) twice, same text:
                key = (pid, sample if explicit else rec["custom_id"], content_field, content, reasoning)  # file appended
                first = seen.setdefault(key, where)
                if first is not where:
                    tally.add("duplicate_line", f"{where}: same sample as {first}")
                    continue
            rows.append(Row(len(rows), where, pid, sample, finish, p, _clean_text(content, tally),
                            _clean_text(reasoning, tally) if reasoning else None))
    return rows
