"""A quota refusal says when to come back: for the hourly limits, when the sliding estimate leaves room
for the refused request (``edit_request_retry_after``); for ``max_in_flight``, a default."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from processor.domain.cost import cost_of
from processor.domain.request import EditParams
from processor.domain.rules import QUOTA_RETRY_SECONDS
from tests.conftest import Harness, acting_as, png_bytes

Row = dict[str, Any]


def set_usage(db: psycopg.Connection[Row], user: uuid.UUID, **usage: float) -> float:
    """This hour's usage row for ``user``; returns the fraction of the hour gone (the database's clock)."""
    db.execute(
        "insert into edit_user_usage (user_id, hour_start, hour_requests, hour_cost, previous_hour_requests, "
        "previous_hour_cost) values (%s, date_trunc('hour', now()), %s, %s, %s, %s)",
        (
            user,
            usage.get("hour_requests", 0),
            usage.get("hour_cost", 0),
            usage.get("previous_hour_requests", 0),
            usage.get("previous_hour_cost", 0),
        ),
    )
    row = db.execute("select extract(epoch from now() - date_trunc('hour', now())) / 3600 as gone").fetchone()
    assert row is not None
    return float(row["gone"])


def retry_after(db: psycopg.Connection[Row], user: uuid.UUID, limit: str, requests: int, cost: float) -> Any:
    with acting_as(db, "authenticated", user) as conn:
        row = conn.execute(
            "select public.edit_request_retry_after(%s, %s, %s) as s", (limit, requests, cost)
        ).fetchone()
    assert row is not None
    return row["s"]


def test_the_previous_hours_share_shrinks_until_the_request_fits(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    db.execute("insert into edit_user_limits (user_id, max_requests_per_hour) values (%s, 5)", (user,))
    gone = set_usage(db, user, previous_hour_requests=10)
    # 10 x (1 - f) + 0 + 1 <= 5 from f = 0.6 on.
    expected = max(0.0, (0.6 - gone) * 3600)
    assert retry_after(db, user, "max_requests_per_hour", 1, 0) == pytest.approx(expected, abs=2)


def test_a_full_hour_waits_for_the_next_and_its_shrinking_share(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    db.execute("insert into edit_user_limits (user_id, max_cost_per_hour) values (%s, 100)", (user,))
    gone = set_usage(db, user, hour_cost=100)
    # Next hour: 100 x (1 - f) + 20 <= 100 from f = 0.2 on.
    expected = (1 - gone + 0.2) * 3600
    assert retry_after(db, user, "max_cost_per_hour", 1, 20) == pytest.approx(expected, abs=2)


def test_what_it_cannot_tell_is_null(db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]) -> None:
    user = make_user()
    db.execute("insert into edit_user_limits (user_id, max_requests_per_hour) values (%s, 5)", (user,))
    assert retry_after(db, user, "max_in_flight", 1, 1) is None
    assert retry_after(db, user, "max_requests_per_hour", 6, 1) is None  # never fits
    assert retry_after(db, user, "no_such_limit", 1, 1) is None


TINY_COST = cost_of(EditParams(prompt="make it blue", num_inference_steps=2), 1)
"""What the request below is charged (docs/fair-sharing.md#what-a-request-costs)."""


@pytest.mark.parametrize(
    "limits, usage, seconds",
    [
        ({"max_in_flight": 0}, {}, lambda gone: QUOTA_RETRY_SECONDS),
        # The tiny request costs c (the cost formula: 2 steps, one input): next hour,
        # 100 x (1 - f) + c <= 100 from f = c / 100.
        ({"max_cost_per_hour": 100}, {"hour_cost": 100}, lambda gone: (1 - gone + TINY_COST / 100) * 3600),
    ],
    ids=["in-flight", "hourly-cost"],
)
def test_the_rest_api_sends_it_as_retry_after(
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    limits: dict[str, int],
    usage: dict[str, float],
    seconds: Callable[[float], float],
) -> None:
    harness = start_processor(rest=True)
    user = make_user()
    names = ", ".join(limits)
    harness.db.execute(
        f"insert into edit_user_limits (user_id, {names}) values (%s, {', '.join(['%s'] * len(limits))})",
        (user, *limits.values()),
    )
    gone = set_usage(harness.db, user, **usage)
    body = {
        "prompt": "make it blue",
        "image": base64.b64encode(png_bytes()).decode(),
        "num_inference_steps": 2,
    }
    refused = httpx.post(
        f"{harness.served.url}/v1/edits",
        json=body,
        headers={"Authorization": f"Bearer {harness.storage.token(user)}"},
    )
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "quota_exceeded", refused.text
    assert int(refused.headers["retry-after"]) == pytest.approx(seconds(gone), abs=3)
    # Refused: nothing it uploaded stays.
    left = harness.db.execute(
        "select count(*) as n from storage.objects where bucket_id = 'edit-inputs' and name like %s",
        (f"{user}/%",),
    ).fetchone()
    assert left == {"n": 0}
