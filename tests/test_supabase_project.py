"""The Supabase CLI project is consistent: config, Vault secret names, seed, migrations, platform bootstrap.

The CLI needs Docker, so CI cannot run `supabase start`; what it would read is checked here instead:
config.toml against the keys the CLI decodes (tests/data/supabase_cli_config_keys.json, written by
scripts/supabase-config-keys from the CLI's source), and the seed on the migrated database.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from processor.devtools import localdb

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]

SEED = ROOT / "supabase" / "seed.sql"
SEED_USER = uuid.UUID("00000000-0000-4000-8000-00000000d3e0")
SEED_EMAIL, SEED_PASSWORD = "dev@example.test", "dev-password"
CLI_KEYS: dict[str, str] = json.loads(
    (ROOT / "tests" / "data" / "supabase_cli_config_keys.json").read_text()
)["keys"]
TOML_KINDS: dict[str, Callable[[object], bool]] = {
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "size": lambda v: isinstance(v, str | int) and not isinstance(v, bool),
    "array of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "array of tables": lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
    "array": lambda v: isinstance(v, list),
    "table": lambda v: isinstance(v, dict),
}


def leaves(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from leaves(value, path)
        else:
            yield path, value


def cli_kind(path: str) -> str | None:
    """The kind of value the CLI reads at ``path`` (``*`` matches a name of ours), or None: not a key."""
    for key, kind in CLI_KEYS.items():
        if re.fullmatch(r"[^.]+".join(re.escape(part) for part in key.split("*")), path):
            return kind
    return None


def misread_keys(config: dict[str, Any]) -> list[str]:
    """Keys the CLI would ignore (it warns about none) or fail to decode."""
    wrong = []
    for path, value in leaves(config):
        kind = cli_kind(path)
        if kind is None or not TOML_KINDS[kind](value):
            wrong.append(f"{path} = {value!r} (the CLI reads: {kind or 'no such key'})")
    return wrong


def test_config_holds_only_keys_the_cli_reads_with_the_types_it_reads() -> None:
    config = tomllib.loads((ROOT / "supabase" / "config.toml").read_text())
    assert misread_keys(config) == []


@pytest.mark.parametrize(
    "wrong",
    [
        "[storage.bucket.edit-inputs]\npublic = false",  # `bucket`: the CLI's table is `buckets`
        '[db]\nport = "54322"',  # a string where the CLI decodes a port number
        '[db.seed]\nsql_path = ["./seed.sql"]',
        '[auth]\nenable_signup = "yes"',
    ],
)
def test_the_config_check_catches_a_misspelled_or_mistyped_key(wrong: str) -> None:
    assert misread_keys(tomllib.loads(wrong)) != []


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


@pytest.fixture
def seeded(database_url: str, db: psycopg.Connection[Row]) -> psycopg.Connection[Row]:
    """The test database after `supabase db reset`'s last step: the seed, after the migrations."""
    if db.execute("select to_regprocedure('extensions.crypt(text, text)') as f").fetchone() == {"f": None}:
        pytest.skip("this PostgreSQL has no pgcrypto (Supabase has it; the embedded servers do not)")
    localdb.apply_sql_files(database_url, [SEED])
    return db


def test_seed_applies_on_the_migrated_database_and_again(
    database_url: str, seeded: psycopg.Connection[Row]
) -> None:
    localdb.apply_sql_files(database_url, [SEED])
    assert seeded.execute("select count(*) as n from auth.users").fetchone() == {"n": 1}
    assert seeded.execute("select count(*) as n from auth.identities").fetchone() == {"n": 1}


