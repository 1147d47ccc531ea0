"""The README is the door and the docs tell the truth: the two commands, links that resolve, and a
configuration table that lists exactly the Settings fields with their defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from processor.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def table() -> dict[str, str]:
    """``VARIABLE -> default cell`` of docs/configuration.md's table."""
    return dict(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| ([^|]*) \|", CONFIGURATION, flags=re.M))


def test_every_setting_is_documented_and_nothing_else() -> None:
    assert set(table()) == {name.upper() for name in Settings.model_fields}


WORDS = object()  # a default stated in words ("packaged", "host-pid-random") or derived: not checked


def stated(cell: str) -> object:
    """The default a cell states: ``—`` is none, a backticked literal is that value; words are skipped."""
    cell = cell.strip()
    if cell == "—":
        return None
    literal = re.fullmatch(r"`([^`{}]*)`", cell)
    return literal.group(1) if literal else WORDS


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_documented_defaults_match_the_settings(name: str) -> None:
    field = Settings.model_fields[name]
    cell = stated(table()[name.upper()])
    if cell is WORDS or field.default_factory is not None:
        return
    if cell is None:
        assert field.default is None, (
            f"{name.upper()}: documented without a default, but it has {field.default!r}"
        )
        return
    assert isinstance(cell, str)
    default = field.default
    if isinstance(default, bool):
        assert cell == str(default).lower(), name
    elif isinstance(default, int | float):
        assert float(cell) == float(default), name
    else:
        assert cell == str(default), name


def test_the_readme_shows_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines()]
    assert commands == ["./scripts/dev", "./scripts/test"]
    for script in ("dev", "test"):
        assert (ROOT / "scripts" / script).stat().st_mode & 0o111, f"scripts/{script} is not executable"
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_the_readme_stays_a_door() -> None:
    assert len(README.splitlines()) <= 120
    assert "```mermaid" in README


def test_links_in_the_readme_and_docs_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_every_doc_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\(docs/([a-z-]+\.md)\)", README))
    assert linked == {page.name for page in (ROOT / "docs").glob("*.md")}
