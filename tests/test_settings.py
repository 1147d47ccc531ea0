"""Settings: environment variables in, readable errors out.

Hermetic: every test runs with no variable named like a setting in the environment and in an empty
working directory, so a developer's ``.env`` or exported ``DATABASE_URL`` changes nothing here.
"""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.parametrize("value", ["not json", '{"detail": "loras/detail.safetensors",}', "[1, 2"])
def test_a_malformed_structured_setting_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # LORAS that was not JSON printed a 147-line traceback from pydantic-settings.
    monkeypatch.setenv("LORAS", value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("configuration_error: invalid settings: LORAS: not valid JSON (")
    assert "\n" not in message and value not in message
    assert caught.value.__suppress_context__  # no chained traceback either


@pytest.mark.service
def test_the_command_prints_that_line_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAS", "not json")
    done = subprocess.run(
        [sys.executable, "-m", "processor", "worker"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: configuration_error: invalid settings: LORAS: not valid JSON "
        "(Expecting value: line 1 column 1 (char 0))"
    ]


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
