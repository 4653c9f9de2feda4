"""Public math benchmarks shipped inside the package, loadable by name wherever a problems file is accepted.

Names (``mathdistill problems --list``)::

    gsm8k         GSM8K test, 1,319 problems (MIT); reference = the number after ``####``
    math500       MATH-500, 500 problems (MIT); reference = the ``answer`` field (LaTeX),
                  family (``source``) = ``math500/<subject>``, ``meta.level`` = 1-5

A name may carry a slice or a seeded sample: ``gsm8k[:200]`` (the first 200), ``gsm8k[100:300]``,
``gsm8k@200`` (200 drawn without replacement with ``random.Random(0)``, kept in file order),
``gsm8k@200/7`` (the same with seed 7). The files are read-only package data under
``benchmarks_data/`` with their license notices (``NOTICE.md``); each file's sha256 is recorded here, so
a missing or edited file is a :class:`UserError` in one line, not a silently different benchmark.

This module returns plain dicts with :class:`records.Problem`'s fields (``records.read_problems`` makes
the records), so it imports nothing of the project but :mod:`errors`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

DATA_DIR = Path(__file__).with_name("benchmarks_data")


def _gsm8k(i: int, r: dict[str, Any]) -> dict[str, Any]:
    """A GSM8K row: the reference is the number after ``####`` (thousands commas dropped); the reference chain
    is the worked solution without its ``<<a*b=c>>`` calculator notes, ending in ``#### N``."""
    ref = r["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    chain = re.sub(r"<<[^<>]*>>", "", r["answer"].rsplit("####", 1)[0]).strip() + f"\n#### {ref}"
    return {"id": r.get("id") or f"gsm8k-test-{i}", "question": r["question"], "answer": ref, "lang": "en",
            "source": "gsm8k", "meta": {"reference_cot": chain, "index": i}}


def _math500(i: int, r: dict[str, Any]) -> dict[str, Any]:
    """A MATH-500 row: the reference is the ``answer`` field; the family is the subject, the level in meta."""
    return {"id": r.get("id") or f"math500-{i}", "question": r["problem"], "answer": r["answer"], "lang": "en",
            "source": f"math500/{r['subject']}",
            "meta": {"level": int(r["level"]), "subject": r["subject"], "unique_id": r.get("unique_id"),
                     "reference_solution": r.get("solution"), "index": i}}


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str
    sha256: str
    count: int
    license: str
    source: str
    convert: Callable[[int, dict[str, Any]], dict[str, Any]]

    @property
    def path(self) -> Path:
        return DATA_DIR / self.file


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", "gsm8k_test.jsonl", "e051bee915e4b4d9b212a8ab8871087e4beb358f1b7288dde3b86a0e409da1a1", 1319, "MIT",
              "openai/grade-school-math grade_school_math/data/test.jsonl (commit 3101c7d5)", _gsm8k),
    Benchmark("math500", "math500.jsonl", "60ce6d67454d7bf6a14d56bfc0b791e9e6142006abcf1125c9ec959b8472be3e", 500, "MIT",
              "openai/prm800k prm800k/math_splits/test.jsonl (the MATH-500 subset)", _math500),
)}

_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?:\[(?P<a>-?\d*):(?P<b>-?\d*)\]|@(?P<k>\d+)(?:/(?P<seed>\d+))?)?$")


@dataclass(frozen=True)
class BenchmarkSpec:
    """A parsed name: the benchmark, and a slice ``[a:b]`` or a seeded sample ``@k/seed`` (or neither)."""

    bench: Benchmark
    start: int | None = None
    stop: int | None = None
    sample: int | None = None
    seed: int = 0


