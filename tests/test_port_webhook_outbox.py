"""``WebhookOutbox`` conformance: ``PostgresWebhookOutbox`` and ``InMemoryWebhookOutbox`` behave alike,
and the delivery loop over the in-memory adapters (no database, no HTTP) signs, retries and records.

Time is moved, never slept through: the in-memory outbox's clock is advanced; in PostgreSQL the row's
``next_attempt_at`` or ``claimed_until`` is moved to the past, as ``now()`` would see it later."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from processor.adapters.postgres.webhooks import PostgresWebhookOutbox
from processor.core.webhooks import WebhookConfig, WebhookDispatcher
from processor.domain import rules
from processor.domain.ports.webhooks import WebhookAnswer, WebhookOutbox
from processor.testing import InMemoryWebhookOutbox, InMemoryWebhookReceiver, ManualClock
from tests.conftest import OWNER, acting_as

Row = dict[str, Any]


@dataclass
class Case:
    outbox: WebhookOutbox
    add: Callable[..., uuid.UUID]
    """``add(endpoint="e1", user="u1")``: a delivery to that endpoint (made on first use) of that user."""
    state: Callable[[uuid.UUID], Row]
    """status, attempts, last_status_code, last_error, claimed_by."""
    back_off_over: Callable[[uuid.UUID], None]
    lease_lapses: Callable[[uuid.UUID], None]
    replay: Callable[[uuid.UUID], bool]
    set_attempts: Callable[[uuid.UUID, int], None]
    time_passes: Callable[[float], None]
    """Every back-off and open circuit is that many seconds nearer its end."""


FIELDS = ("status", "attempts", "last_status_code", "last_error", "claimed_by")


def memory_case() -> Case:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    outbox = InMemoryWebhookOutbox(clock=clock, seed=1)
    ids: dict[str, uuid.UUID] = {}

    def add(endpoint: str = "e1", user: str = "u1") -> uuid.UUID:
        clock.advance(0.001)  # as rows written one after another: the order is the order of writing
        return outbox.add(
            f"https://hooks.example.com/{endpoint}",
            "whsec_" + "QUJD" * 8,
            {"type": "edit_request.succeeded"},
            endpoint_id=ids.setdefault(endpoint, uuid.uuid4()),
            user_id=ids.setdefault(user, uuid.uuid4()),
        )

    def state(delivery_id: uuid.UUID) -> Row:
        row = outbox.row(delivery_id)
        return {name: getattr(row, name) for name in FIELDS}

    def set_attempts(delivery_id: uuid.UUID, attempts: int) -> None:
        outbox.row(delivery_id).attempts = attempts

    return Case(
        outbox,
        add=add,
        state=state,
        back_off_over=lambda _id: clock.advance(rules.WEBHOOK_BACKOFF_MAX_SECONDS * 2) and None,
        lease_lapses=lambda _id: clock.advance(3600) and None,
        replay=outbox.replay,
        set_attempts=set_attempts,
        time_passes=lambda seconds: clock.advance(seconds) and None,
    )


def postgres_case(
    db: psycopg.Connection[Row],
    database_url: str,
    add_request: Callable[..., uuid.UUID],
    make_user: Callable[[], uuid.UUID],
) -> Case:
    db.execute(
        "update edit_webhook_settings set allow_http = true, allow_private_addresses = true, "
        "allowed_ports = '{443,80,9}'"
    )
    db.execute("insert into edit_webhook_allowed_hosts (host) values ('127.0.0.1')")
    users: dict[str, uuid.UUID] = {"u1": OWNER}
    endpoints: dict[str, uuid.UUID] = {}

    def add(endpoint: str = "e1", user: str = "u1") -> uuid.UUID:
        owner = users.setdefault(user, make_user()) if user not in users else users[user]
        if endpoint not in endpoints:
            with acting_as(db, "authenticated", owner) as conn:
                row = conn.execute(
                    "insert into edit_webhook_endpoints (url) values (%s) returning id",
                    (f"http://127.0.0.1:9/{endpoint}",),
                ).fetchone()
            assert row is not None
            endpoints[endpoint] = row["id"]
        request_id = add_request(user_id=owner, webhook_endpoint_id=endpoints[endpoint])
        db.execute("select cancel_edit_request(%s)", (request_id,))
        row = db.execute(
            "select id from edit_webhook_deliveries where request_id = %s", (request_id,)
        ).fetchone()
        assert row is not None
        return uuid.UUID(str(row["id"]))

    def state(delivery_id: uuid.UUID) -> Row:
        row = db.execute(
            f"select {', '.join(FIELDS)} from edit_webhook_deliveries where id = %s", (delivery_id,)
        ).fetchone()
        assert row is not None
        return row

    def replay(delivery_id: uuid.UUID) -> bool:
        with acting_as(db, "service_role") as conn:
            row = conn.execute("select replay_edit_webhook_delivery(%s) as ok", (delivery_id,)).fetchone()
        return bool(row and row["ok"])

    def time_passes(seconds: float) -> None:
        shift = timedelta(seconds=seconds)
        db.execute("update edit_webhook_deliveries set next_attempt_at = next_attempt_at - %s", (shift,))
        db.execute("update edit_webhook_circuits set open_until = open_until - %s", (shift,))

    return Case(
        PostgresWebhookOutbox(database_url),
        add=add,
        state=state,
        back_off_over=lambda i: (
            db.execute(
                "update edit_webhook_deliveries set next_attempt_at = now() - interval '1 second' where id = %s",
                (i,),
            )
            and None
        ),
        lease_lapses=lambda i: (
            db.execute(
                "update edit_webhook_deliveries set claimed_until = now() - interval '1 second' where id = %s",
                (i,),
            )
            and None
        ),
        replay=replay,
        set_attempts=lambda i, n: (
            db.execute("update edit_webhook_deliveries set attempts = %s where id = %s", (n, i)) and None
        ),
        time_passes=time_passes,
    )


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.database), "memory"])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    if request.param == "memory":
        yield memory_case()
        return
    db = request.getfixturevalue("db")
    yield postgres_case(
        db,
        request.getfixturevalue("database_url"),
        request.getfixturevalue("add_request"),
        request.getfixturevalue("make_user"),
    )


def run(case: Case, scenario: Callable[[WebhookOutbox], Awaitable[None]]) -> None:
    async def main() -> None:
        await case.outbox.open()
        try:
            await scenario(case.outbox)
        finally:
            await case.outbox.close()

    asyncio.run(main())


def test_claim_leases_and_counts_the_attempt_then_complete_is_fenced(case: Case) -> None:
    delivery_id = case.add()

    async def scenario(outbox: WebhookOutbox) -> None:
        [claimed] = await outbox.claim("w1", 10, 60)
        assert claimed.id == delivery_id and claimed.attempts == 1 and claimed.secret.startswith("whsec_")
        assert await outbox.claim("w2", 10, 60) == []
        assert await outbox.complete(delivery_id, "w2", 200) is False
        assert await outbox.fail(delivery_id, "w2", 500, "x", permanent=False) == "lost"
        assert await outbox.complete(delivery_id, "w1", 204) is True
        assert await outbox.complete(delivery_id, "w1", 204) is False

    run(case, scenario)
    assert case.state(delivery_id) == {
        "status": "delivered", "attempts": 1, "last_status_code": 204, "last_error": None, "claimed_by": None
    }  # fmt: skip


def test_a_failure_waits_for_its_back_off(case: Case) -> None:
    delivery_id = case.add()

    async def scenario(outbox: WebhookOutbox) -> None:
        await outbox.claim("w1", 10, 60)
        assert (
            await outbox.fail(delivery_id, "w1", 500, "http_status: 500 from 10.0.0.7", permanent=False)
            == "pending"
        )
        assert await outbox.claim("w1", 10, 60) == []
        case.back_off_over(delivery_id)
        assert [d.attempts for d in await outbox.claim("w1", 10, 60)] == [2]

    run(case, scenario)
    # What the owner reads: the kind and the status, never the detail.
    assert (case.state(delivery_id)["last_status_code"], case.state(delivery_id)["last_error"]) == (
        500,
        "http_status",
    )


def test_the_last_attempt_and_a_permanent_failure_are_dead_and_replay_revives(case: Case) -> None:
    last, permanent = case.add(), case.add()
    case.set_attempts(last, rules.WEBHOOK_MAX_ATTEMPTS - 1)

    async def scenario(outbox: WebhookOutbox) -> None:
        assert {d.id for d in await outbox.claim("w1", 10, 60)} == {last, permanent}
        assert await outbox.fail(last, "w1", 503, "http_status: 503", permanent=False) == "dead"
        assert await outbox.fail(permanent, "w1", None, "host_not_allowed: x", permanent=True) == "dead"
        case.back_off_over(last)
        assert await outbox.claim("w1", 10, 60) == []
        assert case.replay(last) and not case.replay(last)
        assert [(d.id, d.attempts) for d in await outbox.claim("w1", 10, 60)] == [(last, 1)]

    run(case, scenario)
    assert case.state(permanent)["last_error"] == "host_not_allowed"  # the kind only: the detail is logged


def test_a_lapsed_lease_is_claimed_again_unless_it_was_the_last_attempt(case: Case) -> None:
    again, last = case.add(), case.add()
    case.set_attempts(last, rules.WEBHOOK_MAX_ATTEMPTS - 1)

    async def scenario(outbox: WebhookOutbox) -> None:
        assert len(await outbox.claim("doomed", 10, 60)) == 2
        case.lease_lapses(again)
        case.lease_lapses(last)
        assert [(d.id, d.attempts) for d in await outbox.claim("rescuer", 10, 60)] == [(again, 2)]
        assert await outbox.complete(again, "doomed", 200) is False

    run(case, scenario)
    assert case.state(last)["status"] == "dead" and case.state(last)["last_error"] == "lease_expired"
    assert case.state(again)["claimed_by"] == "rescuer"


def test_claim_takes_at_most_the_limit(case: Case) -> None:
    ids = {case.add(endpoint=f"e{index}", user=f"u{index}") for index in range(5)}

    async def scenario(outbox: WebhookOutbox) -> None:
        first = await outbox.claim("w1", 3, 60)
        rest = await outbox.claim("w2", 3, 60)
        assert len(first) == 3 and len(rest) == 2 and {d.id for d in first + rest} == ids

    run(case, scenario)


# --- One user's endpoint does not hold up the others (issue 22 item 6) -----------------------------


def test_one_endpoint_has_at_most_its_cap_in_flight(case: Case) -> None:
    ids = [case.add() for _ in range(5)]

    async def scenario(outbox: WebhookOutbox) -> None:
        first = await outbox.claim("w1", 10, 60)
        assert [d.id for d in first] == ids[: rules.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT]
        assert await outbox.claim("w2", 10, 60) == []  # another process counts the same
        assert await outbox.complete(first[0].id, "w1", 200)
        assert [d.id for d in await outbox.claim("w2", 10, 60)] == [ids[2]]

    run(case, scenario)


def test_one_user_has_at_most_their_cap_in_flight_their_endpoints_taking_turns(case: Case) -> None:
    mine = {
        endpoint: [case.add(endpoint=endpoint) for _ in range(2)] for endpoint in ("e1", "e2", "e3", "e4")
    }

    async def scenario(outbox: WebhookOutbox) -> None:
        claimed = await outbox.claim("w1", 10, 60)
        assert [d.id for d in claimed] == [ids[0] for ids in mine.values()][
            : rules.WEBHOOK_MAX_IN_FLIGHT_PER_USER
        ]
        assert await outbox.claim("w1", 10, 60) == []

    run(case, scenario)


def test_claims_take_turns_across_users_counting_what_each_has_in_flight(case: Case) -> None:
    """Oldest first let a user with a backlog take every slot that freed: the other user's delivery
    waited behind all of it. A slot now goes to the user with fewer in flight."""
    backlog = [case.add(endpoint=f"e{index % 4}", user="many") for index in range(8)]
    other = case.add(endpoint="theirs", user="other")

    async def scenario(outbox: WebhookOutbox) -> None:
        assert [d.id for d in await outbox.claim("w1", 1, 60)] == [backlog[0]]
        assert [d.id for d in await outbox.claim("w1", 1, 60)] == [other]  # 0 in flight beats 1
        assert [d.id for d in await outbox.claim("w1", 1, 60)] == [backlog[1]]

    run(case, scenario)


def test_failures_in_a_row_open_the_circuit_and_its_deliveries_wait_unclaimed(case: Case) -> None:
    failing = [case.add(endpoint="silent", user="u1") for _ in range(8)]

    async def scenario(outbox: WebhookOutbox) -> None:
        failures = 0
        while failures < rules.WEBHOOK_CIRCUIT_FAILURES:
            claimed = await outbox.claim("w1", 10, 60)
            assert claimed, failures
            for delivery in claimed:
                await outbox.fail(delivery.id, "w1", None, "timeout: no answer within 10 s", permanent=False)
                failures += 1
            case.time_passes(20)  # past their own back-off (15 s ± 20 %), not the circuit's
        attempts = sum(case.state(i)["attempts"] for i in failing)
        # Open: nothing of it is claimed, its deliveries due or not; another endpoint's is.
        elsewhere = case.add(endpoint="fine", user="u1")
        [claimed] = await outbox.claim("w1", 10, 60)
        assert claimed.id == elsewhere and await outbox.complete(elsewhere, "w1", 200)
        case.time_passes(60)
        assert await outbox.claim("w1", 10, 60) == []
        assert sum(case.state(i)["attempts"] for i in failing) == attempts  # waiting costs no attempt
        # Half-open after its back-off: one probe at a time; a failed probe opens it again.
        case.time_passes(rules.webhook_backoff_seconds(failures) * 1.3)
        [probe] = await outbox.claim("w1", 10, 60)
        assert probe.id in failing and await outbox.claim("w1", 10, 60) == []
        await outbox.fail(probe.id, "w1", 503, "http_status: 503", permanent=False)
        case.time_passes(60)
        assert await outbox.claim("w1", 10, 60) == []
        # A successful probe closes it: the cap again.
        case.time_passes(rules.webhook_backoff_seconds(failures + 1) * 1.3)
        [probe] = await outbox.claim("w1", 10, 60)
        assert await outbox.complete(probe.id, "w1", 200)
        assert len(await outbox.claim("w1", 10, 60)) == rules.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT

    run(case, scenario)


def test_a_refused_url_does_not_count_against_the_circuit(case: Case) -> None:
    ids = [case.add() for _ in range(rules.WEBHOOK_CIRCUIT_FAILURES + 2)]

    async def scenario(outbox: WebhookOutbox) -> None:
        refused = 0
        while refused < rules.WEBHOOK_CIRCUIT_FAILURES + 1:
            for delivery in await outbox.claim("w1", 10, 60):
                await outbox.fail(delivery.id, "w1", None, "host_not_allowed: x", permanent=True)
                refused += 1
        assert [d.id for d in await outbox.claim("w1", 10, 60)] == ids[refused:]

    run(case, scenario)


# --- The loop over the in-memory adapters ---------------------------------------------------------


def test_the_loop_signs_retries_and_records_without_a_database() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    outbox = InMemoryWebhookOutbox(clock=clock, seed=2)
    secret = "whsec_" + "QUJD" * 8
    receiver = InMemoryWebhookReceiver(script=[500, WebhookAnswer(None, "timeout: no answer")])
    delivery_id = outbox.add(
        "https://hooks.example.com/x", secret, {"type": "edit_request.failed", "data": {"id": "r"}}
    )
    dispatcher = WebhookDispatcher(
        outbox, receiver, WebhookConfig(worker_id="w", poll_interval_seconds=0.01), clock=clock
    )

    async def until(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                await asyncio.sleep(0.005)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        for attempts in (1, 2):
            await until(
                lambda a=attempts: (
                    outbox.row(delivery_id).attempts == a and outbox.row(delivery_id).status == "pending"
                )
            )  # type: ignore[misc]
            clock.advance(rules.WEBHOOK_BACKOFF_MAX_SECONDS * 2)
        await until(lambda: outbox.row(delivery_id).status == "delivered")
        stop.set()
        await task

    asyncio.run(main())
    assert [sent.headers["webhook-id"] for sent in receiver.sent] == [str(delivery_id)] * 3
    last = receiver.sent[-1]
    # The clock stood at 2026-01-01 + 2 × 6 h when the last attempt was signed.
    assert last.headers["webhook-timestamp"] == str(int(clock().timestamp()))
    assert (
        Webhook(secret).sign(str(delivery_id), clock(), last.body.decode())
        == last.headers["webhook-signature"]
    )


def test_a_sender_that_raises_loses_nothing() -> None:
    class Broken(InMemoryWebhookReceiver):
        async def send(self, url: str, headers: Any, body: bytes) -> WebhookAnswer:
            raise RuntimeError("bug")

    outbox = InMemoryWebhookOutbox(seed=3)
    delivery_id = outbox.add("https://hooks.example.com/x", "whsec_" + "QUJD" * 8, {})
    dispatcher = WebhookDispatcher(outbox, Broken(), WebhookConfig(worker_id="w"))

    async def main() -> None:
        [delivery] = await outbox.claim("w", 1, 60)
        answer = await dispatcher.deliver(delivery)
        assert not answer.delivered

    asyncio.run(main())
    row = outbox.row(delivery_id)
    assert row.status == "pending" and row.last_error == "connect_failed"


def test_the_loop_keeps_at_most_its_concurrency_in_flight() -> None:
    outbox = InMemoryWebhookOutbox(seed=4)
    in_flight, most = 0, 0

    class Slow(InMemoryWebhookReceiver):
        async def send(self, url: str, headers: Any, body: bytes) -> WebhookAnswer:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            return WebhookAnswer(200)

    for _ in range(12):  # each its own endpoint and user: the caps have tests of their own
        outbox.add(
            "https://hooks.example.com/x",
            "whsec_" + "QUJD" * 8,
            {},
            endpoint_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
        )
    dispatcher = WebhookDispatcher(
        outbox, Slow(), WebhookConfig(worker_id="w", concurrency=3, poll_interval_seconds=0.01)
    )

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        async with asyncio.timeout(10):
            while any(row.status != "delivered" for row in outbox.rows()):
                await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(main())
    assert most == 3
