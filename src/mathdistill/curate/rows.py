"""The rows the steps pass along, and the context they share (config, tally, the student tokenizer)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..answers import GradeStats
from ..io import Tally
from ..progress import bar, info
from ..records import Problem
from .config import CurateConfig

TOKENIZE_BATCH = 1024  # texts per tokenizer call


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
            from ..models import load_tokenizer, resolve

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


def drop_row(ctx: Ctx, reason: str, r: Row, detail: str = "") -> None:
    ctx.tally.add(reason, f"{r.where}: {r.pid}" + (f" ({detail})" if detail else ""))


def by_problem(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows by problem id, problems in first-appearance order (dicts keep insertion order)."""
    g: dict[str, list[Row]] = {}
    for r in rows:
        g.setdefault(r.problem.id, []).append(r)
    return g