def test_the_seeded_user_signs_in_with_email_and_password(seeded: psycopg.Connection[Row]) -> None:
    # What GoTrue's password grant does (supabase/auth internal/models/user.go FindUserByEmailAndAudience,
    # then a bcrypt comparison): find the user, compare the hash, read the token columns as strings.
    def sign_in(email: str, password: str) -> Row | None:
        return seeded.execute(
            """select id, role, email_confirmed_at, confirmation_token, recovery_token,
                      email_change_token_new, email_change, email_change_token_current,
                      phone_change, phone_change_token, reauthentication_token
                 from auth.users
                where instance_id = '00000000-0000-0000-0000-000000000000' and lower(email) = lower(%s)
                  and aud = 'authenticated' and not is_sso_user
                  and encrypted_password = extensions.crypt(%s, encrypted_password)""",
            (email, password),
        ).fetchone()

    user = sign_in(SEED_EMAIL.upper(), SEED_PASSWORD)
    assert user is not None and user["id"] == SEED_USER and user["role"] == "authenticated"
    assert user["email_confirmed_at"] is not None  # confirmed: no email round trip before the first sign-in
    assert all(value is not None for value in user.values())  # GoTrue scans these into non-null strings
    assert sign_in(SEED_EMAIL, "wrong-password") is None
    hashed = seeded.execute("select encrypted_password from auth.users").fetchone()
    assert hashed is not None and re.fullmatch(r"\$2a\$\d\d\$[./A-Za-z0-9]{53}", hashed["encrypted_password"])
    identity = seeded.execute(
        "select provider, provider_id, email, identity_data from auth.identities"
    ).fetchone()
    assert identity == {
        "provider": "email",
        "provider_id": str(SEED_USER),
        "email": SEED_EMAIL,
        "identity_data": {"sub": str(SEED_USER), "email": SEED_EMAIL, "email_verified": True},
    }


def test_the_seeded_user_owns_requests_under_rls(
    seeded: psycopg.Connection[Row], as_role: Callable[..., Any]
) -> None:
    with as_role(seeded, "authenticated", SEED_USER) as conn:
        row = conn.execute(
            "insert into edit_requests (prompt, input_paths) values ('make it blue', %s) returning status",
            ([f"{SEED_USER}/photo.png"],),
        ).fetchone()
    assert row == {"status": "awaiting_image"}


VAULT_STAND_IN = """
create schema vault;
create table vault.secrets (id uuid primary key default gen_random_uuid(), name text unique, secret text not null);
create function vault.create_secret(new_secret text, new_name text default null) returns uuid
language sql as $$ insert into vault.secrets (secret, name) values (new_secret, new_name) returning id $$;
"""


def test_the_seed_stores_the_local_webhook_target_only_where_the_cli_did_not(
    database_url: str, db: psycopg.Connection[Row]
) -> None:
    if db.execute("select to_regprocedure('extensions.crypt(text, text)') as f").fetchone() == {"f": None}:
        pytest.skip("this PostgreSQL has no pgcrypto")
    db.execute(VAULT_STAND_IN)
    # `supabase start` stored the URL from EDIT_PROCESSOR_WEBHOOK_URL; the secret's variable was unset.
    db.execute(
        "select vault.create_secret('http://host.docker.internal:9999/webhooks/edit-requests', 'edit_processor_webhook_url')"
    )
    localdb.apply_sql_files(database_url, [SEED, SEED])
    secrets = {r["name"]: r["secret"] for r in db.execute("select name, secret from vault.secrets")}
    assert secrets == {
        "edit_processor_webhook_url": "http://host.docker.internal:9999/webhooks/edit-requests",
        "edit_processor_webhook_secret": "local-dev-webhook-secret",
    }


def test_platform_bootstrap_is_idempotent(database_url: str) -> None:
    localdb.apply_sql_files(database_url, [localdb.PLATFORM_SQL, localdb.PLATFORM_SQL])


def test_migration_file_names_sort_in_order() -> None:
    names = [path.name for path in localdb.migration_files()]
    assert names == sorted(names)
    assert all(re.match(r"^\d{14}_[a-z0-9_]+\.sql$", name) for name in names)


def test_the_docs_walk_the_local_loop_with_the_seeded_user() -> None:
    page = (ROOT / "docs" / "local-supabase.md").read_text()
    for command in ("supabase start", "supabase db reset", "supabase status -o env", "edit-processor serve"):
        assert command in page, command
    assert SEED_EMAIL in page and SEED_PASSWORD in page and str(SEED_USER) in page
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert (
        f'EMAIL = "{SEED_EMAIL}", PASSWORD = "{SEED_PASSWORD}"' in usage
    )  # the supabase-js program signs in as it
    assert "(docs/local-supabase.md)" in (ROOT / "README.md").read_text()
