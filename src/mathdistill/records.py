"""The record formats of DESIGN.md (JSON Lines, UTF-8): Problem, Trace, Example, Prediction.

Readers for user files map field names (``question_field=...``) and count every record they cannot use.
Also the pieces every stage reads a teacher's or student's text with: :func:`split_reasoning` (think tags of
any known family), :func:`render_question` (a question spread over fields) and :func:`whole_number`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import UserError
from .io import Tally, get_path, iter_raw, path_beside, text_container

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
    grade_rule: str | None = None  # the grader rule that decided `correct` (mathdistill.answers.grade)
    cqs: dict[str, Any] = Field(default_factory=dict)
    level: int | None = None  # the problem's difficulty level (meta.level: MATH-500's 1-5); None when it has none


class FieldMap(BaseModel):
    """Where a user's file keeps each field (``question_field=problem`` ...)."""

    model_config = ConfigDict(extra="forbid")
    id_field: str = "id"
    question_field: str = "question"
    answer_field: str = "answer"
    source_field: str = "source"
    lang_field: str = "lang"


# ------------------------------------------------------------------------------------ reasoning tags

# (open, close) pairs around a model's reasoning, recognized by default: DeepSeek-R1 / Qwen / vLLM, SkyThought
# (Sky-T1, Bespoke-Stratos), and the ``<reasoning>`` tags of GRPO recipes. A chat template that opens the tag
# itself (R1-distill) leaves only the close tag in the output: what precedes it is reasoning.
REASONING_TAGS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
    ("<reasoning>", "</reasoning>"),
)
# (open, close) pairs around the visible answer (SkyThought's solution block, GRPO's <answer>): the tags are removed, the text kept.
ANSWER_TAGS: tuple[tuple[str, str], ...] = (("<|begin_of_solution|>", "<|end_of_solution|>"), ("<answer>", "</answer>"))

_PATTERNS: dict[tuple[tuple[str, str], ...], list[tuple[re.Pattern, re.Pattern, re.Pattern, str, str]]] = {}


def _patterns(tags: tuple[tuple[str, str], ...]) -> list[tuple[re.Pattern, re.Pattern, re.Pattern, str, str]]:
    """Per pair: (block, close tag, leading open tag) patterns, and the lowercased tags for a cheap test."""
    if tags not in _PATTERNS:
        _PATTERNS[tags] = [(re.compile(re.escape(o) + r"(.*?)" + re.escape(c), re.S | re.I), re.compile(re.escape(c), re.I),
                            re.compile(r"\s*" + re.escape(o), re.I), o.lower(), c.lower()) for o, c in tags]
    return _PATTERNS[tags]


def split_reasoning(text: str | None, tags: tuple[tuple[str, str], ...] | list | None = None,
                    answer_tags: tuple[tuple[str, str], ...] | list | None = None) -> tuple[str | None, str]:
    """A model output -> ``(reasoning, visible answer)``, for each ``(open, close)`` pair in ``tags``
    (default :data:`REASONING_TAGS`; matched case-insensitively): closed blocks are reasoning; then a stray
    close tag (the chat template opened it) makes what precedes it reasoning, and an unclosed open tag at the
    start (cut off by the token limit) makes all of it reasoning. ``answer_tags`` (default :data:`ANSWER_TAGS`)
    are removed from the answer, their text kept. No tag: ``(None, text.strip())``. Several blocks are joined
    with newlines. Same results as ``client.split_think`` for ``<think>``."""
    text = text or ""
    tags = REASONING_TAGS if tags is None else tuple(tuple(t) for t in tags)
    answer_tags = ANSWER_TAGS if answer_tags is None else tuple(tuple(t) for t in answer_tags)
    parts: list[str] = []
    rest = text
    low = rest.lower()
    for block, close, lead, o, c in _patterns(tags):
        if o not in low and c not in low:
            continue  # a substring test first: most outputs hold no tag of most pairs
        parts.extend(block.findall(rest))
        rest = block.sub("", rest)
        last = None
        for last in close.finditer(rest):
            pass
        if last is not None:  # a lone close tag: the template opened it, what precedes it is reasoning
            parts.append(rest[:last.start()])
            rest = rest[last.end():]
        elif (m := lead.match(rest)) is not None:  # an open tag never closed (cut off): all of it is reasoning
            parts.append(rest[m.end():])
            rest = ""
        low = rest.lower()
    for o, c in answer_tags:
        for t in (o, c):
            if t.lower() in low:
                rest = re.sub(re.escape(t), "", rest, flags=re.I)
                low = rest.lower()
    reasoning = "\n".join(p.strip() for p in parts if p.strip()) or None
    return reasoning, rest.strip()


