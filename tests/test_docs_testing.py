"""docs/testing.md tells the truth: its example runs as written, and every helper it lists exists."""

from __future__ import annotations

import re
from pathlib import Path

import processor.testing

DOC = (Path(__file__).resolve().parents[1] / "docs" / "testing.md").read_text()


def test_the_example_runs() -> None:
    [example] = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
    exec(compile(example, "docs/testing.md", "exec"), {"__name__": "docs_example"})


def test_every_listed_helper_is_public() -> None:
    listed = set(re.findall(r"^\| `(\w+)", DOC, flags=re.M))
    assert listed and listed <= set(processor.testing.__all__)
