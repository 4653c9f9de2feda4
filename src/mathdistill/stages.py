"""The stage cache shared by ``run`` and ``ablate``: content-addressed stage outputs and their keys.

A stage's output folder lives under ``<cache>/<stage>/<key>/``, where

    key = sha256(stage, its resolved config, the sha256 of every upstream file it reads, its code)

and *its code* (:func:`code_version`) is derived from the source itself: the stage's entry modules and every
``mathdistill`` module they import, directly or inside a function, transitively (:func:`import_closure`,
an AST walk of each module's source), hashed byte for byte, plus ``run.py`` itself (it wires each stage's
arguments), the package data those modules load by name (``resources.files("mathdistill.rubrics")``: the
judge rubric), the package version and the versions of the libraries the stage calls. Editing any of those
modules, even a comment, gives the stage a new key.

Because keys use the *content* of upstream outputs (not their configs), a stage that reruns and writes the same
files stops the cascade there: downstream keys are unchanged. Resource settings that do not change results
(``threads``, endpoint ``concurrency``/timeouts) are left out of the key (:data:`NOT_IN_KEY`).

An entry is complete once ``stage.json`` (config, input hashes, output file hashes, code, versions, seconds) is
in it; a stage runs in ``<key>.partial/`` under a file lock and is renamed into place when it succeeds, so a
killed run resumes at the first unfinished stage, and parallel cells that need the same stage compute it once.
Every execution is one line in ``<cache>/executions.jsonl``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import StageConfig
from .errors import PartialRun, UserError
from .io import package_versions, read_json, read_jsonl, versions_of, write_json, write_jsonl

MANIFEST = "stage.json"
PACKAGE = "mathdistill"
# Package data that is not code: a preset only fills a config, and the resolved config is already in the key.
NOT_CODE = {"presets"}

# Each stage's entry modules (the code that makes its output; their imports are found by import_closure) and
# the libraries whose versions enter its key.
STAGE_ENTRY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "problems": (("problems",), ("reasoning-gym", "math-verify")),
    "sources": (("stages",), ()),  # split_sources
    "generate": (("generate",), ("openai", "math-verify")),
    "curate": (("curate", "stages"), ("math-verify", "transformers")),  # + merge_traces (sources)
    "train": (("train", "stages"), ("torch", "transformers", "peft", "trl", "accelerate", "safetensors")),  # + check_diverged
    "eval": (("evaluate",), ("torch", "transformers", "peft", "math-verify")),
}
# The module that wires every stage (its lambdas pick each stage function's arguments): its own source is in
# every key, not its imports (it imports every stage, so its closure would make any edit rerun everything).
WIRING = ("run",)
# Settings that change speed, not results: not part of any key (``ablate --jobs`` sets the threads).
NOT_IN_KEY: dict[str, set[str]] = {"train": {"threads"}, "eval": {"threads"},
                                   "generate": {"concurrency", "timeout_s", "max_retries"}}


# ------------------------------------------------------------------------------------------- code of a stage

def package_dir() -> Path:
    return Path(__file__).resolve().parent


def module_file(name: str, root: Path | None = None) -> Path | None:
    """The source file of ``mathdistill[.a.b]`` under ``root`` (the package folder), or None when not a module."""
    root = root or package_dir()
    parts = name.split(".")[1:]
    base = root.joinpath(*parts) if parts else root
    if base.is_dir() and (base / "__init__.py").is_file():
        return base / "__init__.py"
    f = base.with_suffix(".py") if parts else None
    return f if f is not None and f.is_file() else None


def _data_dir(name: str, root: Path) -> Path | None:
    """A package data folder named like a module (``mathdistill.rubrics``), when it is one."""
    parts = name.split(".")[1:]
    d = root.joinpath(*parts) if parts else None
    if d is None or d.name in NOT_CODE or not d.is_dir() or (d / "__init__.py").is_file():
        return None
    return d


_PARSED: dict[tuple[str, str, str], tuple[set[str], set[Path]]] = {}


def _imports_of(name: str, file: Path, root: Path) -> tuple[set[str], set[Path]]:
    """``mathdistill`` modules a module's source imports anywhere (top level, functions, TYPE_CHECKING blocks),
    and the package data folders it names in string constants (remembered per source content)."""
    src = file.read_bytes()
    k = (name, str(root), hashlib.sha256(src).hexdigest())
    if k not in _PARSED:
        _PARSED[k] = _scan(name, file, src, root)
    return _PARSED[k]


def _scan(name: str, file: Path, src: bytes, root: Path) -> tuple[set[str], set[Path]]:
    tree = ast.parse(src, str(file))
    is_pkg = file.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    mods: set[str] = set()
    data: set[Path] = set()

    def add(mod: str) -> None:
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            m = ".".join(parts[:i])
            if module_file(m, root):
                mods.add(m)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PACKAGE or a.name.startswith(PACKAGE + "."):
                    add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")
                up = up[: len(up) - (node.level - 1)]
                mod = ".".join(up + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod != PACKAGE and not mod.startswith(PACKAGE + "."):
                continue
            add(mod)
            for a in node.names:  # from . import judge: a submodule, not a name
                if module_file(f"{mod}.{a.name}", root):
                    add(f"{mod}.{a.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(rf"{PACKAGE}(\.\w+)+", node.value):
                d = _data_dir(node.value, root)
                if d:
                    data.add(d)
                elif module_file(node.value, root):  # importlib.import_module("mathdistill.x")
                    add(node.value)
    return mods, data


def import_closure(entries: tuple[str, ...] | list[str], root: Path | None = None) -> tuple[list[str], list[Path]]:
    """Every ``mathdistill`` module the ``entries`` (short names: ``train``, ``evaluate``) import, directly or
    lazily, transitively; the package itself is always in (its ``__init__`` runs first). Returns the sorted
    module names and the package data folders they load (``mathdistill.rubrics``)."""
    root = root or package_dir()
    todo = [PACKAGE] + [f"{PACKAGE}.{e}" for e in entries]
    seen: set[str] = set()
    data: set[Path] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        f = module_file(m, root)
        if f is None:
            raise ValueError(f"{m}: no such module under {root}")
        seen.add(m)
        mods, d = _imports_of(m, f, root)
        data |= d
        todo += sorted(mods - seen)
    return sorted(seen), sorted(data)


def _tree_bytes(folder: Path) -> list[tuple[str, bytes]]:
    return [(p.relative_to(folder).as_posix(), p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


def stage_code(stage: str, root: Path | None = None) -> dict[str, Any]:
    """The code a stage's output depends on: the package version, the sha256 of the source of every module in
    its import closure and of the package data they load, the module names, and the versions of its libraries.
    ``root``: the package folder to read (default: this installed package)."""
    entries, pkgs = STAGE_ENTRY[stage]
    root = root or package_dir()
    mods, data = import_closure(entries, root)
    h = hashlib.sha256()
    wiring = [f"{PACKAGE}.{w}" for w in WIRING if module_file(f"{PACKAGE}.{w}", root)]
    for m in mods + [w for w in wiring if w not in mods]:
        h.update(m.encode() + b"\0" + module_file(m, root).read_bytes() + b"\0")  # type: ignore[union-attr]
    for d in data:
        for rel, b in _tree_bytes(d):
            h.update(f"{d.name}/{rel}".encode() + b"\0" + b + b"\0")
    return {"mathdistill": __version__, "source_sha256": h.hexdigest()[:16],
            "modules": [m.split(".", 1)[1] if "." in m else m for m in mods],
            "wiring": [w.split(".", 1)[1] for w in wiring], "data": [d.name for d in data], **versions_of(pkgs)}


def modules_digest(entries: tuple[str, ...] | list[str]) -> str:
    """16 hex digits of sha256 over the source of ``entries`` and every module they import (for caches of
    derived files outside the stage store, e.g. the ablation leaderboard)."""
    root = package_dir()
    h = hashlib.sha256()
    for m in import_closure(entries, root)[0]:
        h.update(m.encode() + b"\0" + module_file(m, root).read_bytes() + b"\0")  # type: ignore[union-attr]
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def code_version(stage: str) -> dict[str, Any]:
    """:func:`stage_code` of the installed package, computed once per process."""
    return stage_code(stage)


# ---------------------------------------------------------------------------------------------- hashing

def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) within a process."""
    p = Path(path)
    st = p.stat()
    k = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if k not in _FILE_HASHES:
        _FILE_HASHES[k] = _sha256_file(p)
    return _FILE_HASHES[k]


