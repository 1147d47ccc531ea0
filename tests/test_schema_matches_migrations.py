"""The schema files and the migrations build the same database.

``supabase/schemas/`` is the database as it is, each object once, written for readers;
``supabase/migrations/`` is how a database gets there and how a deployed one is upgraded. Each is
applied to a fresh database on the platform bootstrap, and the two catalogs are compared object by
object (``tests/schema_catalog.py``), as procrastinate compares its ``schema.sql`` with its
migrations (procrastinate-org/procrastinate, ``tests/migration/test_migration.py``). A change made in
one and not the other fails here, naming the object and what differs (docs/development.md says how
a schema change is made).
"""

from __future__ import annotations

import re
import tomllib
import uuid
from collections.abc import Iterator
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg
import pytest

from processor.devtools import localdb
from tests import tiers
from tests.conftest import ADMIN_DSN
from tests.schema_catalog import Catalog, differences, snapshot
from tests.test_sweep_schedule import STAND_IN_PG_CRON

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("the migrations", "the schema files")


def build(files: list[Traversable], *, pg_cron: bool) -> str:
    """A fresh database: the platform, pg_cron (a stand-in) when asked, then ``files``; its name."""
    name = f"qep_schema_{uuid.uuid4().hex[:16]}"
    dsn = localdb.create_database(ADMIN_DSN, name)
    try:
        localdb.apply_sql_files(dsn, [localdb.PLATFORM_SQL])
        if pg_cron:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(STAND_IN_PG_CRON)
        localdb.apply_sql_files(dsn, files)
    except BaseException:
        localdb.drop_database(ADMIN_DSN, name)
        raise
    return name


def built(*, pg_cron: bool) -> Iterator[tuple[str, str]]:
    """(migrated, declared) database names, dropped however the tests end."""
    names: list[str] = []
    try:
        names.append(build(localdb.migration_files(), pg_cron=pg_cron))
        names.append(build(localdb.schema_files(), pg_cron=pg_cron))
        yield names[0], names[1]
    finally:
        for name in names:
            localdb.drop_database(ADMIN_DSN, name)


@pytest.fixture(scope="module")
@tiers.needs("database")
def without_pg_cron() -> Iterator[tuple[str, str]]:
    yield from built(pg_cron=False)


@pytest.fixture(scope="module")
@tiers.needs("database")
def with_pg_cron() -> Iterator[tuple[str, str]]:
    """pg_cron enabled before the schema: both schedule the lease sweep, and cron.job is compared."""
    yield from built(pg_cron=True)


def catalog(name: str) -> Catalog:
    return snapshot(localdb.with_database(ADMIN_DSN, name))


@pytest.mark.database  # the fixture is chosen by name
@pytest.mark.parametrize("databases", ["without_pg_cron", "with_pg_cron"])
def test_the_schema_files_build_what_the_migrations_build(
    databases: str, request: pytest.FixtureRequest
) -> None:
    migrated, declared = request.getfixturevalue(databases)
    found = differences(catalog(migrated), catalog(declared), names=NAMES)
    assert not found, (
        "supabase/schemas and supabase/migrations build different databases. Change both: the schema "
        "file says what the object is, a new migration makes a deployed database so "
        f"(docs/development.md). {len(found)} differences:\n" + "\n".join(found)
    )


def test_the_comparison_names_each_kind_of_drift(without_pg_cron: tuple[str, str]) -> None:
    """Planted in a copy of the declared database, each change is reported with its object and aspect."""
    migrated, declared = without_pg_cron
    name = f"qep_schema_{uuid.uuid4().hex[:16]}"
    dsn = localdb.create_database(ADMIN_DSN, name, template=declared)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("""
                create or replace function public.edit_webhook_max_endpoints()
                returns integer language sql immutable parallel safe set search_path = ''
                as $$ select 11 $$;
                alter function public.cancel_edit_request(uuid) set statement_timeout = '1s';
                grant execute on function public.retry_edit_request(uuid) to authenticated;
                alter table public.edit_requests alter column max_attempts set default 4;
                alter table public.edit_requests disable trigger edit_requests_touch;
                alter table public.edit_requests replica identity default;
                alter publication supabase_realtime drop table public.edit_requests;
                drop policy "users read their usage" on public.edit_user_usage;
                update public.edit_user_limits set max_in_flight = 99;
            """)
        found = "\n".join(differences(catalog(migrated), catalog(name), names=NAMES))
    finally:
        localdb.drop_database(ADMIN_DSN, name)
    for expected in (
        "function public.edit_webhook_max_endpoints(), definition:",
        "-AS $function$ select 10 $function$\n    +AS $function$ select 11 $function$",
        "function public.cancel_edit_request(p_id uuid), definition:",
        "+ SET statement_timeout TO '1s'",
        "function public.retry_edit_request(p_id uuid), privileges:\n"
        "    the migrations: 'postgres: EXECUTE; service_role: EXECUTE'\n"
        "    the schema files: 'authenticated: EXECUTE; postgres: EXECUTE; service_role: EXECUTE'",
        "column public.edit_requests.max_attempts, default:\n    the migrations: '3'\n    the schema files: '4'",
        "trigger edit_requests_touch on public.edit_requests, state:\n"
        "    the migrations: 'enabled'\n    the schema files: 'disabled'",
        "table public.edit_requests, replica identity:\n    the migrations: 'full'\n    the schema files: 'default'",
        "table public.edit_requests in publication supabase_realtime: only in the migrations",
        'policy "users read their usage" on public.edit_user_usage: only in the migrations',
        '"max_in_flight": 99',
    ):
        assert expected in found, f"{expected!r} not reported in:\n{found}"


def test_config_toml_applies_every_schema_file_in_file_name_order() -> None:
    """What the Supabase CLI reads (schema_paths, globs sorted) is what the test builds."""
    config = tomllib.loads((ROOT / "supabase" / "config.toml").read_text())
    listed: list[str] = []
    for pattern in config["db"]["migrations"]["schema_paths"]:
        for path in sorted((ROOT / "supabase").glob(pattern)):
            if path.name not in listed:
                listed.append(path.name)
    assert listed == [path.name for path in localdb.schema_files()]
    assert all(re.fullmatch(r"\d{2}_[a-z0-9_]+\.sql", name) for name in listed), listed


def test_each_object_is_declared_once() -> None:
    """Plain ``create``: a second definition of an object fails the build instead of replacing the first."""
    for path in localdb.schema_files():
        text = re.sub(r"--[^\n]*", "", path.read_text())
        idempotent = r"\bcreate\s+or\s+replace\b|\bcreate\s+[a-z ]+?\s+if\s+not\s+exists\b|\bdrop\s+[a-z ]+?\s+if\s+exists\b"
        found = re.findall(idempotent, text, re.IGNORECASE)
        assert not found, f"{path.name}: {found} (declare each object once, with plain create)"
