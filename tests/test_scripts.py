"""The two commands' installer: pip runs on the first call and after a change, never otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def install(project: Path) -> list[str]:
    """Run ``install_into .venv dev`` in ``project`` with a pip that only records its arguments."""
    log = project / "pip.log"
    log.write_text("")
    subprocess.run(
        ["bash", "-c", f"source {ROOT}/scripts/lib/install.sh && install_into .venv dev"],
        cwd=project,
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return log.read_text().splitlines()


@pytest.mark.service
def test_pip_runs_only_when_pyproject_or_constraints_change(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    pip = bin_dir / "pip"
    pip.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "pip.log"}\n')
    pip.chmod(0o755)

    first = install(tmp_path)
    assert len(first) == 2
    assert "torch==" in first[0] and "torchvision==" in first[0]  # torch first, pinned
    assert "-c constraints.txt" in first[1] and "-e .[dev]" in first[1]

    assert install(tmp_path) == []  # nothing changed: no pip at all

    with (tmp_path / "constraints.txt").open("a") as constraints:
        constraints.write("example-package==1.0\n")
    assert len(install(tmp_path)) == 2
