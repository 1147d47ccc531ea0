"""What the Storage buckets allow, read from ``storage.buckets`` (Supabase keeps bucket settings there)."""

from __future__ import annotations

import psycopg

from processor.domain.errors import ConfigurationError, TransientError
from processor.domain.reasons import ReasonCode


def bucket_file_size_limit(dsn: str, bucket: str, *, timeout: float = 10.0) -> int | None:
    """The bucket's ``file_size_limit`` in bytes (``None``: no per-bucket limit).

    ``ConfigurationError`` when the bucket does not exist (the migrations were not applied),
    ``TransientError`` when the database does not answer.
    """
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            row = conn.execute(
                "select file_size_limit from storage.buckets where id = %s", (bucket,)
            ).fetchone()
    except psycopg.OperationalError as exc:
        raise TransientError(f"database unavailable: {exc}", reason=ReasonCode.DATABASE_UNAVAILABLE) from exc
    if row is None:
        raise ConfigurationError(f"Storage bucket {bucket!r} does not exist; apply supabase/migrations")
    return None if row[0] is None else int(row[0])