def parse(spec: str | Path) -> BenchmarkSpec | None:
    """The benchmark a name refers to, or None when it is not a benchmark name (a file path, say).

    A path that exists on disk is never a benchmark name, so a user's file called ``gsm8k`` still loads.
    Raises :class:`UserError` for a known name with a malformed slice or sample (``gsm8k@0``).
    """
    s = str(spec).strip()
    m = _SPEC.match(s)
    if not m or m["name"].lower() not in BENCHMARKS or Path(s).exists():
        return None
    b = BENCHMARKS[m["name"].lower()]
    if m["k"] is not None:
        k = int(m["k"])
        if not 1 <= k <= b.count:
            raise UserError(f"{s}: a sample of {k} problems from {b.name} ({b.count}); give 1..{b.count}")
        return BenchmarkSpec(b, sample=k, seed=int(m["seed"] or 0))
    a = int(m["a"]) if m["a"] else None
    z = int(m["b"]) if m["b"] else None
    if m["a"] is not None and not range(b.count)[slice(a, z)]:
        raise UserError(f"{s}: the slice selects no problem of {b.name} ({b.count} problems)")
    return BenchmarkSpec(b, a, z)


def not_found_hint(spec: str | Path) -> str:
    """For a problems argument that is neither a file nor a benchmark name: what names and forms are accepted
    ("" when it looks like a file path, e.g. ``data/eval.jsonl``)."""
    s = str(spec).strip()
    if "/" in s.split("@")[0] or "\\" in s or Path(s).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet", ".txt", ".tsv"):
        return ""
    return (f" (no such file, and not a shipped benchmark: names {', '.join(BENCHMARKS)}; forms NAME, NAME[a:b], "
            "NAME@N, NAME@N/SEED; see `mathdistill problems --list`)")


def is_benchmark(spec: str | Path | None) -> bool:
    """True when ``spec`` names a shipped benchmark (and no file of that name exists)."""
    try:
        return spec is not None and parse(spec) is not None
    except UserError:
        return True  # a benchmark name, malformed: loading it reports why


def verified_bytes(b: Benchmark) -> bytes:
    """The benchmark file's bytes after checking its sha256; :class:`UserError` when missing or edited."""
    try:
        data = b.path.read_bytes()
    except OSError:
        raise UserError(f"benchmark {b.name}: its file {b.path} is missing from the installed package; "
                        "reinstall mathdistill (pip install --force-reinstall)") from None
    if hashlib.sha256(data).hexdigest() != b.sha256:
        raise UserError(f"benchmark {b.name}: {b.path} was edited (sha256 differs from the shipped file); "
                        "reinstall mathdistill, or copy the file elsewhere and pass its path instead")
    return data


def load(spec: str | Path) -> list[dict[str, Any]]:
    """Problem dicts (``id``, ``question``, ``answer``, ``lang``, ``source``, ``meta``) of a benchmark name.

    Raises :class:`UserError` when ``spec`` is not a benchmark name, or its file is missing or edited.
    """
    p = parse(spec)
    if p is None:
        names = ", ".join(BENCHMARKS)
        raise UserError(f"{spec}: not a benchmark name (shipped: {names}; `mathdistill problems --list`)")
    lines = verified_bytes(p.bench).decode("utf-8").splitlines()
    rows = [p.bench.convert(i, json.loads(ln)) for i, ln in enumerate(lines) if ln.strip()]
    if p.sample is not None:
        keep = sorted(random.Random(p.seed).sample(range(len(rows)), p.sample))
        return [rows[i] for i in keep]
    return rows[p.start:p.stop]


def digest(spec: str | Path) -> str:
    """A sha256 standing for a benchmark name's content (shipped file's sha256 + the slice/sample), so
    caches and provenance records key on it as on a file's digest."""
    p = parse(spec)
    if p is None:
        raise UserError(f"{spec}: not a benchmark name")
    verified_bytes(p.bench)
    return hashlib.sha256(f"{p.bench.sha256}:{p.start}:{p.stop}:{p.sample}:{p.seed}".encode()).hexdigest()


def listing() -> list[dict[str, Any]]:
    """One row per shipped benchmark: name, count, license, source, file, and whether the file checks out."""
    out = []
    for b in BENCHMARKS.values():
        try:
            verified_bytes(b)
            ok = "ok"
        except UserError as e:
            ok = str(e)
        out.append({"name": b.name, "count": b.count, "license": b.license, "source": b.source,
                    "file": str(b.path), "status": ok})
    return out
