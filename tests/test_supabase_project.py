"""The Supabase CLI project is consistent: config, Vault secret names, seed, migrations, platform bootstrap."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import psycopg

from processor.devtools import localdb

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]


def test_config_declares_the_vault_secrets_the_migrations_read() -> None:
    config = tomllib.loads((ROOT / "supabase" / "config.toml").read_text())
    migrations = "\n".join(path.read_text() for path in localdb.migration_files())
    read = set(re.findall(r"'(edit_processor_[a-z_]+)'", migrations))
    assert read == {
        "edit_processor_webhook_url",
        "edit_processor_webhook_secret",
        "edit_processor_webhook_format",
    }
    assert set(config["db"]["vault"]) == read
    assert config["db"]["seed"]["sql_paths"] == ["./seed.sql"]
    assert set(config["storage"]["buckets"]) == {"edit-inputs", "edit-outputs"}


def test_seed_applies_on_the_migrated_database(database_url: str, db: psycopg.Connection[Row]) -> None:
    localdb.apply_sql_files(database_url, [ROOT / "supabase" / "seed.sql"])
    assert db.execute("select count(*) as n from auth.users").fetchone() == {"n": 1}


def test_platform_bootstrap_is_idempotent(database_url: str) -> None:
    localdb.apply_sql_files(database_url, [localdb.PLATFORM_SQL, localdb.PLATFORM_SQL])


def test_migration_file_names_sort_in_order() -> None:
    names = [path.name for path in localdb.migration_files()]
    assert names == sorted(names)
    assert all(re.match(r"^\d{14}_[a-z0-9_]+\.sql$", name) for name in names)
