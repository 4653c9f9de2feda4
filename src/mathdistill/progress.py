"""Rich progress bars with rate and ETA on a terminal; plain periodic log lines otherwise (CI, pipes)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True, highlight=False)


class _PlainBar:
    """Logs ``desc: n/total (rate unit/s, eta)`` at most every ``every_s`` seconds."""

    def __init__(self, desc: str, total: float | None, unit: str, every_s: float = 15.0):
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.n = 0.0
        self.t0 = self.last = time.monotonic()
        self.postfix = ""
        self.logged_n: float | None = None

    def advance(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every_s or (self.total and self.n >= self.total):
            self.last = now
            self._log(now)

    def set_postfix(self, text: str) -> None:
        self.postfix = text

    def _log(self, now: float) -> None:
        if self.logged_n == self.n:
            return  # the final line was printed already
        self.logged_n = self.n
        dt = max(now - self.t0, 1e-9)
        rate = self.n / dt
        eta = f", eta {((self.total - self.n) / rate):.0f}s" if self.total and rate > 0 else ""
        tot = f"/{self.total:g}" if self.total else ""
        extra = f" {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n:g}{tot} ({rate:.1f} {self.unit}/s{eta}){extra}", file=sys.stderr, flush=True)


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s")


class _RichBar:
    def __init__(self, progress: Progress, task_id, unit: str):
        self.progress, self.task_id, self.unit = progress, task_id, unit

    def advance(self, n: float = 1) -> None:
        self.progress.advance(self.task_id, n)

    def set_postfix(self, text: str) -> None:
        self.progress.update(self.task_id, postfix=text)


@contextmanager
def bar(desc: str, total: float | None, unit: str = "it") -> Iterator[_RichBar | _PlainBar]:
    """A progress bar; ``with bar("train", total=steps, unit="step") as b: b.advance()``."""
    if not console.is_terminal:
        b = _PlainBar(desc, total, unit)
        yield b
        b._log(time.monotonic())
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[postfix]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        tid = progress.add_task(desc, total=total, postfix="")
        yield _RichBar(progress, tid, unit)


def info(msg: str) -> None:
    console.print(msg, soft_wrap=True)
