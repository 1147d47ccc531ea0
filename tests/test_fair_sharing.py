"""Fair sharing of the GPU (issue 13 items 7 to 9): hostile users cannot flood, stall or lock up the queue.

Each test reproduces a reported hole: limits at insert (a 10,000-row flood), a fair claim order that
stays one index scan, expiry of inputs that never arrive without rescanning, and readiness locks
bounded however large a statement is.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import DEADLINE, Harness, acting_as, wait_for

Row = dict[str, Any]
DEFAULT = uuid.UUID(int=0)


def set_limits(db: psycopg.Connection[Row], user: uuid.UUID, **limits: object) -> None:
    columns = ", ".join(limits)
    db.execute(
        f"insert into edit_user_limits (user_id, {columns}) values (%s, {', '.join(['%s'] * len(limits))}) "
        f"on conflict (user_id) do update set {', '.join(f'{c} = excluded.{c}' for c in limits)}",
        (user, *limits.values()),
    )


def bulk_insert(
    conn: psycopg.Connection[Row],
    user: uuid.UUID,
    count: int,
    *,
    paths_per_row: int = 1,
    tag: str = "r",
    steps: int = 2,
    size: int | None = None,
) -> None:
    """One INSERT of ``count`` rows, each naming ``paths_per_row`` objects under the user's folder."""
    paths = ", ".join(f"%(folder)s || '{tag}-' || g || '-{k}.png'" for k in range(paths_per_row))
    conn.execute(
        "insert into edit_requests (prompt, input_paths, num_inference_steps, width, height) "
        f"select 'x', array[{paths}], %(steps)s, %(size)s, %(size)s from generate_series(1, %(count)s) g",
        {"folder": f"{user}/", "steps": steps, "size": size, "count": count},
    )


