"""The README tells the truth about configuration: every setting is in its table, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

from processor.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.M))
    assert table == {name.upper() for name in Settings.model_fields}
