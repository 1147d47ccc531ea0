"""Change notifications go only to rows somebody waits on: a NOTIFY makes every notifying commit on
the server take its turn, so claims and completions nobody follows by LISTEN send none."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from processor.adapters.postgres.changes import PostgresRowChanges
from processor.domain.rules import CHANGES_CHANNEL
from tests.conftest import acting_as, wait_for

Db = psycopg.Connection[dict[str, object]]
SENTINEL = "sentinel"


def notified_ids(listener: psycopg.Connection[Any], db: Db) -> list[str]:
    """Payloads on the changes channel so far: a sentinel sent now arrives after all of them
    (notifications are delivered in commit order), so nothing is still on its way when it does."""
    db.execute(f"notify {CHANGES_CHANNEL}, '{SENTINEL}'")
    seen: list[str] = []
    for notify in listener.notifies(timeout=30):
        if notify.payload == SENTINEL:
            return seen
        seen.append(notify.payload)
    raise AssertionError("the sentinel notification never arrived")


@pytest.fixture
def listener(database_url: str) -> Any:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"listen {CHANGES_CHANNEL}")
        yield conn


def claim_and_complete(db: Db) -> None:
    claimed = db.execute("select id from claim_edit_request('w1', 60)").fetchone()
    assert claimed is not None
    db.execute("select heartbeat_edit_request(%s, 'w1', 0.5, 60)", (claimed["id"],))
    db.execute("select complete_edit_request(%s, 'w1', 'out.png', '{}')", (claimed["id"],))


def test_claims_progress_and_completions_of_an_unwatched_row_send_no_notification(
    db: Db, listener: psycopg.Connection[Any], add_request: Callable[..., uuid.UUID]
) -> None:
    add_request()
    claim_and_complete(db)
    assert notified_ids(listener, db) == []


def test_a_watched_row_sends_each_change_its_owner_can_see(
    db: Db, listener: psycopg.Connection[Any], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    db.execute("select set_edit_request_watches('api-1', %s, 60)", ([request_id],))
    claim_and_complete(db)
    # Claim, progress and completion: three transactions, three notifications.
    assert notified_ids(listener, db) == [str(request_id)] * 3


def test_a_watch_set_back_to_empty_or_expired_sends_nothing(
    db: Db, listener: psycopg.Connection[Any], add_request: Callable[..., uuid.UUID]
) -> None:
    dropped, expired = add_request(), add_request()
    db.execute("select set_edit_request_watches('api-1', %s, 60)", ([dropped],))
    db.execute("select set_edit_request_watches('api-1', '{}', 60)")
    # A process that died: its watch outlived its renewals.
    db.execute(
        "insert into edit_request_watches (request_id, watcher, expires_at) "
        "values (%s, 'api-dead', now() - interval '1 second')",
        (expired,),
    )
    claim_and_complete(db)
    claim_and_complete(db)
    assert notified_ids(listener, db) == []


def test_a_direct_update_as_service_role_still_notifies_a_watched_row(
    db: Db, listener: psycopg.Connection[Any], add_request: Callable[..., uuid.UUID]
) -> None:
    # service_role may update rows but not read the watches: the trigger reads them as its owner.
    request_id = add_request()
    db.execute("select set_edit_request_watches('api-1', %s, 60)", ([request_id],))
    with acting_as(db, "service_role"):
        db.execute(
            "update edit_requests set status = 'canceled', finished_at = now() where id = %s", (request_id,)
        )
    assert notified_ids(listener, db) == [str(request_id)]


def test_each_watcher_sets_only_its_own_watches_and_clears_what_dead_ones_left(
    db: Db, add_request: Callable[..., uuid.UUID]
) -> None:
    first, second = add_request(), add_request()
    db.execute(
        "insert into edit_request_watches (request_id, watcher, expires_at) "
        "select %s, 'dead-' || g, now() - interval '1 hour' from generate_series(1, 150) g",
        (first,),
    )
    db.execute("select set_edit_request_watches('api-1', %s, 60)", ([first, second],))
    db.execute("select set_edit_request_watches('api-2', %s, 60)", ([first],))
    db.execute("select set_edit_request_watches('api-1', %s, 60)", ([second],))
    rows = db.execute(
        "select watcher, request_id from edit_request_watches where expires_at > now() order by watcher"
    ).fetchall()
    assert [(row["watcher"], row["request_id"]) for row in rows] == [("api-1", second), ("api-2", first)]
    # Three calls cleared at most 100 expired rows each: all 150 are gone.
    assert db.execute("select count(*) as n from edit_request_watches").fetchone() == {"n": 2}


@pytest.mark.parametrize(
    "statement",
    [
        "select * from edit_request_watches",
        "insert into edit_request_watches values (gen_random_uuid(), 'x', now() + interval '1 hour')",
        "select set_edit_request_watches('x', array[gen_random_uuid()], 60)",
    ],
)
@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_users_can_neither_read_nor_set_watches(
    db: Db, make_user: Callable[[], uuid.UUID], role: str, statement: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, role, make_user()):
        db.execute(statement)


def watches(db: Db) -> list[tuple[object, object]]:
    rows = db.execute(
        "select request_id, watcher from edit_request_watches where expires_at > now() order by request_id"
    ).fetchall()
    return [(row["request_id"], row["watcher"]) for row in rows]


def test_the_listener_holds_a_watch_while_anyone_waits_on_the_row_and_then_drops_it(
    db: Db, database_url: str, add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()

    async def main() -> None:
        changes = PostgresRowChanges(database_url)
        try:
            async with changes.watch(request_id):
                # In place before the caller reads the row.
                assert watches(db) == [(request_id, changes.watcher)]
                async with changes.watch(request_id):
                    pass
                await asyncio.sleep(0)  # let the syncer run; one waiter is still there
                assert watches(db) == [(request_id, changes.watcher)]
            await asyncio.to_thread(wait_for, lambda: watches(db) == [], what="the watch removed")
        finally:
            await changes.close()

    asyncio.run(main())


def test_a_waiter_that_is_cancelled_leaves_no_watch_behind(
    db: Db, database_url: str, add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()

    async def main() -> None:
        changes = PostgresRowChanges(database_url)
        entered = asyncio.Event()

        async def waiter() -> None:
            async with changes.watch(request_id) as watch:
                entered.set()
                while True:  # the listener's first connect wakes every waiter once
                    await watch.wait(3600)

        task = asyncio.create_task(waiter())
        try:
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(wait_for, lambda: watches(db) == [], what="the watch removed")
        finally:
            await changes.close()

    asyncio.run(main())


def test_the_listener_renews_its_watches_and_closing_removes_them(
    db: Db, database_url: str, add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()

    def expiry() -> object:
        row = db.execute(
            "select expires_at from edit_request_watches where request_id = %s", (request_id,)
        ).fetchone()
        return None if row is None else row["expires_at"]

    async def main() -> None:
        changes = PostgresRowChanges(database_url, renew_seconds=0.1, watch_seconds=60)
        async with changes.watch(request_id):
            first = expiry()
            await asyncio.to_thread(wait_for, lambda: expiry() != first, what="a renewal")
            await changes.close()
        assert watches(db) == []

    asyncio.run(main())


@pytest.mark.parametrize("ticks", [0, 1, 2, 3])
def test_a_waiter_cancelled_just_as_its_row_changes_still_ends(ticks: int) -> None:
    # Python 3.11's asyncio.wait_for returned the inner result when a cancellation arrived in the
    # same tick as the event, and a waiter in a loop (a stream) then ran forever: ticks 0-2 hung.
    from processor.adapters.postgres.changes import _Watch

    async def main() -> bool:
        watch = _Watch()

        async def waiter() -> None:
            while True:
                await watch.wait(3600)

        task = asyncio.create_task(waiter())
        for _ in range(3):
            await asyncio.sleep(0)
        watch.notify()
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=5)
        if not done:
            task.cancel()
            await asyncio.wait([task])
        return bool(done)

    assert asyncio.run(main())
