"""The import contract: each package imports only from the layers below it (imports
inside functions count too), there is no import circle anywhere, and the command line
and the app reach the library only through its public API, ``present/`` and ``spec/``.

The layers, lowest first (docs/architecture.md draws them)::

    spec -> adapters -> engine -> results -> store -> analysis -> session -> corpus
         -> present -> api (tokentrail/__init__.py, api.py) -> app -> cli

A module may import its own package and any package to its left. A function-local
import is allowed only for the heavy or optional third-party packages in
``LAZY_THIRD_PARTY`` (so that ``import tokentrail`` and the command line's checks stay
cheap); an internal import is always at the top of its module.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "tokentrail"

LAYERS = [
    "spec",
    "adapters",
    "engine",
    "results",
    "store",
    "analysis",
    "session",
    "corpus",
    "present",
    "api",
    "app",
    "cli",
]

#: what cli/ and app/ may import besides themselves: the public API and the presentation
FRONT_ALLOWED = (
    "tokentrail",
    "tokentrail.api",
    "tokentrail.plots",
    "tokentrail.maps",
    "tokentrail.geometry",
    "tokentrail.present",
    "tokentrail.spec",
)

#: third-party packages imported inside functions, and why
LAZY_THIRD_PARTY = {
    "torch": "import tokentrail and the CLI's checks run before torch (about 2 s) is imported",
    "transformers": "seconds to import; only a load needs it",
    "huggingface_hub": "only a hub look-up needs it",
    "safetensors": "only reading a checkpoint needs it",
    "accelerate": "only a load needs it",
    "gguf": "only converting the bundled GGUF needs it",
    "pandas": "results' frames; not needed to check options",
    "numpy": "not needed to check options",
    "pyarrow": "study files only",
    "duckdb": "study aggregates only",
    "plotly": "figures only",
    "kaleido": "static images only (the app extra)",
    "choreographer": "kaleido's browser finder: checking a PNG/SVG can be drawn",
    "gradio": "the app extra",
    "gradio_client": "the app extra",
    "ray": "the ray extra",
    "sklearn": "the maps extra (t-SNE)",
    "umap": "optional (maps --map-method umap)",
    "rich": "terminal output only",
    "typer": "the CLI only",
    "starlette": "the app's middleware (comes with gradio)",
    "uvicorn": "the app's server (comes with gradio)",
    "fastapi": "the app's routes (comes with gradio)",
    "IPython": "notebook display only",
    "tqdm": "silencing a library's progress bars",
    "psutil": "memory figures, optional",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    """A package's layer; the modules at the top of ``tokentrail/`` (``api.py`` and the
    public submodules ``plots``, ``maps``, ``geometry``) are the public API."""
    parts = module.split(".")
    if len(parts) == 1 or not (PKG / parts[1]).is_dir():
        return "api"
    return parts[1]


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _in_functions(tree: ast.AST) -> set[int]:
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def imports() -> list[tuple[str, str, bool, int]]:
    """Every import in the package: (module, imported module, inside a function, line)."""
    modules = {module_name(p) for p in PKG.rglob("*.py")}
    found = []
    for path in sorted(PKG.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inside = _in_functions(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, path.name == "__init__.py")
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = subs or [base]
            else:
                continue
            found.extend((module, t, id(node) in inside, node.lineno) for t in targets)
    return found


def internal(target: str) -> bool:
    return target == "tokentrail" or target.startswith("tokentrail.")


def test_every_import_points_down_the_layers():
    wrong = []
    for module, target, _, line in imports():
        if not internal(target):
            continue
        a, b = layer_of(module), layer_of(target)
        assert a in LAYERS and b in LAYERS, f"{module} or {target} is in no layer: add its package to LAYERS"
        if LAYERS.index(b) > LAYERS.index(a):
            wrong.append(f"{module}:{line} imports {target} ({a} -> {b}, a layer above)")
    assert not wrong, "\n".join(wrong)


def test_there_is_no_import_circle():
    graph = defaultdict(set)
    for module, target, _, _ in imports():
        if internal(target) and target != module and not module.startswith(target + "."):
            graph[module].add(target)  # a package's own __init__ is run first by Python anyway
    circles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_front_ends_use_only_the_public_api_present_and_spec():
    wrong = []
    for module, target, _, line in imports():
        if layer_of(module) not in ("cli", "app") or not internal(target):
            continue
        own = module.split(".")[1]
        if target.startswith(f"tokentrail.{own}") or target in FRONT_ALLOWED or target.startswith(FRONT_ALLOWED[2:]):
            continue
        if layer_of(module) == "cli" and target.startswith("tokentrail.app"):
            continue  # `tokentrail serve` starts the app
        wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_imports_inside_functions_are_only_the_listed_third_party_packages():
    wrong = []
    for module, target, local, line in imports():
        if not local:
            continue
        if internal(target):
            wrong.append(f"{module}:{line} imports {target} inside a function (internal imports go at the top)")
        elif target.split(".")[0] not in LAZY_THIRD_PARTY and target.split(".")[0] not in sys.stdlib_module_names:
            wrong.append(
                f"{module}:{line} imports {target} inside a function: add it to LAZY_THIRD_PARTY with the reason"
            )
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("case", ["up", "circle", "local"])
def test_the_contract_catches_what_it_forbids(case, monkeypatch, tmp_path):
    """Each rule above fails on a package that breaks it."""
    pkg = tmp_path / "tokentrail"
    for layer in ("spec", "engine"):
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    if case == "up":
        (pkg / "spec" / "a.py").write_text("from tokentrail.engine import b\n")
        (pkg / "engine" / "b.py").write_text("")
        check = test_every_import_points_down_the_layers
    elif case == "circle":
        (pkg / "engine" / "a.py").write_text("from tokentrail.engine import b\n")
        (pkg / "engine" / "b.py").write_text("def f():\n    from tokentrail.engine import a\n")
        check = test_there_is_no_import_circle
    else:
        (pkg / "engine" / "a.py").write_text("def f():\n    from tokentrail.spec import errors\n")
        (pkg / "spec" / "errors.py").write_text("")
        check = test_imports_inside_functions_are_only_the_listed_third_party_packages
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    with pytest.raises(AssertionError):
        check()
