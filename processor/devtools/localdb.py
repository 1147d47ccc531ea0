"""Create scratch PostgreSQL databases with the Supabase platform objects and our migrations.

A migrated *template* database is built once; every test (or local run) then gets a
fresh copy with ``CREATE DATABASE ... TEMPLATE``, which takes milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO_ROOT = Path(__file__).resolve().parents[2]
PLATFORM_SQL = REPO_ROOT / "tests" / "supabase_platform.sql"
MIGRATIONS_DIR = REPO_ROOT / "supabase" / "migrations"

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def with_database(dsn: str, dbname: str) -> str:
    """The same connection string, pointed at another database (URLs stay URLs)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(dsn)._replace(path=f"/{dbname}"))
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """Migrations in file-name order, as ``supabase db reset`` applies them."""
    return sorted(directory.glob("*.sql"))


def apply_sql_files(dsn: str, files: Iterable[Path]) -> None:
    """Run each file as one script, in order, each in its own transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in files:
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
