"""Settings: environment variables in, readable errors out.

Hermetic: every test runs with no variable named like a setting in the environment and in an empty
working directory, so a developer's ``.env`` or exported ``DATABASE_URL`` changes nothing here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from processor.domain.errors import ConfigurationError
from processor.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name in list(os.environ):
        if name.upper() in fields:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env here


def test_reads_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "90")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    settings = load_settings()
    assert settings.lease_seconds == 90
    assert settings.database_url == "postgresql://u@h/db"


def test_reads_a_dotenv_file_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LEASE_SECONDS=75\n")
    assert load_settings().lease_seconds == 75


def test_the_environment_wins_over_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LEASE_SECONDS=75\n")
    monkeypatch.setenv("LEASE_SECONDS", "80")
    assert load_settings().lease_seconds == 80


def test_defaults_apply_when_nothing_is_set() -> None:
    settings = Settings(_env_file=None)
    assert settings.database_url is None
    assert settings.lease_seconds == Settings.model_fields["lease_seconds"].default


def test_malformed_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "soon")
    with pytest.raises(ConfigurationError, match="LEASE_SECONDS"):
        load_settings()


def test_heartbeat_must_fit_in_the_lease() -> None:
    with pytest.raises(ConfigurationError, match="heartbeat_interval_seconds"):
        load_settings(lease_seconds=30, heartbeat_interval_seconds=20)


def test_require_lists_every_missing_setting() -> None:
    settings = load_settings(supabase_url=None, database_url=None)
    with pytest.raises(ConfigurationError, match="SUPABASE_URL, DATABASE_URL"):
        settings.require("supabase_url", "database_url")


def test_secrets_do_not_print() -> None:
    settings = load_settings(supabase_service_role_key="sb_secret_abc123", webhook_secret="hush")
    assert "sb_secret_abc123" not in repr(settings)
    assert "hush" not in str(settings)