def answer_text(output: str, tags: tuple[tuple[str, str], ...] | list | None = None) -> str:
    """What a grader should read: ``output`` without its reasoning (any :data:`REASONING_TAGS` family, or
    ``tags``) and without answer wrappers; an output with no tag at all is returned unchanged."""
    low = output.lower()
    if not any(t.lower() in low for pair in (*(REASONING_TAGS if tags is None else tags), *ANSWER_TAGS) for t in pair):
        return output
    return split_reasoning(output, tags)[1]


# ------------------------------------------------------------------------------------- field values

def request_error(rec: dict[str, Any]) -> str | None:
    """Why an OpenAI Batch output line holds no completion, else None: its ``error`` (``batch_expired``...) or a
    non-200 ``response`` (``HTTP 400 unsupported_parameter: ...``). Read with :func:`io.get_path`, so the same
    line exported to CSV or Parquet (JSON text in a cell, ``pd.json_normalize`` columns) reads the same."""
    try:
        status = whole_number(get_path(rec, "response.status_code"))
    except (TypeError, ValueError):
        status = None
    if status is not None and status != 200:
        e = {k: _clean(get_path(rec, f"response.body.error.{k}")) for k in ("code", "type", "message")}
        what = e["code"] or e["type"] or ""
        return f"HTTP {status}" + (f" {what}: {e['message'] or ''}".rstrip(": ") if what or e["message"] else "")
    code, message = _clean(get_path(rec, "error.code")), _clean(get_path(rec, "error.message"))
    if code or message:
        return f"{code or 'error'}: {message or ''}".rstrip(": ")
    return None


def finish_reason_beside(rec: dict[str, Any], content_path: str) -> str | None:
    """The stop reason of the same choice as the content at ``content_path``: the nearest ``finish_reason``
    beside it (``response.body.choices.0.finish_reason``), else the nearest ``incomplete_details.reason`` of an
    OpenAI Responses API body (``max_output_tokens`` -> ``length``). None when there is neither."""
    for path in path_beside(content_path, "finish_reason"):
        v = get_path(rec, path)
        if isinstance(v, str) and v.strip():
            return v.strip()
    for path in path_beside(content_path, "incomplete_details"):
        d = get_path(rec, path)
        d = text_container(d) if isinstance(d, str) else d
        if isinstance(d, dict) and d.get("reason"):
            return "length" if d["reason"] == "max_output_tokens" else str(d["reason"])
    return None


