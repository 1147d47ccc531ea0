"""PostgreSQL restarted under a running processor: it reconnects and carries on, and nothing is
left in `processing` once the lease has passed. Restarts the local server, so it runs alone."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import Harness, png_bytes, wait_for

pytestmark = pytest.mark.slow


def restart_postgres() -> None:
    clusters = sorted(Path("/etc/postgresql").glob("*/main")) if Path("/etc/postgresql").exists() else []
    if not clusters or shutil.which("pg_ctlcluster") is None:
        pytest.skip("no local PostgreSQL cluster this test may restart")
    version = clusters[-1].parent.name
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "--mode", "fast"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def reconnect(database_url: str) -> psycopg.Connection[dict[str, object]]:
    def attempt() -> psycopg.Connection[dict[str, object]] | None:
        try:
            return psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError:
            return None

    return wait_for(attempt, timeout=60, what="PostgreSQL to come back")


def test_processor_survives_a_database_restart_mid_job(
    start_processor: Callable[..., Harness], database_url: str, make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(lease_seconds=6, heartbeat_interval_seconds=0.5, sweep_interval_seconds=0.3)
    user = make_user()
    path = harness.upload(user, "a.png", png_bytes())
    running = harness.insert(user, [path], num_inference_steps=100)
    wait_for(
        lambda: harness.db.execute(
            "select 1 from edit_requests where id = %s and progress > 0", (running,)
        ).fetchone(),
        what="the edit to be under way",
    )

    restart_postgres()
    harness.db = reconnect(database_url)

    after = harness.insert(user, [path], num_inference_steps=2)
    for request_id in (running, after):
        assert harness.wait_status(request_id, "succeeded", "failed", timeout=90)["status"] == "succeeded"
    stuck = harness.db.execute(
        "select count(*) as n from edit_requests where status = 'processing'"
    ).fetchone()
    assert stuck == {"n": 0}
