"""Module boundaries: the web layer and the pure modules never import torch, open_clip or each other's layer;
the collections layer (routes and CLI share it) never imports the web layer.

The rule keeps model work behind ModelService (batched, off the event loop) and keeps images.py and
scoring.py usable and testable without a model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "clip_filter"
MODEL_LIBRARIES = {"torch", "torchvision", "open_clip"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module)
    return roots


def modules(*relative: str) -> list[Path]:
    found: list[Path] = []
    for rel in relative:
        target = PACKAGE / rel
        found.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    return found


@pytest.mark.parametrize("path", modules("api", "images.py", "scoring.py", "core"), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_model_library_imports(path: Path) -> None:
    offending = {name for name in imported_roots(path) if name.split(".")[0] in MODEL_LIBRARIES}
    assert not offending, f"{path.name} imports {sorted(offending)}; go through ModelService instead"


@pytest.mark.parametrize(
    "path", modules("images.py", "scoring.py", "ml", "core", "collections"), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_lower_layers_do_not_import_the_web_layer(path: Path) -> None:
    offending = {name for name in imported_roots(path) if name.startswith(("clip_filter.api", "fastapi", "starlette"))}
    assert not offending, f"{path.name} imports {sorted(offending)}"


def test_route_modules_do_not_import_each_other() -> None:
    """Shared route helpers live in api/bodies.py, api/multipart.py or the service, not in another route module."""
    for path in modules("api/routes"):
        offending = {name for name in imported_roots(path) if name.startswith("clip_filter.api.routes")}
        assert not offending, f"{path.name} imports {sorted(offending)}"


def test_routes_do_not_reach_into_the_store() -> None:
    """Routes call the Collections facade only: no `.store` attribute, no store module."""
    for path in modules("api"):
        tree = ast.parse(path.read_text(), filename=str(path))
        reaches = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "store"]
        assert not reaches, f"{path.name} uses `.store` on lines {reaches}"
        stores = {name for name in imported_roots(path) if name.startswith("clip_filter.collections.store.")}
        assert not stores, f"{path.name} imports {sorted(stores)}"
