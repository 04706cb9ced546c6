"""Module boundaries: the web layer and the pure modules never import torch, open_clip or each other's layer;
the collections layer (routes and CLI share it) never imports the web layer.

The rule keeps model work behind ModelService (batched, off the event loop) and keeps images.py and
scoring.py usable and testable without a model. The static checks read each module's own import statements
(relative ones resolved); the subprocess check catches torch arriving indirectly, through another module.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "clip_filter"
MODEL_LIBRARIES = {"torch", "torchvision", "open_clip"}
WEB_LAYER = ("clip_filter.api", "fastapi", "starlette")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    return resolve_imports(path.read_text(encoding="utf-8"), package)


def resolve_imports(source: str, package: list[str]) -> set[str]:
    """Every module a source file in `package` imports, absolute: `from ..api import errors` in
    clip_filter/collections/x.py gives `clip_filter.api` and `clip_filter.api.errors` (the name may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if module:
                names.add(module)
            names.update(f"{module}.{alias.name}" if module else alias.name for alias in node.names)
    return names


def modules(*relative: str) -> list[Path]:
    found: list[Path] = []
    for rel in relative:
        target = PACKAGE / rel
        found.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return found


def _id(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


def _is_web(name: str) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in WEB_LAYER)


def test_relative_imports_are_resolved() -> None:
    """The resolver itself: a relative import of the web layer must not slip past the checks below."""
    source = "from ..api import errors\nfrom . import store\nfrom .store.sqlite import X\nimport torch.nn as nn\n"
    names = resolve_imports(source, ["clip_filter", "collections"])
    assert names == {
        "clip_filter.api",
        "clip_filter.api.errors",
        "clip_filter.collections",
        "clip_filter.collections.store",
        "clip_filter.collections.store.sqlite",
        "clip_filter.collections.store.sqlite.X",
        "torch.nn",
    }
    assert _is_web("clip_filter.api.errors") and not _is_web("clip_filter.apis")


@pytest.mark.parametrize("path", modules("api", "images.py", "scoring.py", "core"), ids=_id)
def test_no_model_library_imports(path: Path) -> None:
    offending = {name for name in imported_names(path) if name.split(".")[0] in MODEL_LIBRARIES}
    assert not offending, f"{path.name} imports {sorted(offending)}; go through ModelService instead"


# collections/ is the domain layer that the API and the CLI share: it raises ClipFilterError and returns
# records; HTTP (status codes, requests, responses) stays in api/, so the CLI and other front ends need no web stack.
@pytest.mark.parametrize("path", modules("images.py", "scoring.py", "ml", "core", "collections"), ids=_id)
def test_lower_layers_do_not_import_the_web_layer(path: Path) -> None:
    offending = {name for name in imported_names(path) if _is_web(name)}
    assert not offending, f"{path.name} imports {sorted(offending)}"


# Modules that must import without pulling in torch, even indirectly (through another module): importing
# PyTorch's CUDA build costs 0.7-0.8 GB and seconds, and these are used where no model is (or may be) loaded.
TORCH_FREE = {
    # Config and the error type are imported by everything; torch here would put it in every process.
    "clip_filter.core.config": "imported by every module and every process",
    "clip_filter.core.errors": "the one error type, imported by every layer",
    # Request validation and error rendering run before (and without) the model: a 400/413/422 answer while
    # the model is loading or has failed must not need it.
    "clip_filter.core.validation": "validation rules run before any model work",
    "clip_filter.api.errors": "renders every error, also while the model is unavailable",
    "clip_filter.api.limits": "request size limits apply before the body reaches the model",
    # The pure modules are the reference the tests compare against, usable without a model.
    "clip_filter.images": "decoding and limits: no model needed (ingest preparation, thumbnails)",
    "clip_filter.scoring": "pure NumPy maths, the reference of the API's numbers",
    # The store and the index serve reads, exports and imports, which need no model (`clip-filter import`).
    "clip_filter.collections.store": "data access: listing, export and import run without a model",
    "clip_filter.collections.vector_index": "NumPy/FAISS search over stored vectors, no model",
}


@pytest.mark.parametrize("module", sorted(TORCH_FREE))
def test_module_imports_without_torch(module: str) -> None:
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps({'leaked': sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(MODEL_LIBRARIES)!r} and '.' not in m), "
        "'ours': sorted(m for m in sys.modules if m.startswith('clip_filter'))}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["leaked"], (
        f"importing {module} ({TORCH_FREE[module]}) loads {report['leaked']}; "
        f"clip_filter modules it imported: {report['ours']}"
    )


def test_route_modules_do_not_import_each_other() -> None:
    """Shared route helpers live in api/bodies.py, api/multipart.py or the service, not in another route module."""
    for path in modules("api/routes"):
        offending = {name for name in imported_names(path) if name.startswith("clip_filter.api.routes")}
        assert not offending, f"{path.name} imports {sorted(offending)}"


def test_routes_do_not_reach_into_the_store() -> None:
    """Routes call the Collections facade only: no `.store` attribute, no store module."""
    for path in modules("api"):
        tree = ast.parse(path.read_text(), filename=str(path))
        reaches = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "store"]
        assert not reaches, f"{path.name} uses `.store` on lines {reaches}"
        submodules = {
            f"clip_filter.collections.store.{p.stem}" for p in (PACKAGE / "collections" / "store").glob("*.py")
        }
        stores = {name for name in imported_names(path) if name.rsplit(".", 1)[0] in submodules or name in submodules}
        assert not stores, f"{path.name} imports {sorted(stores)}"
