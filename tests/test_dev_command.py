"""`edit-processor dev` runs the whole product locally and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from PIL import Image

from tests.conftest import ADMIN_DSN


@pytest.mark.slow
def test_dev_edits_a_sample_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "edited.png"
    env = {**os.environ, "TEST_ADMIN_DATABASE_URL": ADMIN_DSN, "HF_HUB_OFFLINE": "1"}
    env.pop("MODEL_ID", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "processor",
            "dev",
            "--out",
            str(out),
            "--steps",
            "3",
            "--workdir",
            str(tmp_path / ".dev"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stderr
    assert Image.open(out).format == "PNG"
    with psycopg.connect(ADMIN_DSN) as conn:
        leftovers = conn.execute(
            "select count(*) from pg_database where datname like 'qep_dev_%%'"
        ).fetchone()
    assert leftovers == (0,)
