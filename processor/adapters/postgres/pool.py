"""One connection pool for the PostgreSQL adapters: autocommit, rows as dicts, and every
connection failure a ``TransientError`` (reason ``database_unavailable``), so callers back off
and the pool reconnects."""

from __future__ import annotations

import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from processor.domain.errors import TransientError
from processor.domain.reasons import ReasonCode

_CONNECTION_FAILURES = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError)


async def check_if_suspect(conn: psycopg.AsyncConnection[DictRow]) -> None:
    """The pool's check before each use, without a round trip for a healthy idle connection.

    An idle connection has nothing to read: a server that restarted or terminated it has sent
    a FATAL message and closed the socket, which makes it readable. Only then (or when psycopg
    already knows it is closed) is the full check run, which fails and makes the pool reconnect.
    """
    if not conn.closed:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
        if not readable:
            return
    await AsyncConnectionPool.check_connection(conn)


class Pool:
    """``open``/``close``, then ``fetchone``/``fetchall`` of one statement, or ``connection`` for more."""

    def __init__(self, dsn: str, *, min_size: int, max_size: int, timeout: float) -> None:
        self._timeout = timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
            dsn,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=False,
            # A restarted database leaves dead connections in the pool: check before use, with
            # a round trip only for connections whose socket says something happened.
            check=check_if_suspect,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
        """A pooled connection for several statements (``conn.transaction()`` for one transaction);
        a connection failure anywhere in the block is a ``TransientError``."""
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except _CONNECTION_FAILURES as exc:
            raise unavailable(exc) from exc

    async def fetchone(self, query: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        async with self.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchone()

    async def fetchall(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall()


def unavailable(exc: Exception) -> TransientError:
    return TransientError(f"database unavailable: {exc}", reason=ReasonCode.DATABASE_UNAVAILABLE)
