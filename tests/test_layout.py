"""The layout issue 17 asked for, checked from the source as an outside reader would (no project code imported):
module sizes, imports that run one way (the generation layer never reaches ``evaluate``), the stage cache in its
own module, and the endpoint client on httpx rather than raw httpcore."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "mathdistill"
MAX_MODULE_LINES = 650
MAX_SERVE_LINES = 400
# The generation layer: what turns prompts into completions. It sits below evaluate/generate/run and must not
# import them back. Short names; a name may be a module (x.py) or a package (x/); absent ones are skipped.
GENERATION_LAYER = ("backends", "models", "calculator", "client", "serve", "llamacpp")


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``mathdistill.serve.app``; a package is its ``__init__``)."""
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imported(name: str) -> set[str]:
    """Dotted names a module imports anywhere in its source (top level, inside functions, under TYPE_CHECKING),
    relative imports resolved; ``from a import b`` gives ``a`` and ``a.b``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _layer_modules() -> list[str]:
    out = []
    for short in GENERATION_LAYER:
        full = f"mathdistill.{short}"
        out += [m for m in MODULES if m == full or m.startswith(full + ".")]
    return out


def _reaches(module: str, target: str) -> list[str] | None:
    """The import chain from ``module`` to ``target`` through the package's own modules, or None."""
    todo, seen = [[module]], {module}
    while todo:
        chain = todo.pop()
        for dep in sorted(_imported(chain[-1])):
            hit = dep == target or dep.startswith(target + ".")
            if hit:
                return chain + [dep]
            for m in [dep, dep.rpartition(".")[0]]:  # a.b.name: a.b is the module when name is not one
                if m in MODULES and m not in seen:
                    seen.add(m)
                    todo.append(chain + [m])
                    break
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_the_limit(name):
    n = _lines(MODULES[name])
    assert n <= MAX_MODULE_LINES, f"{MODULES[name].relative_to(PKG.parent)}: {n} lines > {MAX_MODULE_LINES}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m == "mathdistill.serve" or m.startswith("mathdistill.serve.")))
def test_no_serve_file_is_over_the_limit(name):
    n = _lines(MODULES[name])
    assert n <= MAX_SERVE_LINES, f"{MODULES[name].relative_to(PKG.parent)}: {n} lines > {MAX_SERVE_LINES}"


def test_serve_is_a_package():
    assert (PKG / "serve" / "__init__.py").is_file() and not (PKG / "serve.py").exists()


def test_the_generation_layer_is_found():
    """Guards the next test against passing on nothing: the layer's modules are where this test looks."""
    found = set(_layer_modules())
    for name in ("mathdistill.backends", "mathdistill.models", "mathdistill.calculator", "mathdistill.client",
                 "mathdistill.serve"):
        assert name in found


@pytest.mark.parametrize("name", _layer_modules())
def test_the_generation_layer_does_not_import_evaluate(name):
    direct = {m for m in _imported(name) if m == "mathdistill.evaluate" or m.startswith("mathdistill.evaluate.")}
    assert not direct, f"{name} imports {sorted(direct)}"
    chain = _reaches(name, "mathdistill.evaluate")
    assert chain is None, "imports run evaluate -> backends, not back: " + " -> ".join(chain)


@pytest.mark.parametrize("source, target, imports", [
    ("from .evaluate import EvalConfig", "mathdistill.evaluate", True),
    ("from . import evaluate", "mathdistill.evaluate", True),
    ("def f():\n    from mathdistill.evaluate import run\n", "mathdistill.evaluate", True),
    ("import mathdistill.evaluate as ev", "mathdistill.evaluate", True),
    ("from .arith import evaluate", "mathdistill.evaluate", False),  # a function named evaluate, not the module
])
def test_the_import_reader_sees_relative_and_lazy_imports(tmp_path, monkeypatch, source, target, imports):
    f = tmp_path / "probe.py"
    f.write_text(source)
    monkeypatch.setitem(MODULES, "mathdistill.probe", f)
    assert any(m == target for m in _imported("mathdistill.probe")) is imports


def _classes(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.ClassDef)}


def test_the_stage_cache_lives_outside_run():
    defined_in = [name for name, path in MODULES.items() if "StageStore" in _classes(path)]
    assert defined_in and "mathdistill.run" not in defined_in, defined_in
    assert "mathdistill.cache" not in defined_in  # cache.py is the HTTP call cache


def test_the_client_is_not_on_raw_httpcore():
    client = [m for m in MODULES if m == "mathdistill.client" or m.startswith("mathdistill.client.")]
    assert client
    raw = {m: sorted(d for d in _imported(m) if d == "httpcore" or d.startswith("httpcore."))
           for m in client}
    assert not any(raw.values()), {m: d for m, d in raw.items() if d}


# Names a module other than a package's __init__ may pass on from another module: what users script.
PUBLIC_REEXPORTS = {"mathdistill.train": {"TrainConfig"}}  # from mathdistill.train import train, TrainConfig


def _passed_on(name: str) -> set[str]:
    """Names a module imports from another ``mathdistill`` module only for others to import: listed in its
    ``__all__``, or imported with ``# noqa: F401``."""
    path = MODULES[name]
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    exported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            exported |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("mathdistill")):
            noqa = any("noqa: F401" in lines[i - 1] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1))
            out |= {a.asname or a.name for a in node.names if noqa or (a.asname or a.name) in exported}
    return out


@pytest.mark.parametrize("name", sorted(m for m, p in MODULES.items() if p.name != "__init__.py"))
def test_no_module_passes_on_names_of_another(name):
    """No re-exports, no shim: an importer imports a name from the module that defines it (a package's
    ``__init__`` exporting its own submodules is its API)."""
    extra = _passed_on(name) - PUBLIC_REEXPORTS.get(name, set())
    assert not extra, f"{name} re-exports {sorted(extra)}: import them from where they are defined"
