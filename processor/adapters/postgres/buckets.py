"""What the Storage buckets allow, read from ``storage.buckets`` (Supabase keeps bucket settings there)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from processor.domain.errors import ConfigurationError, TransientError
from processor.domain.reasons import ReasonCode


def bucket_file_size_limit(dsn: str, bucket: str, *, timeout: float = 10.0) -> int | None:
    """The bucket's ``file_size_limit`` in bytes (``None``: no per-bucket limit).

    ``ConfigurationError`` when the bucket does not exist (the migrations were not applied),
    ``TransientError`` when the database does not answer.
    """
    limit = _bucket_column(dsn, bucket, "file_size_limit", timeout)
    return None if limit is None else int(limit)


def bucket_allowed_mime_types(dsn: str, bucket: str, *, timeout: float = 10.0) -> list[str] | None:
    """The bucket's ``allowed_mime_types`` (``None``: any type), with the errors of ``bucket_file_size_limit``."""
    types = _bucket_column(dsn, bucket, "allowed_mime_types", timeout)
    return None if types is None else [str(item) for item in types]


def _bucket_column(dsn: str, bucket: str, column: str, timeout: float) -> Any:
    query = sql.SQL("select {} from storage.buckets where id = %s").format(sql.Identifier(column))
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            row = conn.execute(query, (bucket,)).fetchone()
    except psycopg.OperationalError as exc:
        raise TransientError(f"database unavailable: {exc}", reason=ReasonCode.DATABASE_UNAVAILABLE) from exc
    if row is None:
        raise ConfigurationError(f"Storage bucket {bucket!r} does not exist; apply supabase/migrations")
    return row[0]
