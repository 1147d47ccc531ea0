"""Settings: environment variables in, readable errors out."""

from __future__ import annotations

import pytest

from processor.domain.errors import ConfigurationError
from processor.settings import load_settings


def test_reads_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASE_SECONDS", "90")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    settings = load_settings()
    assert settings.lease_seconds == 90
    assert settings.database_url == "postgresql://u@h/db"


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
