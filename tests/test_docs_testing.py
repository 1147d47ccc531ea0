"""docs/testing.md tells the truth: its example runs as written, it lists exactly what
``processor.testing`` exports, and each of those names is exported from there only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import processor.testing

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "testing.md").read_text()


def test_the_example_runs() -> None:
    [example] = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
    exec(compile(example, "docs/testing.md", "exec"), {"__name__": "docs_example"})


def test_the_table_lists_exactly_what_processor_testing_exports() -> None:
    listed = set(re.findall(r"^\| `(\w+)", DOC, flags=re.M))
    exported = set(processor.testing.__all__)
    assert sorted(listed - exported) == [], "documented but not exported"
    assert sorted(exported - listed) == [], "exported but not documented"
    assert all(hasattr(processor.testing, name) for name in exported)


def exports(path: Path) -> set[str]:
    """The names a module's ``__all__`` lists, read from its source (nothing is imported)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
        ):
            return {element.value for element in node.value.elts}  # type: ignore[attr-defined]
    return set()


def test_each_testing_name_is_exported_once() -> None:
    testing = set(processor.testing.__all__)
    elsewhere = {
        str(path.relative_to(ROOT)): shared
        for path in sorted((ROOT / "processor").rglob("*.py"))
        if path.name != "testing.py" and (shared := exports(path) & testing)
    }
    assert elsewhere == {}
