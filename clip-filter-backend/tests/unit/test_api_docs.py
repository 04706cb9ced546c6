"""docs/api.md is the HTTP reference, generated from the app's OpenAPI by scripts/gen_api_docs.py: the committed
file must be exactly what the script writes now, so a route, body or response change cannot leave it behind."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "gen_api_docs.py"
DOCS = ROOT / "docs" / "api.md"

pytestmark = [
    pytest.mark.skipif(not SCRIPT.is_file(), reason="needs the whole repository (not inside the backend image)"),
    pytest.mark.may_skip(reason="needs the whole repository; the backend image has only the backend"),
]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_api_reference_is_what_the_generator_writes() -> None:
    generator = load_generator()
    expected = generator.render(generator.openapi())
    actual = DOCS.read_text(encoding="utf-8") if DOCS.is_file() else ""
    diff = list(difflib.unified_diff(actual.splitlines(), expected.splitlines(), "docs/api.md", "generated", n=1))
    assert not diff, "docs/api.md is stale: run `.venv/bin/python scripts/gen_api_docs.py`\n" + "\n".join(diff[:60])


def test_reference_covers_every_route_of_the_app() -> None:
    """Every documented operation of the OpenAPI appears once, with its request body's schema."""
    generator = load_generator()
    spec = generator.openapi()
    text = generator.render(spec)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            heading = f"### `{method.upper()} {path}`"
            assert text.count(heading) == 1, heading
            section = text.split(heading, 1)[1].split("\n### ", 1)[0]
            for media_type in op.get("requestBody", {}).get("content", {}):
                assert f"- `{media_type}`: " in section, (heading, media_type)


def test_types_are_rendered_readably() -> None:
    generator = load_generator()
    assert generator.type_of({"$ref": "#/components/schemas/Item"}) == "[`Item`](#schema-item)"
    assert generator.type_of({"anyOf": [{"type": "string"}, {"type": "null"}]}) == "string or null"
    assert generator.type_of({"type": "array", "items": {"type": "string", "contentMediaType": "x"}}) == "array of file"
    assert generator.type_of({"enum": ["image", "text"]}) == '`"image"` or `"text"`'
    assert generator._constraints({"minimum": 1.0, "maximum": 1000}) == ">= `1`, <= `1000`"
