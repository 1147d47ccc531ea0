"""``MAX_IMAGE_BYTES`` above the ``edit-inputs`` bucket's ``file_size_limit`` is refused at start-up.

Storage refuses uploads above the bucket's limit, so raising the setting alone used to do
nothing; now the processes that accept inputs (``serve``, ``worker``, ``mcp``) refuse to start
and say which two numbers disagree.
"""

from __future__ import annotations

import socket

import psycopg
import pytest
from typer.testing import CliRunner

from processor.cli import app
from processor.composition import check_input_limit, check_output_types
from processor.domain import rules
from processor.domain.errors import ConfigurationError
from processor.settings import load_settings

Db = psycopg.Connection[dict[str, object]]
LARGER = rules.MAX_IMAGE_BYTES + 1


def test_the_default_fits_the_migrated_bucket(database_url: str) -> None:
    check_input_limit(load_settings(database_url=database_url))


def test_a_setting_above_the_bucket_limit_is_refused_with_both_numbers(database_url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_input_limit(load_settings(database_url=database_url, max_image_bytes=LARGER))
    assert str(LARGER) in str(refused.value) and str(rules.MAX_IMAGE_BYTES) in str(refused.value)


def test_raising_the_bucket_limit_too_makes_the_setting_effective(database_url: str, db: Db) -> None:
    db.execute("update storage.buckets set file_size_limit = %s where id = %s", (LARGER, rules.INPUT_BUCKET))
    check_input_limit(load_settings(database_url=database_url, max_image_bytes=LARGER))
    db.execute("update storage.buckets set file_size_limit = null where id = %s", (rules.INPUT_BUCKET,))
    check_input_limit(load_settings(database_url=database_url, max_image_bytes=10 * LARGER))


def test_a_missing_bucket_is_refused(database_url: str, db: Db) -> None:
    db.execute("select set_config('storage.allow_delete_query', 'true', false)")  # as Storage's API does
    db.execute("delete from storage.buckets where id = %s", (rules.INPUT_BUCKET,))
    with pytest.raises(ConfigurationError, match="does not exist"):
        check_input_limit(load_settings(database_url=database_url))


@pytest.mark.database
def test_an_unreachable_database_is_left_to_the_service() -> None:
    # The service waits for the database and reports not ready; start-up is not the place to fail.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        check_input_limit(
            load_settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/x", max_image_bytes=LARGER)
        )


def test_the_worker_command_refuses_to_start(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_unused")
    monkeypatch.setenv("MAX_IMAGE_BYTES", str(LARGER))
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "MAX_IMAGE_BYTES" in result.stderr and "file_size_limit" in result.stderr


# --- The output bucket takes every format a request may ask for -----------------------------------------


def test_the_migrated_output_bucket_takes_every_output_format(database_url: str, db: Db) -> None:
    check_output_types(load_settings(database_url=database_url))
    db.execute("update storage.buckets set allowed_mime_types = null where id = %s", (rules.OUTPUT_BUCKET,))
    check_output_types(load_settings(database_url=database_url))  # null: any type


def test_an_output_bucket_that_refuses_a_format_is_refused_at_start_up(
    database_url: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Storage would refuse a WebP result only after the GPU made it (storage_rejected).
    db.execute(
        "update storage.buckets set allowed_mime_types = array['image/png'] where id = %s",
        (rules.OUTPUT_BUCKET,),
    )
    with pytest.raises(ConfigurationError, match="leave out image/jpeg, image/webp"):
        check_output_types(load_settings(database_url=database_url))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "sb_secret_unused")
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2 and "allowed_mime_types" in result.stderr
