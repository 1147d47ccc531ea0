"""``scripts/load-proof`` (docs/development.md#under-load) says what its rounds did.

It once exited 1 after two clean rounds and left its clone of the repository in the temporary folder:
its EXIT trap's ``kill`` of runs that had already ended failed, and under ``set -e`` that failure
became the script's status and stopped the trap before its clean-up. Here it runs one round of a
one-test suite, passing and failing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DEADLINE

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("check", "status"), [("True", 0), ("False", 1)], ids=["passing", "failing"])
def test_the_load_proof_exits_with_its_rounds_verdict_and_leaves_nothing_behind(
    tmp_path: Path, check: str, status: int
) -> None:
    if not (ROOT / ".venv" / "bin" / "pytest").exists():
        pytest.skip("scripts/load-proof runs .venv/bin/pytest, which ./scripts/test makes")
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_one.py").write_text(f"def test_one() -> None:\n    assert {check}\n")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    environment |= {"ROUNDS": "1", "LOGS": str(tmp_path / "logs"), "TMPDIR": str(temporary)}

    done = subprocess.run(
        [str(ROOT / "scripts" / "load-proof"), str(suite)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )

    assert done.returncode == status, done.stdout + done.stderr
    assert "round 1:" in done.stdout
    assert ("1 passed" if status == 0 else "1 failed") in done.stdout
    # mktemp -d's folder held the second copy (pytest's own basetemp may stay there too).
    assert [p.name for p in temporary.iterdir() if p.name.startswith("tmp.")] == [], (
        "the clone was left behind"
    )
