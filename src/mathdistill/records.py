"""The record formats of DESIGN.md (JSON Lines, UTF-8): Problem, Trace, Example, Prediction.

Readers for user files map field names (``question_field=...``) and count every record they cannot use.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import UserError
from .io import Tally, iter_raw

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")


def detect_lang(text: str) -> str:
    """``"zh"`` when the text has CJK characters, else ``"en"``.

    Not ``str.isascii()``: "°C", "€" or a curly quote do not make an English question Chinese.
    """
    return "zh" if _CJK.search(text or "") else "en"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Problem(Record):
    id: str
    question: str
    answer: str | None = None  # reference answer, optional
    lang: str = "en"
    source: str = "user"  # problem family, e.g. "gsm_symbolic", "chain_sum"
    meta: dict[str, Any] = Field(default_factory=dict)  # reference chain lives in meta["reference_cot"]


class Trace(Record):
    problem_id: str
    teacher: str
    sample: int = 0
    reasoning: str | None = None  # the think part, if any
    content: str  # the visible answer
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None


class Example(Record):
    instruction: str
    input: str
    output: str
    problem_id: str
    source: str
    lang: str = "en"


class Prediction(Record):
    problem_id: str
    source: str
    output: str
    extracted_answer: str | None
    reference: str | None
    correct: bool
    tokens: int
    finish_reason: str = "stop"  # stop | length | error
    cqs: dict[str, Any] = Field(default_factory=dict)


class FieldMap(BaseModel):
    """Where a user's file keeps each field (``question_field=problem`` ...)."""

    model_config = ConfigDict(extra="forbid")
    id_field: str = "id"
    question_field: str = "question"
    answer_field: str = "answer"
    source_field: str = "source"
    lang_field: str = "lang"


def stable_id(text: str, prefix: str = "p") -> str:
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _clean(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def read_problems(path: str | Path, fields: FieldMap | None = None, tally: Tally | None = None) -> list[Problem]:
    """Problems from any supported file. Bad rows are counted in ``tally`` with file:line, others kept.

    ``path`` may also name a shipped benchmark (``gsm8k``, ``math500[:100]``, ``gsm8k@200``; see
    :mod:`benchmarks`), whose records ignore ``fields``.

    Raises :class:`UserError` when not a single row has the question field (the mapping is wrong), or a
    benchmark's shipped file is missing or edited.
    """
    from . import benchmarks

    if benchmarks.is_benchmark(path):
        return [Problem(**r) for r in benchmarks.load(path)]
    fields = fields or FieldMap()
    tally = tally if tally is not None else Tally()
    out: list[Problem] = []
    seen_keys: set[str] = set()
    rows = 0
    for where, rec in iter_raw(path, tally):
        rows += 1
        seen_keys.update(rec.keys())
        q = _clean(rec.get(fields.question_field))
        if q is None:
            tally.add("missing_question", f"{where}: no {fields.question_field!r} field")
            continue
        pid = _clean(rec.get(fields.id_field)) or stable_id(q)
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        out.append(Problem(
            id=pid,
            question=q,
            answer=_clean(rec.get(fields.answer_field)),
            lang=_clean(rec.get(fields.lang_field)) or detect_lang(q),
            source=_clean(rec.get(fields.source_field)) or "user",
            meta=meta,
        ))
    if rows and not out and tally.counts.get("missing_question"):
        keys = ", ".join(sorted(seen_keys)[:12])
        raise UserError(f"{path}: no record has the question field {fields.question_field!r} (fields seen: {keys}); "
                        f"map it with --question-field NAME")
    return out
