"""The README's settings table lists exactly the fields of `Settings`, each with its environment variable and
its default, so the user's guide cannot fall behind the code.

The table's format, one row per setting: | `ENV_NAME` | default | meaning |. The default cell starts with the
default in backticks (`32`, `auto`, `~/.cache/...`), or with `unset` (None) or `empty` (""); more words may
follow it, e.g. `26214400` (25 MB).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices
from pydantic.fields import FieldInfo

from clip_filter.core.config import Settings

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"

pytestmark = [
    pytest.mark.skipif(not README.is_file(), reason="needs the whole repository (not inside the backend image)"),
    pytest.mark.may_skip(reason="needs the whole repository; the backend image has only the backend"),
]

ROW = re.compile(r"^\|\s*`(?P<env>[A-Z][A-Z0-9_]*)`\s*\|(?P<default>[^|]*)\|")


def settings_section(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("## Settings")
    end = next((n for n in range(start + 1, len(lines)) if lines[n].startswith("## ")), len(lines))
    return lines[start + 1 : end]


def readme_rows(text: str) -> list[tuple[str, str]]:
    return [(m["env"], m["default"].strip()) for line in settings_section(text) if (m := ROW.match(line))]


def env_name(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0]
    prefix = Settings.model_config.get("env_prefix", "")
    return f"{prefix}{name}".upper()


def shown_default(field: FieldInfo) -> str:
    """How the README writes a field's default."""
    value: Any = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, Path):
        home = Path.home()
        value = f"~/{value.relative_to(home).as_posix()}" if value.is_relative_to(home) else value.as_posix()
    elif isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def expected() -> dict[str, str]:
    return {env_name(name, field): shown_default(field) for name, field in Settings.model_fields.items()}


def test_settings_table_lists_exactly_the_settings() -> None:
    rows = readme_rows(README.read_text(encoding="utf-8"))
    names = [env for env, _ in rows]
    duplicates = sorted({env for env in names if names.count(env) > 1})
    assert not duplicates, f"README settings table lists these twice: {duplicates}"
    missing = sorted(set(expected()) - set(names))
    extra = sorted(set(names) - set(expected()))
    assert not missing, f"README settings table lacks rows for: {missing}"
    assert not extra, f"README settings table lists variables Settings does not read: {extra}"


def test_settings_table_shows_each_default() -> None:
    want = expected()
    wrong = {
        env: (cell, want[env])
        for env, cell in readme_rows(README.read_text(encoding="utf-8"))
        if env in want and not (cell == want[env] or cell.startswith(want[env] + " "))
    }
    assert not wrong, "README default cells (found, expected at their start): " + repr(wrong)


def test_the_table_parser_reads_the_documented_format() -> None:
    text = (
        "## Settings\n\n| variable | default | meaning |\n|---|---|---|\n"
        "| `A_B` | `5` (five) | x |\n| `C` | unset | y |\n## Next\n| `D` | `1` | z |\n"
    )
    assert readme_rows(text) == [("A_B", "`5` (five)"), ("C", "unset")]
    field = Settings.model_fields["max_batch_wait_ms"]
    assert field.default == 5.0 and shown_default(field) == "`5`"
    assert shown_default(Settings.model_fields["checkpoint_sha256"]) == "unset"
    assert shown_default(Settings.model_fields["cache_dir"]) == "`~/.cache/clip-filter/models`"


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens) and explicit <a id>s."""
    found = set(re.findall(r'<a id="([^"]+)"', markdown))
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        found.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return found


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md", "docs/architecture.md", "docs/benchmarks.md"])
def test_relative_links_resolve(doc: str) -> None:
    """Every relative link of the user-facing docs reaches a file, and its #anchor a heading there."""
    source = ROOT / doc
    text = source.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        reaches = file.exists() and (
            not anchor or file.suffix != ".md" or anchor in anchors(file.read_text(encoding="utf-8"))
        )
        if not reaches:
            broken.append(target)
    assert not broken, f"{doc}: broken links {broken}"
