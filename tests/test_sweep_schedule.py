"""The lease sweep is scheduled whatever the set-up order (issue #15, item 2).

The documented order is ``db push``, then enable pg_cron. The first migration scheduled the job
only if pg_cron already existed, so that order left ``cron.job`` empty, silently. pg_cron is not
installed on the test server (it needs ``shared_preload_libraries``), so "enabling pg_cron" here
creates a stand-in ``cron`` schema with pg_cron 1.6's signature and upsert-by-name behaviour, as
the pg_net tests do for ``net.http_post``; the real extension is used where it is available.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import httpx
import psycopg
import pytest

from processor.adapters.postgres.queue import PostgresJobQueue
from processor.composition import build_runpod_handler
from processor.devtools import localdb
from processor.settings import load_settings
from tests.conftest import Harness, StorageServer

Row = dict[str, Any]
SWEEP = "select public.requeue_expired_edit_requests()"

STAND_IN_PG_CRON = """
create schema cron;
create table cron.job (
  jobid bigserial primary key,
  schedule text not null,
  command text not null,
  nodename text not null default 'localhost',
  nodeport integer not null default 5432,
  database text not null default current_database(),
  username text not null default current_user,
  active boolean not null default true,
  jobname text,
  unique (jobname, username)
);
-- pg_cron 1.6: scheduling a name that exists for this user replaces its schedule and command.
create function cron.schedule(job_name text, schedule text, command text) returns bigint
language sql as $$
  insert into cron.job (jobname, schedule, command) values (job_name, schedule, command)
  on conflict (jobname, username) do update set schedule = excluded.schedule, command = excluded.command
  returning jobid
$$;
"""


def enable_pg_cron(db: psycopg.Connection[Row]) -> None:
    """What the dashboard's "enable pg_cron" does, after the migrations (the documented order)."""
    available = db.execute("select 1 from pg_available_extensions where name = 'pg_cron'").fetchone()
    if available is not None:
        try:
            db.execute("create extension pg_cron")
            return
        except psycopg.Error:
            pass  # needs shared_preload_libraries and cron.database_name: use the stand-in
    db.execute(STAND_IN_PG_CRON)


def jobs(db: psycopg.Connection[Row]) -> list[Row]:
    return db.execute("select jobname, schedule, command, active from cron.job order by jobid").fetchall()


def test_pg_cron_enabled_after_the_migrations_gets_the_sweep_from_the_documented_set_up(
    db: psycopg.Connection[Row],
) -> None:
    assert db.execute("select public.edit_request_sweep_status() as s").fetchone() == {"s": "pg_cron_missing"}
    enable_pg_cron(db)
    # The reported state: pg_cron on, the migrations applied before it, no job.
    assert jobs(db) == []
    assert db.execute("select public.edit_request_sweep_status() as s").fetchone() == {"s": "not_scheduled"}

    # The documented set-up step after enabling pg_cron; running it again changes nothing.
    for _ in range(2):
        assert db.execute("select public.ensure_edit_request_sweep() as s").fetchone() == {"s": "scheduled"}
    assert jobs(db) == [
        {
            "jobname": "requeue-expired-edit-requests",
            "schedule": "30 seconds",
            "command": SWEEP,
            "active": True,
        }
    ]


def test_pg_cron_enabled_before_the_migrations_is_scheduled_by_the_migration(
    db: psycopg.Connection[Row],
) -> None:
    enable_pg_cron(db)
    migration = localdb.MIGRATIONS_DIR / "20261201000300_supabase_fidelity.sql"
    with db.transaction():
        db.execute(migration.read_text())
    assert [job["command"] for job in jobs(db)] == [SWEEP]


def test_only_the_service_role_may_schedule(db: psycopg.Connection[Row], as_role: Any) -> None:
    for role in ("anon", "authenticated"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_role(db, role):
            db.execute("select public.ensure_edit_request_sweep()")


def test_the_processor_schedules_it_at_start_up(database_url: str, db: psycopg.Connection[Row]) -> None:
    async def ensure() -> str:
        async with PostgresJobQueue(database_url) as queue:
            return await queue.ensure_lease_sweep()

    assert asyncio.run(ensure()) == "pg_cron_missing"
    enable_pg_cron(db)
    assert asyncio.run(ensure()) == "scheduled"
    assert len(jobs(db)) == 1


def test_readyz_and_the_log_say_when_no_sweep_is_scheduled(
    start_processor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="processor.core.service"):
        harness: Harness = start_processor()
    ready = httpx.get(f"{harness.served.url}/readyz")
    # Still ready (a running processor sweeps too), but it says the database does not.
    assert ready.status_code == 200
    assert ready.json()["lease_sweep"] == "pg_cron_missing"
    assert any("no lease sweep is scheduled" in record.getMessage() for record in caplog.records)


def test_readyz_reports_a_sweep_scheduled_at_start_up(
    start_processor: Any, db: psycopg.Connection[Row]
) -> None:
    enable_pg_cron(db)
    harness: Harness = start_processor()
    assert httpx.get(f"{harness.served.url}/readyz").json()["lease_sweep"] == "scheduled"
    assert len(jobs(db)) == 1


class _NoEditor:
    """No row is claimed in this test, so no edit runs."""

    def describe(self) -> dict[str, str]:
        return {"engine": "none"}

    def edit(self, *args: object, **kwargs: object) -> Any:
        raise AssertionError("no edit expected")

    def close(self) -> None:
        pass


def test_the_runpod_handler_schedules_it_or_warns(
    database_url: str,
    db: psycopg.Connection[Row],
    storage_server: StorageServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Scale to zero is where the sweep matters: the first row job of a worker checks it."""
    settings = load_settings(
        database_url=database_url,
        supabase_url=storage_server.url,
        supabase_service_role_key=storage_server.service_key,
    )
    job = {"id": "job-1", "input": {"edit_request_id": str(uuid.uuid4())}}  # no such row: not claimed
    with caplog.at_level(logging.WARNING, logger="processor.composition"):
        assert asyncio.run(build_runpod_handler(settings, _NoEditor())(job))["status"] == "not_claimed"
    assert any("pg_cron_missing" in record.getMessage() for record in caplog.records)

    enable_pg_cron(db)
    assert asyncio.run(build_runpod_handler(settings, _NoEditor())(job))["status"] == "not_claimed"
    assert [job["command"] for job in jobs(db)] == [SWEEP]
