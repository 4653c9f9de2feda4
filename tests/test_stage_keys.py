"""Stage keys see every code change: each stage's key covers every mathdistill module it imports (at the top or
inside a function, transitively), and editing any of them gives a new key."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from modulefinder import ModuleFinder

import pytest

from mathdistill.stages import STAGE_ENTRY, StageStore, code_version, package_dir, stage_code

SRC = package_dir().parent


def short(names):
    return {m.split(".", 1)[1] if "." in m else m for m in names if m == "mathdistill" or m.startswith("mathdistill.")}


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_key_covers_every_module_the_bytecode_imports(stage):
    """An independent closure: the stdlib ModuleFinder scans each module's *bytecode* for imports, function-level
    (lazy) ones included, and follows them transitively. Every module it finds must be in the stage's key."""
    covered = set(code_version(stage)["modules"])
    for entry in STAGE_ENTRY[stage][0]:
        finder = ModuleFinder(path=[str(SRC)])  # only our sources: third-party imports stay unresolved, fast
        finder.import_hook(f"mathdistill.{entry}")
        found = short(finder.modules)
        assert f"{entry}" in found
        assert found <= covered, f"{stage}: imported but not in its key: {sorted(found - covered)}"


# One interpreter imports the heavy third-party libraries once, then forks a child per stage that imports only
# the stage's modules and reports the mathdistill modules Python loaded.
_PROBE = """
import importlib, json, os, sys
for lib in ("numpy", "torch", "transformers", "peft", "pydantic", "rich", "httpx", "openai", "yaml"):
    try:
        importlib.import_module(lib)
    except Exception:
        pass
assert not any(m.startswith("mathdistill") for m in sys.modules)
out = {}
for stage, entries in json.loads(sys.argv[1]).items():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for e in entries:
            importlib.import_module("mathdistill." + e)
        os.write(w, json.dumps(sorted(m for m in sys.modules if m.startswith("mathdistill"))).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        out[stage] = json.loads(fh.read())
    os.waitpid(pid, 0)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def loaded_by_stage():
    entries = {s: list(e) for s, (e, _) in STAGE_ENTRY.items()}
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(entries)], capture_output=True, text=True, timeout=600,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return {k: short(v) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_key_covers_what_importing_the_stage_loads(stage, loaded_by_stage):
    """What Python really loads when the stage's modules are imported in a fresh interpreter (sys.modules)."""
    missing = loaded_by_stage[stage] - set(code_version(stage)["modules"])
    assert {e for e in STAGE_ENTRY[stage][0]} <= loaded_by_stage[stage]
    assert not missing, f"{stage}: loaded but not in its key: {sorted(missing)}"


@pytest.fixture(scope="module")
def pkg_copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "mathdistill"
    shutil.copytree(package_dir(), root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_editing_any_imported_module_changes_the_key(stage, pkg_copy):
    before = stage_code(stage, pkg_copy)
    assert before["source_sha256"] == code_version(stage)["source_sha256"]  # the copy is the package
    for m in before["modules"] + before["wiring"]:
        f = pkg_copy / "__init__.py" if m == "mathdistill" else pkg_copy.joinpath(*m.split(".")).with_suffix(".py")
        if not f.is_file():
            f = f.with_suffix("") / "__init__.py"
        text = f.read_bytes()
        try:
            f.write_bytes(text + b"\n# an edit\n")
            assert stage_code(stage, pkg_copy)["source_sha256"] != before["source_sha256"], f"{stage}: editing {m}"
        finally:
            f.write_bytes(text)
    assert stage_code(stage, pkg_copy) == before


def test_key_follows_lazy_and_relative_imports_and_leaves_other_modules_out(pkg_copy):
    """A module imported only inside a function of a module the stage imports is in its key; a module no stage
    code imports (serve) is in none, so editing it reruns nothing."""
    (pkg_copy / "lazy_helper.py").write_text("X = 1\n")
    (pkg_copy / "distill.py").write_text((pkg_copy / "distill.py").read_text()
                                         + "\n\ndef _uses_helper():\n    from .lazy_helper import X\n\n    return X\n")
    try:
        train = stage_code("train", pkg_copy)
        assert "lazy_helper" in train["modules"]
        assert "lazy_helper" not in stage_code("problems", pkg_copy)["modules"]
    finally:
        (pkg_copy / "lazy_helper.py").unlink()
        shutil.copy2(package_dir() / "distill.py", pkg_copy / "distill.py")
    for stage in STAGE_ENTRY:
        assert "serve" not in code_version(stage)["modules"], stage
        assert "ablate" not in code_version(stage)["modules"], stage
        assert code_version(stage)["wiring"] == ["run"], stage  # run.py's own source: it wires every stage


def test_the_judge_rubric_is_in_the_eval_key(pkg_copy):
    """Package data a module loads by name (``resources.files("mathdistill.rubrics")``) is code too."""
    before, train = stage_code("eval", pkg_copy), stage_code("train", pkg_copy)
    assert "rubrics" in before["data"] and "rubrics" not in train["data"]
    rubric = next((pkg_copy / "rubrics").glob("*.md"))
    text = rubric.read_bytes()
    try:
        rubric.write_bytes(text + b"\nBe strict.\n")
        assert stage_code("eval", pkg_copy)["source_sha256"] != before["source_sha256"]
        assert stage_code("train", pkg_copy) == train
    finally:
        rubric.write_bytes(text)


def test_store_key_changes_with_the_code(tmp_path, monkeypatch):
    store = StageStore(tmp_path)
    k = store.key("train", {"lr": 1}, {"dataset": "abc"})
    assert k == store.key("train", {"lr": 1}, {"dataset": "abc"})
    import mathdistill.stages as st

    monkeypatch.setattr(st, "code_version", lambda stage: {**stage_code(stage), "source_sha256": "edited"})
    assert store.key("train", {"lr": 1}, {"dataset": "abc"}) != k
