"""The queue adapter's pool check (a round trip only when the socket says something happened) still
replaces a connection the server terminated. (The benchmark shows the saved round trip.)"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from processor.adapters.postgres.queue import PostgresJobQueue
from tests.conftest import wait_for

Row = dict[str, Any]


def backends(db: psycopg.Connection[Row]) -> set[int]:
    rows = db.execute(
        "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
    ).fetchall()
    return {int(row["pid"]) for row in rows}


def test_a_connection_the_server_terminated_is_replaced_before_use(
    database_url: str, db: psycopg.Connection[Row]
) -> None:
    async def scenario() -> None:
        async with PostgresJobQueue(database_url, min_size=1, max_size=1) as queue:
            await queue.ping()
            [pid] = backends(db)
            db.execute("select pg_terminate_backend(%s)", (pid,))
            wait_for(lambda: pid not in backends(db), what="the backend to exit")
            await queue.ping()  # not TransientError: the check saw the closed socket
            assert backends(db) and pid not in backends(db)

    asyncio.run(scenario())
