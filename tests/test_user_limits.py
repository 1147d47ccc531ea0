"""The limits that apply to a user and their hourly usage, each written once in SQL.

``edit_user_limits_of`` is a user's ``edit_user_limits`` row over the default one; ``edit_user_usage_now``
rolls a usage row to this clock hour and ``edit_user_hourly_estimate`` is the sliding estimate the
hourly limits bound. The insert, the check before the work (REST, MCP) and Storage's upload policies
all read them; these tests pin what they answer, the earlier hours included.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.conftest import acting_as

Row = dict[str, Any]
DEFAULT = uuid.UUID(int=0)


def limits_seen_by(db: psycopg.Connection[Row], caller: uuid.UUID, of: uuid.UUID) -> Row:
    with acting_as(db, "authenticated", caller) as conn:
        row = conn.execute("select * from edit_user_limits_of(%s)", (of,)).fetchone()
    assert row is not None
    return row


def test_a_users_row_overrides_the_default_column_by_column(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    db.execute(
        "insert into edit_user_limits (user_id, max_in_flight, max_stored_inputs) values (%s, 3, 7)", (user,)
    )
    default = db.execute("select * from edit_user_limits where user_id = %s", (DEFAULT,)).fetchone()
    assert default is not None

    limits = limits_seen_by(db, user, user)

    assert limits["user_id"] == user
    assert (limits["max_in_flight"], limits["max_stored_inputs"]) == (3, 7)
    for column in ("max_requests_per_hour", "max_cost_per_hour", "max_stored_input_bytes"):
        assert limits[column] == default[column], column


def test_another_users_limits_stay_hidden(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    """Security invoker under the policies: asking for someone else's id answers the default's values."""
    me, other = make_user(), make_user()
    db.execute(
        "insert into edit_user_limits (user_id, max_in_flight, note) values (%s, 0, 'banned')", (other,)
    )
    default = db.execute("select * from edit_user_limits where user_id = %s", (DEFAULT,)).fetchone()
    assert default is not None

    seen = limits_seen_by(db, me, other)

    assert (seen["max_in_flight"], seen["note"]) == (default["max_in_flight"], default["note"])


def insert_after_usage(
    db: psycopg.Connection[Row], user: uuid.UUID, hours_ago: int, **usage: float
) -> tuple[str | None, str | None, Row]:
    """Usage written ``hours_ago`` clock hours back, then the check before the work and the insert, as
    ``user``, in one transaction (one ``now()``: no hour can turn between them). Returns the limit each
    refused (None: passed) and the usage row afterwards."""
    with db.transaction():
        db.execute(
            "insert into edit_user_usage (user_id, hour_start, hour_requests, hour_cost, previous_hour_requests, "
            "previous_hour_cost) values (%s, date_trunc('hour', now()) - %s * interval '1 hour', %s, %s, %s, %s)",
            (
                user,
                hours_ago,
                usage.get("hour_requests", 0),
                usage.get("hour_cost", 0),
                usage.get("previous_hour_requests", 0),
                usage.get("previous_hour_cost", 0),
            ),
        )
        with acting_as(db, "authenticated", user) as conn:
            check = conn.execute(
                "select refused from edit_request_admission_check(1, 2, 4.0, null, null, null, 1, 1, 0, 0)"
            ).fetchone()
            assert check is not None
            inserted: str | None = None
            try:
                with conn.transaction():
                    conn.execute(
                        "insert into edit_requests (prompt, input_paths, num_inference_steps) values ('x', %s, 2)",
                        ([f"{user}/{uuid.uuid4()}.png"],),
                    )
            except psycopg.Error as exc:
                assert exc.sqlstate == "PT429", exc
                inserted = str(exc.diag.message_primary).rsplit(": ", 1)[1].split(" ")[0]
            after = conn.execute("select * from edit_user_usage where user_id = %s", (user,)).fetchone()
    assert after is not None
    refused = None if check["refused"] is None else str(check["refused"])
    return refused, inserted, after


def test_the_previous_hours_requests_still_count(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    """A million requests last hour: a share of them counts against this hour (refused unless under
    5 in 1,000,000 of the hour is left), by the check before the work and by the insert alike."""
    user = make_user()
    db.execute("insert into edit_user_limits (user_id, max_requests_per_hour) values (%s, 5)", (user,))

    check, insert, _ = insert_after_usage(db, user, hours_ago=1, hour_requests=1_000_000)

    assert check == insert == "max_requests_per_hour"


def test_usage_older_than_the_previous_hour_counts_nothing(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    db.execute("insert into edit_user_limits (user_id, max_requests_per_hour) values (%s, 5)", (user,))

    check, insert, after = insert_after_usage(
        db, user, hours_ago=2, hour_requests=1_000_000, previous_hour_requests=1_000_000
    )

    assert check is None and insert is None
    assert (after["previous_hour_requests"], after["hour_requests"]) == (0, 1)


@pytest.mark.parametrize("hours_ago", [0, 1], ids=["this-hour", "previous-hour"])
def test_an_insert_charges_this_hour_and_keeps_the_previous_one(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID], hours_ago: int
) -> None:
    user = make_user()

    _, insert, after = insert_after_usage(
        db,
        user,
        hours_ago=hours_ago,
        hour_requests=3,
        hour_cost=50,
        previous_hour_requests=9,
        previous_hour_cost=90,
    )

    assert insert is None
    now = db.execute("select date_trunc('hour', now()) as hour").fetchone()
    assert now is not None and after["hour_start"] == now["hour"]
    if hours_ago == 0:
        assert (after["previous_hour_requests"], after["previous_hour_cost"]) == (9, 90)
        assert after["hour_requests"] == 4 and after["hour_cost"] > 50
    else:
        assert (after["previous_hour_requests"], after["previous_hour_cost"]) == (3, 50)
        assert after["hour_requests"] == 1 and 0 < after["hour_cost"] < 50


def test_the_estimate_is_the_previous_hours_shrinking_share_plus_this_hour(
    db: psycopg.Connection[Row],
) -> None:
    with db.transaction():
        row = db.execute(
            "select e.requests, e.cost, extract(epoch from now() - date_trunc('hour', now())) / 3600 as gone "
            "from edit_user_hourly_estimate(row(gen_random_uuid(), date_trunc('hour', now()), 4, 40, 10, 100, now())"
            "::edit_user_usage) e"
        ).fetchone()
    assert row is not None
    gone = float(row["gone"])
    assert row["requests"] == pytest.approx(10 * (1 - gone) + 4)
    assert row["cost"] == pytest.approx(100 * (1 - gone) + 40)