def insert_one(conn: psycopg.Connection[Row], user: uuid.UUID, **columns: object) -> uuid.UUID:
    values = {
        "prompt": "x",
        "input_paths": [f"{user}/{uuid.uuid4()}.png"],
        "num_inference_steps": 2,
        **columns,
    }
    with acting_as(conn, "authenticated", user) as c:
        row = c.execute(
            f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) returning id",
            tuple(values.values()),
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def insert_stored(conn: psycopg.Connection[Row], user: uuid.UUID, **columns: object) -> uuid.UUID:
    """``insert_one`` of a request whose image is already stored: queued, and placed in line, at insert."""
    path = f"{user}/{uuid.uuid4()}.png"
    conn.execute("insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (path,))
    return insert_one(conn, user, input_paths=[path], **columns)


def table_reads(conn: psycopg.Connection[Row]) -> Row:
    """Rows of edit_requests this backend has read and not yet reported (sequential and by index)."""
    row = conn.execute(
        "select seq_scan, seq_tup_read, idx_tup_fetch from pg_stat_xact_user_tables where relname = 'edit_requests'"
    ).fetchone()
    assert row is not None
    return row


def reads_during(conn: psycopg.Connection[Row], work: Callable[[], object]) -> dict[str, int]:
    """What ``work`` read from edit_requests, measured inside one transaction (stats flush between them)."""
    with conn.transaction():
        before = table_reads(conn)
        work()
        after = table_reads(conn)
    return {key: int(after[key]) - int(before[key]) for key in after}


@contextmanager
def limit_error() -> Iterator[pytest.ExceptionInfo[psycopg.Error]]:
    with pytest.raises(psycopg.Error) as caught:
        yield caught
    assert caught.value.sqlstate == "PT429", caught.value


# --- Item 7: limits at insert ------------------------------------------------------------------------


def test_a_flood_of_maximum_cost_rows_in_one_insert_is_refused(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    with limit_error() as caught, acting_as(db, "authenticated", user) as conn:
        bulk_insert(conn, user, 10_000, steps=100, size=2048)
    diag = caught.value.diag
    assert diag.message_primary is not None and "edit request limit exceeded" in diag.message_primary
    assert diag.message_hint is not None and "edit_user_limits" in diag.message_hint
    assert db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}


def test_requests_in_flight_are_limited_and_freed_when_they_finish(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    set_limits(db, user, max_in_flight=3)
    ids = [insert_one(db, user) for _ in range(3)]
    with limit_error() as caught:
        insert_one(db, user)
    assert "max_in_flight (3)" in str(caught.value.diag.message_primary)
    assert "3 requests" in str(caught.value.diag.message_detail)

    db.execute("select cancel_edit_request(%s)", (ids[0],))
    insert_one(db, user)  # one slot free again
    with limit_error():
        insert_one(db, user)


def test_requests_per_hour_are_limited_even_when_they_are_canceled(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    set_limits(db, user, max_requests_per_hour=4)
    for _ in range(4):
        db.execute("select cancel_edit_request(%s)", (insert_one(db, user),))
    with limit_error() as caught:
        insert_one(db, user)
    assert "max_requests_per_hour (4)" in str(caught.value.diag.message_primary)
    usage = db.execute("select hour_requests from edit_user_usage where user_id = %s", (user,)).fetchone()
    assert usage == {"hour_requests": 4}


def test_the_cost_budget_charges_what_each_row_costs(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    set_limits(db, user, max_cost_per_hour=100)
    first = insert_one(db, user, num_inference_steps=40, speed="quality")  # a default edit: about 40
    second = insert_one(
        db, user, num_inference_steps=10, width=2048, height=2048, speed="quality"
    )  # 4 MP out
    charged = db.execute(
        "select coalesce(sum(cost), 0) as total, count(*) filter (where cost > 0) as n from edit_requests "
        "where id = any(%s)",
        ([first, second],),
    ).fetchone()
    assert charged is not None and charged["n"] == 2 and 75 < charged["total"] < 77  # 40.0 + 35.9
    usage = db.execute("select hour_cost from edit_user_usage where user_id = %s", (user,)).fetchone()
    assert usage == {"hour_cost": charged["total"]}
    with limit_error() as caught:
        insert_one(db, user, num_inference_steps=40, speed="quality")
    assert "max_cost_per_hour (100)" in str(caught.value.diag.message_primary)
    assert "edit_request_cost" in str(caught.value.diag.message_detail)
    insert_one(db, user, num_inference_steps=4, speed="quality")  # about 4: still fits


def fitting(db: psycopg.Connection[Row], user: uuid.UUID, tries: int, **columns: object) -> int:
    """How many of ``tries`` identical requests the user's budget admits before the first refusal."""
    for count in range(tries):
        try:
            insert_one(db, user, **columns)
        except psycopg.Error as exc:
            assert exc.sqlstate == "PT429" and "max_cost_per_hour" in str(exc), exc
            return count
    return tries


def test_every_input_image_is_charged_whatever_the_output_size(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    """Issue 22 item 2: the pipeline encodes each input at about 1 MP and feeds its ~4,096 tokens to
    every transformer forward, however small the output. Three inputs and a 32x32 output do more work
    than a default edit (one input, 1 MP), so a budget admits no more of them."""
    default, hostile = make_user(), make_user()
    for user in (default, hostile):
        set_limits(db, user, max_cost_per_hour=100, max_requests_per_hour=1000)
    edits = fitting(db, default, 10, num_inference_steps=40)
    assert edits == 2  # a default edit costs 40 (a little more with its prompt)
    three = [f"{hostile}/{uuid.uuid4()}-{k}.png" for k in range(3)]
    small = fitting(db, hostile, 10, num_inference_steps=40, input_paths=three, width=32, height=32)
    assert small < edits, f"{small} three-input 32x32 requests fit where {edits} default edits do"


def test_operators_are_exempt_and_the_default_row_applies_to_everyone(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    db.execute("update edit_user_limits set max_in_flight = 2 where user_id = %s", (DEFAULT,))
    insert_one(db, user)
    insert_one(db, user)
    with limit_error():
        insert_one(db, user)
    with acting_as(db, "service_role") as conn:
        conn.execute(
            "insert into edit_requests (user_id, prompt, input_paths) "
            "select %s, 'x', array[%s || g || '.png'] from generate_series(1, 50) g",
            (user, f"{user}/svc-"),
        )
    assert db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 52}


def test_concurrent_inserts_of_one_user_cannot_pass_the_limit_together(
    database_url: str, db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    set_limits(db, user, max_in_flight=3)
    errors: list[BaseException] = []
    with (
        psycopg.connect(database_url, row_factory=dict_row) as first,
        psycopg.connect(database_url, row_factory=dict_row) as second,
    ):
        with acting_as(first, "authenticated", user) as conn:
            bulk_insert(conn, user, 2, tag="first")

            def insert_second() -> None:
                try:
                    with acting_as(second, "authenticated", user) as conn2:
                        bulk_insert(conn2, user, 2, tag="second")
                except psycopg.Error as exc:
                    errors.append(exc)

            thread = threading.Thread(target=insert_second)
            thread.start()
            # The second waits on the user's usage row while the first is open.
            wait_for(
                lambda: db.execute(
                    "select 1 from pg_stat_activity where pid = %s and wait_event_type = 'Lock'",
                    (second.info.backend_pid,),
                ).fetchone(),
                what="the second insert to wait for the first",
            )
        thread.join(DEADLINE)
    assert len(errors) == 1 and getattr(errors[0], "sqlstate", None) == "PT429"
    assert db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 2}


def test_a_bulk_insert_costs_the_same_per_row_however_big(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    """The limits read the user's rows once per transaction, not once per row (no quadratic insert)."""
    user = make_user()
    set_limits(db, user, max_in_flight=10_000, max_requests_per_hour=10_000, max_cost_per_hour=1e9)
    store_objects(db, user, 3_000, 1, "r")  # uploaded first, as apps do: the rows start queued
    with acting_as(db, "authenticated", user) as conn:
        before = table_reads(conn)
        bulk_insert(conn, user, 3_000)
        after = table_reads(conn)
    reads = {key: int(after[key]) - int(before[key]) for key in after}
    assert reads["seq_scan"] == 0
    assert reads["idx_tup_fetch"] < 50
    assert db.execute("select count(*) as n from edit_requests where status = 'queued'").fetchone() == {
        "n": 3_000
    }


def test_users_read_only_their_own_limits_and_write_none(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    alice, bob = make_user(), make_user()
    set_limits(db, alice, max_in_flight=7)
    set_limits(db, bob, max_in_flight=9)
    with acting_as(db, "authenticated", alice) as conn:
        seen = {row["user_id"] for row in conn.execute("select user_id from edit_user_limits").fetchall()}
    assert seen == {alice, DEFAULT}
    for statement in (
        f"update edit_user_limits set max_in_flight = 1000000 where user_id = '{alice}'",
        f"insert into edit_user_limits (user_id) values ('{uuid.uuid4()}')",
        "update edit_queue_settings set awaiting_image_ttl = '1000 years'",
        "select * from edit_queue_settings",
        f"update edit_user_usage set hour_requests = 0 where user_id = '{alice}'",
    ):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            acting_as(db, "authenticated", alice) as conn,
        ):
            conn.execute(statement)
    for statement in ("select * from edit_user_limits", "select * from edit_user_usage"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "anon") as conn:
            conn.execute(statement)


# --- Item 7: the fair claim order --------------------------------------------------------------------


def claim_owner(db: psycopg.Connection[Row]) -> uuid.UUID | None:
    row = db.execute("select user_id from claim_edit_request('w', 120)").fetchone()
    return None if row is None else uuid.UUID(str(row["user_id"]))


def store_all(db: psycopg.Connection[Row]) -> None:
    """Store every input named so far (rows become queued), in one statement."""
    db.execute(
        "insert into storage.objects (bucket_id, name) "
        "select distinct 'edit-inputs', p from edit_requests, unnest(input_paths) p on conflict do nothing"
    )


def test_a_users_single_request_goes_before_a_flooders_backlog(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    flooder, light = make_user(), make_user()
    set_limits(db, flooder, max_in_flight=1000, max_requests_per_hour=1000)
    store_objects(db, flooder, 500, 1, "r")  # uploaded first: each row is queued, and placed, at insert
    with acting_as(db, "authenticated", flooder) as conn:
        bulk_insert(conn, flooder, 500)
    path = f"{light}/one.png"
    db.execute("insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (path,))
    insert_one(db, light, input_paths=[path])
    # First in, first out would give the flooder the next 500 claims.
    assert [claim_owner(db) for _ in range(3)] == [flooder, light, flooder]


def test_fewer_requests_in_flight_go_first_and_priority_stays_first(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    a, b = make_user(), make_user()
    a_ids = [insert_stored(db, a) for _ in range(3)]
    insert_stored(db, b)
    db.execute("update edit_requests set priority = 5 where id = %s", (a_ids[2],))  # an operator's choice
    assert [claim_owner(db) for _ in range(4)] == [a, a, b, a]
    ranks = db.execute(
        "select extract(epoch from fair_tag - created_at)::int as s from edit_requests where user_id = %s order by created_at",
        (a,),
    ).fetchall()
    assert [r["s"] for r in ranks] == [0, 600, 1200]  # the default quantum: 10 minutes per request ahead


def test_a_place_in_line_is_taken_when_the_request_becomes_claimable_not_at_insert(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    """Issue 22 item 3: rows inserted before their images must not keep the early places they would
    have had, to use when the images come (banked places). No sleep: the clock is moved instead."""
    attacker, victim = make_user(), make_user()
    db.execute("update edit_queue_settings set fair_share_quantum = '2 seconds'")
    for _ in range(5):
        insert_one(db, attacker)  # awaiting their images
    # 12 s go by (the attacker's rows are that much older) before the victim files one request.
    db.execute(
        "update edit_requests set created_at = created_at - interval '12 seconds', "
        "fair_tag = fair_tag - interval '12 seconds' where user_id = %s",
        (attacker,),
    )
    insert_stored(db, victim)
    store_all(db)  # then the attacker uploads all five
    assert [claim_owner(db) for _ in range(6)] == [victim] + [attacker] * 5
    # The attacker's rows got their places as they became claimable: one quantum apart.
    gaps = db.execute(
        "select extract(epoch from fair_tag - min(fair_tag) over ())::int as s from edit_requests "
        "where user_id = %s order by fair_tag",
        (attacker,),
    ).fetchall()
    assert [row["s"] for row in gaps] == [0, 2, 4, 6, 8]


def test_a_retried_or_released_request_keeps_its_place(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    request = insert_stored(db, user)
    tag = db.execute("select fair_tag from edit_requests where id = %s", (request,)).fetchone()
    db.execute("select id from claim_edit_request('w', 120)")
    assert db.execute("select fail_edit_request(%s, 'w', 'boom') as s", (request,)).fetchone() == {
        "s": "queued"
    }
    db.execute("update edit_requests set next_attempt_at = null where id = %s", (request,))
    db.execute("select id from claim_edit_request('w', 120)")
    assert db.execute("select release_edit_request(%s, 'w') as ok", (request,)).fetchone() == {"ok": True}
    assert db.execute("select fair_tag from edit_requests where id = %s", (request,)).fetchone() == tag


def test_the_claim_reads_a_handful_of_rows_with_a_deep_queue_from_many_users(
    db: psycopg.Connection[Row],
) -> None:
    users = [uuid.uuid4() for _ in range(100)]
    db.execute("insert into auth.users (id) select unnest(%s::uuid[])", (users,))
    with acting_as(db, "service_role") as conn:
        conn.execute(
            "insert into edit_requests (user_id, prompt, input_paths, width, height) "
            "select u, 'x', array[u::text || '/' || g || '.png'], 64, 64 "
            "from unnest(%s::uuid[]) u, generate_series(1, 50) g",
            (users,),
        )
    store_all(db)
    db.execute("analyze edit_requests")
    for _ in range(20):
        claim_owner(db)
    claimed: list[Row | None] = []
    reads = reads_during(
        db, lambda: claimed.append(db.execute("select id from claim_edit_request('w', 120)").fetchone())
    )
    assert claimed[0] is not None
    assert reads["seq_scan"] == 0
    assert reads["idx_tup_fetch"] <= 5
    plan = db.execute(
        "explain select r.id from edit_requests r where r.status = 'queued' "
        "and (r.next_attempt_at is null or r.next_attempt_at <= now()) "
        "order by r.priority desc, r.fair_tag, r.id limit 1 for update skip locked"
    ).fetchall()
    assert "edit_requests_fair_claim_idx" in " ".join(str(p) for p in plan)


# --- Item 8: inputs that never arrive ----------------------------------------------------------------


def sweep(db: psycopg.Connection[Row]) -> int:
    row = db.execute("select requeue_expired_edit_requests() as n").fetchone()
    assert row is not None
    return int(row["n"])


def test_awaiting_rows_expire_after_the_configured_time(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    old, fresh = insert_one(db, user), insert_one(db, user)
    db.execute("update edit_requests set created_at = now() - interval '25 hours' where id = %s", (old,))
    sweep(db)
    expired = db.execute(
        "select status, error_code, error from edit_requests where id = %s", (old,)
    ).fetchone()
    assert expired is not None and (expired["status"], expired["error_code"]) == (
        "failed",
        "input_never_arrived",
    )
    db.execute("update edit_queue_settings set awaiting_image_ttl = '1 hour'")
    db.execute("update edit_requests set created_at = now() - interval '2 hours' where id = %s", (fresh,))
    sweep(db)
    assert db.execute("select status from edit_requests where id = %s", (fresh,)).fetchone() == {
        "status": "failed"
    }


def test_a_sweep_reads_a_bounded_batch_of_awaiting_rows_not_all_of_them(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    set_limits(db, user, max_in_flight=10_000, max_requests_per_hour=10_000)
    with acting_as(db, "authenticated", user) as conn:
        bulk_insert(conn, user, 3_000)
    # One row's object arrived while its trigger did not fire (a restore, an old row).
    missed = db.execute(
        "select id, input_paths[1] as path from edit_requests order by created_at, id desc limit 1"
    ).fetchone()
    assert missed is not None
    with db.transaction():
        db.execute("set local session_replication_role = replica")
        db.execute(
            "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (missed["path"],)
        )
    db.execute("analyze edit_requests")
    runs = 0
    while db.execute("select status from edit_requests where id = %s", (missed["id"],)).fetchone() != {
        "status": "queued"
    }:
        reads = reads_during(db, lambda: sweep(db))
        assert reads["seq_scan"] == 0
        assert reads["idx_tup_fetch"] <= 500 + 10  # one batch of the backstop (readiness_recheck_batch)
        runs += 1
        assert runs <= 3_000 // 500 + 1, "the backstop never reached the row"


# --- Item 9: bounded readiness locks -----------------------------------------------------------------


def advisory_locks(conn: psycopg.Connection[Row]) -> int:
    row = conn.execute(
        "select count(*) as n from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def store_objects(
    conn: psycopg.Connection[Row], user: uuid.UUID, count: int, paths_per_row: int, tag: str
) -> None:
    conn.execute(
        "insert into storage.objects (bucket_id, name) "
        "select 'edit-inputs', %s || %s || '-' || g || '-' || k || '.png' "
        "from generate_series(1, %s) g, generate_series(0, %s) k",
        (f"{user}/", tag, count, paths_per_row - 1),
    )


def bulk_insert_for(
    conn: psycopg.Connection[Row], user: uuid.UUID, count: int, paths_per_row: int, tag: str
) -> None:
    """As service_role (an operator's import; users are held to their limits): one INSERT of count rows."""
    paths = ", ".join(f"%(folder)s || '{tag}-' || g || '-{k}.png'" for k in range(paths_per_row))
    with acting_as(conn, "service_role") as c:
        c.execute(
            "insert into edit_requests (user_id, prompt, input_paths, num_inference_steps) "
            f"select %(user)s, 'x', array[{paths}], 2 from generate_series(1, %(count)s) g",
            {"user": user, "folder": f"{user}/", "count": count},
        )


@pytest.mark.parametrize("uploaded_first", [True, False], ids=["inputs-then-rows", "rows-then-inputs"])
def test_bulk_inserts_of_thousands_of_paths_take_bounded_locks_and_leave_others_working(
    database_url: str, db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], uploaded_first: bool
) -> None:
    rows, paths_per_row, bulk_connections = 5_000, 3, 2
    bulkers = [make_user() for _ in range(bulk_connections)]
    neighbour = make_user()
    if uploaded_first:
        for user in bulkers:
            with db.transaction():
                store_objects(db, user, rows, paths_per_row, "b")
                assert advisory_locks(db) <= 64

    failures: list[BaseException] = []
    held: list[int] = []
    done = threading.Event()

    def bulk(user: uuid.UUID) -> None:
        try:
            with psycopg.connect(database_url, row_factory=dict_row) as conn, conn.transaction():
                bulk_insert_for(conn, user, rows, paths_per_row, "b")
                held.append(advisory_locks(conn))
        except BaseException as exc:
            failures.append(exc)

    def singles() -> None:
        try:
            with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
                for _ in range(50):  # within the default limits
                    insert_one(conn, neighbour)
                    if done.is_set():
                        return
        except BaseException as exc:
            failures.append(exc)

    neighbour_thread = threading.Thread(target=singles)
    neighbour_thread.start()
    threads = [threading.Thread(target=bulk, args=(user,)) for user in bulkers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    done.set()
    neighbour_thread.join(DEADLINE)

    assert not failures, failures
    assert held and max(held) <= 64
    if not uploaded_first:
        assert db.execute("select count(*) as n from edit_requests where status = 'queued'").fetchone() == {
            "n": 0
        }
        for user in bulkers:
            with db.transaction():
                store_objects(db, user, rows, paths_per_row, "b")
                assert advisory_locks(db) <= 64
    counts = {
        row["status"]: row["n"]
        for row in db.execute(
            "select status, count(*) as n from edit_requests where user_id = any(%s) group by status",
            (bulkers,),
        ).fetchall()
    }
    assert counts == {"queued": rows * bulk_connections}
    neighbours = db.execute(
        "select count(*) as n from edit_requests where user_id = %s", (neighbour,)
    ).fetchone()
    assert neighbours is not None and neighbours["n"] >= 1


def test_the_rest_api_answers_a_limit_with_429_quota_exceeded(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    import httpx

    harness = start_processor(rest=True, listen=False, sweep_interval_seconds=3600)
    user = make_user()
    harness.db.execute("insert into edit_user_limits (user_id, max_in_flight) values (%s, 1)", (user,))
    headers = {"Authorization": f"Bearer {harness.storage.token(user)}"}
    body = {"prompt": "a creation", "width": 64, "height": 64, "num_inference_steps": 2}
    first = httpx.post(f"{harness.served.url}/v1/edits", json=body, headers=headers)
    assert first.status_code == 202, first.text
    second = httpx.post(f"{harness.served.url}/v1/edits", json=body, headers=headers)
    assert second.status_code == 429, second.text
    assert second.json()["error"]["code"] == "quota_exceeded"
    assert "max_in_flight" in second.json()["error"]["message"]