def whole_number(v: Any) -> int | None:
    """A count as written by any exporter: ``123``, ``"123"``, ``123.0``, ``"123.0"`` -> 123; None/""/NaN -> None.
    Raises ValueError for anything else (``12.5``, ``"abc"``, a bool)."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "nan")) or (isinstance(v, float) and v != v):
        return None  # NaN: pandas' missing value
    if isinstance(v, bool):
        raise ValueError(f"not a whole number: {v!r}")
    if isinstance(v, int):
        return v
    f = float(v)  # ValueError for text that is not a number
    if not f.is_integer():
        raise ValueError(f"not a whole number: {v!r}")
    return int(f)


_FLOAT_INT = re.compile(r"^[+-]?\d+\.0+$")


def id_text(v: Any) -> str | None:
    """An id as text, the same from every reader and exporter: ``7``, ``7.0`` and ``"7.0"`` (pandas writes an int
    column with a gap as floats, in JSON and CSV alike) -> ``"7"``; other values stripped (``"007"``, ``"1.10"``
    kept as written); None/""/NaN -> None."""
    if v is None or (isinstance(v, float) and v != v):  # NaN: pandas' missing value
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    s = str(v).strip()
    if _FLOAT_INT.match(s):
        s = s.split(".", 1)[0]
    return s or None


_LETTERED = re.compile(r"^\(?[A-Za-z][).:]\s*")


def _render_value(v: Any) -> str:
    """Lists as lettered options (``A. ...`` one a line; options already lettered, ``A)21`` as AQuA writes
    them, are kept as they are), dicts as ``key. value`` lines, others as text."""
    if isinstance(v, list):
        items = [str(x).strip() for x in v]
        if items and all(_LETTERED.match(x) for x in items):
            return "\n".join(items)
        return "\n".join(f"{chr(65 + i) if i < 26 else i + 1}. {x}" for i, x in enumerate(items))
    if isinstance(v, dict):
        return "\n".join(f"{k}. {str(x).strip()}" for k, x in v.items())
    return "" if v is None else str(v).strip()


_SLOT = re.compile(r"\{([^{}]+)\}")


def render_question(template: str, rec: dict[str, Any]) -> tuple[str | None, list[str]]:
    """``template`` with each ``{field}`` replaced by the record's value (a dotted path reaches nested fields;
    lists are rendered ``A. ...``, ``B. ...`` one a line; ``{{``/``}}`` are literal braces). Returns
    (question, missing field names); None when a field is missing. ``\n`` in the template is a newline.
    E.g. ``"{question}\n\nOptions:\n{options}"`` for a multiple-choice export."""
    missing: list[str] = []
    template = template.replace("\\n", "\n")

    def sub(m: re.Match) -> str:
        v = get_path(rec, m.group(1).strip())
        v = text_container(v) if isinstance(v, str) else v  # a list column a CSV holds as text
        if v is None or (isinstance(v, (str, list, dict)) and not (v.strip() if isinstance(v, str) else v)):
            missing.append(m.group(1))
            return ""
        return _render_value(v)

    out = _SLOT.sub(sub, template.replace("{{", "\x00").replace("}}", "\x01")).replace("\x00", "{").replace("\x01", "}")
    return (None if missing else out.strip()), missing


def stable_id(text: str, prefix: str = "p") -> str:
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _clean(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def read_problems(path: str | Path, fields: FieldMap | None = None, tally: Tally | None = None,
                  question_template: str | None = None, wheres: list[str] | None = None) -> list[Problem]:
    """Problems from any supported file. Bad rows are counted in ``tally`` with file:line, others kept
    (``wheres``, when given, receives the file:line of each kept one).
    Ids and answers may be numbers (``7``, ``42``: read as text) and extra columns (``level``, ``subject``) are
    ignored. ``question_template`` (see :func:`render_question`) builds the question from several fields.

    ``path`` may also name a shipped benchmark (``gsm8k``, ``math500[:100]``, ``gsm8k@200``; see
    :mod:`benchmarks`), whose records ignore ``fields``.

    Raises :class:`UserError` when not a single row has the question field (the mapping is wrong), or a
    benchmark's shipped file is missing or edited.
    """
    from . import benchmarks

    if benchmarks.is_benchmark(path):
        out = [Problem(**r) for r in benchmarks.load(path)]
        if wheres is not None:
            wheres.extend(f"{path}:{i}" for i in range(1, len(out) + 1))
        return out
    fields = fields or FieldMap()
    tally = tally if tally is not None else Tally()
    out: list[Problem] = []
    seen_keys: set[str] = set()
    rows = 0
    for where, rec in iter_raw(path, tally):
        rows += 1
        seen_keys.update(rec.keys())
        if question_template:
            q, missing = render_question(question_template, rec)
            if q is None:
                tally.add("missing_question", f"{where}: no {', '.join(repr(m) for m in missing)} for the question template")
                continue
        else:
            q = _clean(rec.get(fields.question_field))
        if q is None:
            tally.add("missing_question", f"{where}: no {fields.question_field!r} field")
            continue
        pid = id_text(rec.get(fields.id_field)) or stable_id(q)
        meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
        out.append(Problem(
            id=pid,
            question=q,
            answer=_clean(rec.get(fields.answer_field)),
            lang=_clean(rec.get(fields.lang_field)) or detect_lang(q),
            source=_clean(rec.get(fields.source_field)) or "user",
            meta=meta,
        ))
        if wheres is not None:
            wheres.append(where)
    if rows and not out and tally.counts.get("missing_question") and question_template:
        keys = ", ".join(sorted(seen_keys)[:12])
        raise UserError(f"{path}: no record has every field of the question template {question_template!r} "
                        f"(fields seen: {keys}); fix --question-template")
    if rows and not out and tally.counts.get("missing_question"):
        keys = ", ".join(sorted(seen_keys)[:12])
        raise UserError(f"{path}: no record has the question field {fields.question_field!r} (fields seen: {keys}); "
                        f"map it with --question-field NAME")
    return out