def tree_files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative POSIX path -> sha256), the manifest excepted."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = _sha256_file(p)
    return out


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def stage_config(stage: str, cfg: StageConfig) -> dict[str, Any]:
    """A stage's config as it enters the key (resource-only fields left out)."""
    return cfg.model_dump(mode="json", exclude=NOT_IN_KEY.get(stage, set()))


def release_memory() -> None:
    """Return freed heap memory to the OS after a stage. glibc keeps large freed blocks (a training's
    activations, several GiB) in its arenas, so the next stage's fit check would see them as used."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


# ------------------------------------------------------------------------------------------ stage cache

class NotCached(Exception):
    """Raised by ``StageStore.run(dry=True)`` at the first stage that would have to run."""


class CachedFailure(UserError):
    """This stage failed before on the same inputs (``retry_failed`` off): its recorded reason."""


# Failures that say nothing about the inputs (a network error, a teacher call that gave up, memory):
# never recorded, so the next attempt retries them.
TRANSIENT = (PartialRun, OSError, MemoryError)


@dataclass
class StageResult:
    stage: str
    key: str
    dir: Path
    files: dict[str, str]  # relative path -> sha256
    executed: bool  # ran in this call (False: found in the cache)
    seconds: float  # time it took when it ran (also for cache hits: the original run's time)

    def digest(self, *names: str) -> str:
        """sha256 over the named files/folders of this output (all of it when no names)."""
        sel = {k: v for k, v in self.files.items()
               if not names or any(k == n or k.startswith(n.rstrip("/") + "/") for n in names)}
        if names and not sel:
            raise UserError(f"{self.stage} output {self.dir} has none of {list(names)}")
        return digest(sel)


class StageStore:
    """Content-addressed stage outputs under ``root/<stage>/<key>/`` (see the module docstring)."""

    def __init__(self, root: str | Path, retry_failed: bool = True):
        self.root = Path(root)
        self.retry_failed = retry_failed  # False: a stage that failed on these inputs fails again at once

    def key(self, stage: str, config: Any, inputs: Any) -> str:
        """24 hex digits of sha256(stage, config, inputs, :func:`code_version` of the stage)."""
        return digest({"stage": stage, "config": config, "inputs": inputs, "code": code_version(stage)})[:24]

    def lookup(self, stage: str, key: str) -> StageResult | None:
        d = self.root / stage / key
        m = d / MANIFEST
        if not m.is_file():
            return None
        man = read_json(m)
        return StageResult(stage, key, d, man["files"], False, man.get("seconds", 0.0))

    def run(self, stage: str, config: Any, inputs: Any, fn: Callable[[Path], Any], label: str = "",
            dry: bool = False) -> StageResult:
        """The cached output of ``stage`` for these inputs; runs ``fn(folder)`` to make it when missing."""
        key = self.key(stage, config, inputs)
        hit = self.lookup(stage, key)
        if hit:
            return hit
        failed = self.root / stage / f"{key}.failed.json"
        if not self.retry_failed and failed.is_file():
            raise CachedFailure(f"{read_json(failed)['reason']} (failed before on the same inputs; retry with --retry-failed)")
        if dry:
            raise NotCached(f"{stage} {key}")
        from filelock import FileLock

        base = self.root / stage
        base.mkdir(parents=True, exist_ok=True)
        with FileLock(str(base / f"{key}.lock")):
            hit = self.lookup(stage, key)  # another process may have made it while we waited
            if hit:
                return hit
            work = base / f"{key}.partial"  # kept across a crash: a resumable stage continues in it
            work.mkdir(exist_ok=True)
            t0 = time.monotonic()
            try:
                fn(work)
            except BaseException as e:
                release_memory()
                self._log(stage, key, label, time.monotonic() - t0, f"failed: {type(e).__name__}")
                if isinstance(e, Exception) and not isinstance(e, TRANSIENT):
                    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    write_json(failed, {"stage": stage, "key": key, "label": label, "time": time.time(),
                                        "reason": msg if isinstance(e, UserError) else f"{type(e).__name__}: {msg}"})
                raise
            failed.unlink(missing_ok=True)
            release_memory()  # a grid runs many stages in one process: the next training needs that memory back
            dt = time.monotonic() - t0
            files = tree_files(work)
            write_json(work / MANIFEST, {"stage": stage, "key": key, "label": label, "config": config,
                                         "inputs": inputs, "code": code_version(stage), "files": files,
                                         "seconds": round(dt, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "versions": package_versions()})
            final = base / key
            if final.exists():  # a folder without a manifest: left by an interrupted rename
                shutil.rmtree(final)
            os.replace(work, final)
            self._log(stage, key, label, dt, "ok")
            return StageResult(stage, key, final, files, True, round(dt, 3))

    def _log(self, stage: str, key: str, label: str, seconds: float, status: str) -> None:
        line = json.dumps({"stage": stage, "key": key, "label": label, "seconds": round(seconds, 3),
                           "status": status, "pid": os.getpid(), "time": time.time()})
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "executions.jsonl", "a", encoding="utf-8") as fh:  # one short O_APPEND write
            fh.write(line + "\n")

    def executions(self) -> list[dict[str, Any]]:
        """Every stage execution recorded in this cache, oldest first."""
        p = self.root / "executions.jsonl"
        if not p.is_file():
            return []
        return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


# ---------------------------------------------------------- stage code that lives here (in the keys above)

def split_sources(sizes: dict[str, int], seed: int, train_file: Path, out: Path) -> None:
    """Stage ``sources``: shuffle the training problems (``seed``) and cut them into slices of ``sizes``, in order
    (``<name>.jsonl`` each, and ``sources_summary.json``)."""
    probs = read_jsonl(train_file)
    need = sum(sizes.values())
    if need > len(probs):
        raise UserError(f"sources need {need} training problems ({', '.join(f'{k} {v}' for k, v in sizes.items())}) "
                        f"but problems/train.jsonl has {len(probs)}; lower sources.*.n or raise problems.families.*.n_train")
    order = list(range(len(probs)))
    random.Random(f"{seed}-sources").shuffle(order)
    pos, summary = 0, {}
    for name, n in sizes.items():
        rows = [probs[i] for i in order[pos: pos + n]]
        pos += n
        write_jsonl(out / f"{name}.jsonl", rows)
        summary[name] = {"problems": len(rows), "by_family": {f: sum(r.get("source") == f for r in rows)
                                                              for f in sorted({r.get("source") for r in rows})}}
    write_json(out / "sources_summary.json", {"sources": summary, "unused": len(probs) - pos})


def merge_traces(parts: list[Path], out: Path) -> None:
    """Concatenate the sources' trace files into one (part of the ``curate`` stage)."""
    with open(out, "w", encoding="utf-8") as fh:
        for p in parts:
            fh.write(p.read_text(encoding="utf-8"))


def check_diverged(train_dir: Path) -> None:
    """Fail a training that diverged: a non-finite logged loss, or NaN/inf in the weights it wrote
    (the transformers Trainer filters NaN losses out of its logs, so the weights are the reliable sign)."""
    log = train_dir / "train_log.jsonl"
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            loss = row.get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise UserError(f"train: loss is {loss} at step {row.get('step')} (training diverged); "
                                "lower train.learning_rate or raise train.warmup_ratio")
    from safetensors.torch import load_file

    for f in sorted(train_dir.rglob("*.safetensors")):
        bad = [k for k, v in load_file(str(f)).items() if v.is_floating_point() and not bool(v.isfinite().all())]
        if bad:
            raise UserError(f"train: training diverged to NaN/inf ({len(bad)} tensors in {f.name}, first {bad[0]}); "
                            "lower train.learning_rate or raise train.warmup_ratio")
