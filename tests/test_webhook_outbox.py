"""Completion webhooks in SQL: endpoints under RLS and the URL rules, the outbox written with the final
status, the delivery state machine (claim, complete, back-off, dead letter, leases, replay), the
dashboard, and a hostile signed-in user who may do none of what is not theirs."""

from __future__ import annotations

import base64
import ipaddress
import random
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from processor.domain import rules, webhook_urls
from tests.conftest import DEADLINE, OWNER, acting_as

Row = dict[str, Any]


def allow_local(db: psycopg.Connection[Row]) -> None:
    """What the tests' receivers need: http, loopback, 127.0.0.1 on the allowlist, port 9."""
    db.execute(
        "update edit_webhook_settings set allow_http = true, allow_private_addresses = true, "
        "allowed_ports = '{443,80,9}'"
    )
    db.execute("insert into edit_webhook_allowed_hosts (host) values ('127.0.0.1') on conflict do nothing")


def register(
    db: psycopg.Connection[Row], user: uuid.UUID, url: str = "http://127.0.0.1:9/hook", **columns: Any
) -> Row:
    values = {"url": url, **columns}
    with acting_as(db, "authenticated", user) as conn:
        row = conn.execute(
            f"insert into edit_webhook_endpoints ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) "
            "returning id, user_id, url, secret, events",
            tuple(values.values()),
        ).fetchone()
    assert row is not None
    return row


def finish(db: psycopg.Connection[Row], request_id: uuid.UUID, how: str = "succeeded") -> None:
    if how == "canceled":
        db.execute("select cancel_edit_request(%s)", (request_id,))
        return
    db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
    if how == "succeeded":
        db.execute("select complete_edit_request(%s, 'w', 'out.png', '{\"seed\": 7}')", (request_id,))
    else:
        db.execute(
            "select fail_edit_request(%s, 'w', 'Traceback: /secret/path boom', false, 'unknown_format')",
            (request_id,),
        )


def deliveries(db: psycopg.Connection[Row], request_id: uuid.UUID) -> list[Row]:
    return db.execute(
        "select * from edit_webhook_deliveries where request_id = %s order by created_at", (request_id,)
    ).fetchall()


@pytest.fixture
def owner_endpoint(db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]) -> Row:
    allow_local(db)
    return register(db, OWNER)


# --- Endpoints ---------------------------------------------------------------------------------------


def test_a_user_registers_an_endpoint_and_gets_a_standard_webhooks_secret(
    db: psycopg.Connection[Row], owner_endpoint: Row
) -> None:
    assert owner_endpoint["user_id"] == OWNER
    assert owner_endpoint["events"] == ["succeeded", "failed", "canceled"]
    secret = owner_endpoint["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    other = register(db, OWNER, "http://127.0.0.1:9/other")
    assert other["secret"] != secret


def test_the_secret_is_made_by_the_database_even_for_operators(
    db: psycopg.Connection[Row], owner_endpoint: Row
) -> None:
    with acting_as(db, "service_role") as conn:
        row = conn.execute(
            "insert into edit_webhook_endpoints (user_id, url, secret) values (%s, 'http://127.0.0.1:9/x', 'weak') "
            "returning secret",
            (OWNER,),
        ).fetchone()
    assert row is not None and row["secret"] != "weak" and row["secret"].startswith("whsec_")


def test_rotating_a_secret_gives_a_new_one_to_its_owner_only(
    db: psycopg.Connection[Row], owner_endpoint: Row, make_user: Callable[[], uuid.UUID]
) -> None:
    with acting_as(db, "authenticated", make_user()) as conn:
        assert conn.execute(
            "select rotate_edit_webhook_secret(%s) as s", (owner_endpoint["id"],)
        ).fetchone() == {"s": None}
    with acting_as(db, "authenticated", OWNER) as conn:
        new = conn.execute("select rotate_edit_webhook_secret(%s) as s", (owner_endpoint["id"],)).fetchone()
    assert new is not None and new["s"].startswith("whsec_") and new["s"] != owner_endpoint["secret"]


@pytest.mark.parametrize(
    "url, refusal",
    [
        ("https://evil.example/hook", "host_not_allowed"),
        ("ftp://127.0.0.1/hook", "malformed"),
        ("https://user:pw@hooks.example.com/", "malformed"),
        ("https://hooks.example.com/\u00e9", "malformed"),
        ("http://hooks.example.com/hook", "not_https"),
        ("https://10.1.2.3/hook", "private_address"),
        ("https://169.254.169.254/latest/meta-data", "private_address"),
        ("https://[::1]/hook", "private_address"),
        ("https://[::ffff:127.0.0.1]/hook", "private_address"),
        ("https://[::10.0.0.1]/hook", "private_address"),
        ("https://[fec0::1]/hook", "private_address"),
        ("https://[2001::a00:1]/hook", "private_address"),
        ("https://localhost/hook", "private_address"),
        ("https://hooks.example.com:99999/", "malformed"),
    ],
)
def test_a_url_off_the_rules_is_refused_with_its_reason(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], url: str, refusal: str
) -> None:
    # Every host of these cases is allowlisted except evil.example: the other rules must refuse them.
    db.execute(
        "insert into edit_webhook_allowed_hosts (host) values ('hooks.example.com'), ('10.1.2.3'), "
        "('169.254.169.254'), ('::1'), ('::ffff:127.0.0.1'), ('::10.0.0.1'), ('fec0::1'), ('2001::a00:1'), "
        "('localhost'), ('127.0.0.1')"
    )
    with pytest.raises(psycopg.errors.CheckViolation, match=f"webhook URL refused: {refusal}") as caught:
        register(db, OWNER, url)
    assert caught.value.diag.constraint_name == "edit_webhook_endpoints_url_allowed"
    assert webhook_urls.webhook_url_refusal(
        url,
        allowed_hosts=frozenset({"hooks.example.com", "10.1.2.3", "169.254.169.254", "::1", "::ffff:127.0.0.1",
                                 "::10.0.0.1", "fec0::1", "2001::a00:1", "localhost", "127.0.0.1"}),
        allow_http=False,
        allow_private_addresses=False,
    ) is not None  # fmt: skip


def test_an_allowlisted_https_url_and_a_wildcard_are_accepted(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    db.execute(
        "insert into edit_webhook_allowed_hosts (host) values ('hooks.example.com'), ('*.apps.example')"
    )
    register(db, OWNER, "https://hooks.example.com/edits?x=1")
    register(db, OWNER, "https://eu.apps.example:443/hook")
    with pytest.raises(psycopg.errors.CheckViolation, match="host_not_allowed"):
        register(db, OWNER, "https://apps.example/hook")


def test_only_the_operators_ports_are_accepted(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    """Any port of an allowlisted host was accepted: a probe of whatever listens there, and a filtered
    port held a delivery slot for the whole timeout. 443 and 80 unless the operator lists others."""
    db.execute("insert into edit_webhook_allowed_hosts (host) values ('hooks.example.com')")
    for url in (
        "https://hooks.example.com:8443/hook",
        "https://hooks.example.com:22/",
        "https://hooks.example.com:6379/",
    ):
        with pytest.raises(psycopg.errors.CheckViolation, match="webhook URL refused: port_not_allowed"):
            register(db, OWNER, url)
    db.execute("update edit_webhook_settings set allowed_ports = '{443,8443}'")
    register(db, OWNER, "https://hooks.example.com:8443/hook")
    with pytest.raises(psycopg.errors.CheckViolation, match="port_not_allowed"):
        register(db, OWNER, "https://hooks.example.com:80/hook")
    for bad in ("'{}'", "'{0}'", "'{70000}'", "array[443, null]"):
        with pytest.raises(psycopg.errors.CheckViolation):
            db.execute(f"update edit_webhook_settings set allowed_ports = {bad}")


@pytest.mark.parametrize(
    "assignment",
    ["max_in_flight_per_endpoint = 0", "max_in_flight_per_endpoint = 65", "max_in_flight_per_user = 0"],
)
def test_the_in_flight_caps_stay_in_their_range(db: psycopg.Connection[Row], assignment: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(f"update edit_webhook_settings set {assignment}")


def test_sql_defaults_mirror_the_fair_share_rules(db: psycopg.Connection[Row]) -> None:
    row = db.execute(
        "select s.max_in_flight_per_endpoint as endpoint, s.max_in_flight_per_user as per_user, "
        "edit_webhook_circuit_failures() as failures from edit_webhook_settings s"
    ).fetchone()
    assert row == {
        "endpoint": rules.WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT,
        "per_user": rules.WEBHOOK_MAX_IN_FLIGHT_PER_USER,
        "failures": rules.WEBHOOK_CIRCUIT_FAILURES,
    }


def test_changing_the_url_is_checked_again(db: psycopg.Connection[Row], owner_endpoint: Row) -> None:
    with (
        pytest.raises(psycopg.errors.CheckViolation, match="host_not_allowed"),
        acting_as(db, "authenticated", OWNER) as conn,
    ):
        conn.execute(
            "update edit_webhook_endpoints set url = 'https://evil.example/' where id = %s",
            (owner_endpoint["id"],),
        )


def test_events_are_a_subset_of_the_final_statuses(db: psycopg.Connection[Row], owner_endpoint: Row) -> None:
    register(db, OWNER, events=["failed"])
    for events in (["queued"], [], ["succeeded", None]):
        with pytest.raises(psycopg.errors.CheckViolation):
            register(db, OWNER, events=events)


def test_a_user_has_at_most_the_endpoint_limit(db: psycopg.Connection[Row], owner_endpoint: Row) -> None:
    for index in range(rules.WEBHOOK_MAX_ENDPOINTS_PER_USER - 1):
        register(db, OWNER, f"http://127.0.0.1:9/{index}")
    with pytest.raises(psycopg.errors.CheckViolation, match="at most 10 webhook endpoints"):
        register(db, OWNER, "http://127.0.0.1:9/one-too-many")


# --- A hostile signed-in user -----------------------------------------------------------------------


def test_users_see_change_and_delete_only_their_own_endpoints(
    db: psycopg.Connection[Row], owner_endpoint: Row, make_user: Callable[[], uuid.UUID]
) -> None:
    mallory = make_user()
    register(db, mallory, "http://127.0.0.1:9/mallory")
    with acting_as(db, "authenticated", mallory) as conn:
        seen = conn.execute("select id, secret from edit_webhook_endpoints").fetchall()
        changed = conn.execute(
            "update edit_webhook_endpoints set url = 'http://127.0.0.1:9/stolen' where id = %s returning id",
            (owner_endpoint["id"],),
        ).fetchall()
        deleted = conn.execute(
            "delete from edit_webhook_endpoints where id = %s returning id", (owner_endpoint["id"],)
        ).fetchall()
    assert owner_endpoint["id"] not in [row["id"] for row in seen] and len(seen) == 1
    assert changed == [] and deleted == []


@pytest.mark.parametrize(
    "column, value", [("user_id", OWNER), ("secret", "whsec_AAAA"), ("id", uuid.uuid4())]
)
def test_users_cannot_set_the_owner_the_secret_or_the_id(
    db: psycopg.Connection[Row],
    owner_endpoint: Row,
    make_user: Callable[[], uuid.UUID],
    column: str,
    value: Any,
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        register(db, make_user(), **{column: value})


def test_users_cannot_touch_the_allowlist_or_the_settings(
    db: psycopg.Connection[Row], owner_endpoint: Row, make_user: Callable[[], uuid.UUID]
) -> None:
    for statement in (
        "insert into edit_webhook_allowed_hosts (host) values ('evil.example')",
        "select * from edit_webhook_allowed_hosts",
        "update edit_webhook_settings set allow_private_addresses = true",
        "update edit_webhook_settings set max_in_flight_per_user = 256",
        "select * from edit_webhook_delivery_health",
        "update edit_webhook_circuits set open_until = null",
        "delete from edit_webhook_circuits",
        "select updated_at from edit_webhook_circuits",
    ):
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            acting_as(db, "authenticated", make_user()) as conn,
        ):
            conn.execute(statement)


def test_a_request_cannot_name_another_users_endpoint(
    db: psycopg.Connection[Row], owner_endpoint: Row, make_user: Callable[[], uuid.UUID]
) -> None:
    mallory = make_user()
    for endpoint in (owner_endpoint["id"], uuid.uuid4()):
        with (
            pytest.raises(
                psycopg.errors.CheckViolation, match="is not one of this request's owner's endpoints"
            ),
            acting_as(db, "authenticated", mallory) as conn,
        ):
            conn.execute(
                "insert into edit_requests (prompt, input_paths, webhook_endpoint_id) values ('x', %s, %s)",
                ([f"{mallory}/a.png"], endpoint),
            )


def test_a_user_names_their_own_endpoint_and_reads_it_back(
    db: psycopg.Connection[Row], owner_endpoint: Row
) -> None:
    with acting_as(db, "authenticated", OWNER) as conn:
        row = conn.execute(
            "insert into edit_requests (prompt, input_paths, webhook_endpoint_id) values ('x', %s, %s) "
            "returning id, webhook_endpoint_id",
            ([f"{OWNER}/a.png"], owner_endpoint["id"]),
        ).fetchone()
    assert row is not None and row["webhook_endpoint_id"] == owner_endpoint["id"]


def test_users_see_only_their_deliveries_and_never_the_lease(
    db: psycopg.Connection[Row],
    owner_endpoint: Row,
    add_request: Callable[..., uuid.UUID],
    make_user: Callable[[], uuid.UUID],
) -> None:
    request_id = add_request(webhook_endpoint_id=owner_endpoint["id"])
    finish(db, request_id)
    with acting_as(db, "authenticated", OWNER) as conn:
        mine = conn.execute("select id, status, attempts, last_error from edit_webhook_deliveries").fetchall()
    assert len(mine) == 1
    with acting_as(db, "authenticated", make_user()) as conn:
        assert conn.execute("select id from edit_webhook_deliveries").fetchall() == []
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "authenticated", OWNER) as conn:
        conn.execute("select claimed_by from edit_webhook_deliveries")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "authenticated", OWNER) as conn:
        conn.execute("update edit_webhook_deliveries set status = 'pending'")


@pytest.mark.parametrize(
    "call",
    [
        "select replay_edit_webhook_delivery(%s)",
        "select * from claim_edit_webhook_deliveries('me', 10, 60) where %s is not null",
        "select complete_edit_webhook_delivery(%s, 'me', 200)",
        "select fail_edit_webhook_delivery(%s, 'me', 500, 'x', false)",
    ],
)
def test_users_cannot_call_the_delivery_functions(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID], call: str
) -> None:
    request_id = add_request(webhook_endpoint_id=owner_endpoint["id"])
    finish(db, request_id)
    [delivery] = deliveries(db, request_id)
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, "authenticated", OWNER) as conn:
        conn.execute(call, (delivery["id"],))


def test_replay_refuses_a_caller_without_the_operator_role_even_with_execute(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID]
) -> None:
    # Belt and braces: were the grant ever given, the role check inside still refuses.
    db.execute("grant execute on function replay_edit_webhook_delivery(uuid) to authenticated")
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="only operators"),
        acting_as(db, "authenticated", OWNER) as conn,
    ):
        conn.execute("select replay_edit_webhook_delivery(%s)", (uuid.uuid4(),))


# --- The outbox ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["succeeded", "failed", "canceled"])
def test_each_final_status_writes_one_delivery_with_what_the_user_may_see(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID], how: str
) -> None:
    request_id = add_request(webhook_endpoint_id=owner_endpoint["id"])
    finish(db, request_id, how)
    [delivery] = deliveries(db, request_id)
    assert (delivery["status"], delivery["event"], delivery["attempts"]) == ("pending", how, 0)
    payload = delivery["payload"]
    assert payload["type"] == f"edit_request.{how}" and payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert data["id"] == str(request_id) and data["status"] == how
    assert set(data) == {
        "id", "status", "output_bucket", "output_path", "error_code", "error_message", "result",
        "created_at", "finished_at",
    }  # fmt: skip
    assert "secret/path" not in str(payload) and "claimed_by" not in str(payload)
    if how == "succeeded":
        assert (data["output_path"], data["result"]) == ("out.png", {"seed": 7})
    if how == "failed":
        assert data["error_code"] == "unknown_format" and data["error_message"].startswith("An input is not")


def test_only_subscribed_events_and_only_requests_naming_an_endpoint_are_delivered(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID]
) -> None:
    failures_only = register(db, OWNER, "http://127.0.0.1:9/failures", events=["failed"])
    succeeded = add_request(webhook_endpoint_id=failures_only["id"])
    failed = add_request(webhook_endpoint_id=failures_only["id"])
    plain = add_request()
    finish(db, succeeded)
    finish(db, failed, "failed")
    finish(db, plain)
    assert deliveries(db, succeeded) == [] and deliveries(db, plain) == []
    assert [d["event"] for d in deliveries(db, failed)] == ["failed"]


def test_the_delivery_is_written_in_the_transaction_that_makes_the_request_final(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID], database_url: str
) -> None:
    request_id = add_request(webhook_endpoint_id=owner_endpoint["id"])
    db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as other:
        other.execute("select complete_edit_request(%s, 'w', 'out.png')", (request_id,))
        assert len(deliveries(other, request_id)) == 1  # type: ignore[arg-type]
        assert deliveries(db, request_id) == []  # not committed: nobody else sees it
        other.rollback()
    assert deliveries(db, request_id) == []
    assert db.execute("select status from edit_requests where id = %s", (request_id,)).fetchone() == {
        "status": "processing"
    }


def test_a_retried_request_delivers_each_final_status(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request(webhook_endpoint_id=owner_endpoint["id"])
    finish(db, request_id, "failed")
    db.execute("select retry_edit_request(%s)", (request_id,))
    finish(db, request_id)
    assert [d["event"] for d in deliveries(db, request_id)] == ["failed", "succeeded"]


def test_deleting_an_endpoint_leaves_the_request(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request(webhook_endpoint_id=owner_endpoint["id"])
    with acting_as(db, "authenticated", OWNER) as conn:
        conn.execute("delete from edit_webhook_endpoints where id = %s", (owner_endpoint["id"],))
    finish(db, request_id)
    assert db.execute(
        "select webhook_endpoint_id from edit_requests where id = %s", (request_id,)
    ).fetchone() == {"webhook_endpoint_id": None}
    assert deliveries(db, request_id) == []


# --- The delivery state machine -----------------------------------------------------------------------


def claim(db: psycopg.Connection[Row], worker: str = "w1", limit: int = 10, lease: int = 60) -> list[Row]:
    return db.execute(
        "select * from claim_edit_webhook_deliveries(%s, %s, %s)", (worker, limit, lease)
    ).fetchall()


@pytest.fixture
def pending(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID]
) -> uuid.UUID:
    request_id = add_request(webhook_endpoint_id=owner_endpoint["id"])
    finish(db, request_id)
    [delivery] = deliveries(db, request_id)
    return uuid.UUID(str(delivery["id"]))


def delivery(db: psycopg.Connection[Row], delivery_id: uuid.UUID) -> Row:
    row = db.execute("select * from edit_webhook_deliveries where id = %s", (delivery_id,)).fetchone()
    assert row is not None
    return row


def test_claim_then_complete(db: psycopg.Connection[Row], owner_endpoint: Row, pending: uuid.UUID) -> None:
    [claimed] = claim(db)
    assert claimed["id"] == pending and claimed["url"] == owner_endpoint["url"]
    assert claimed["secret"] == owner_endpoint["secret"] and claimed["attempts"] == 1
    assert claimed["refusal"] is None
    assert claim(db, "w2") == []  # leased
    assert db.execute(
        "select complete_edit_webhook_delivery(%s, 'w2', 200) as ok", (pending,)
    ).fetchone() == {"ok": False}
    assert db.execute(
        "select complete_edit_webhook_delivery(%s, 'w1', 204) as ok", (pending,)
    ).fetchone() == {"ok": True}
    row = delivery(db, pending)
    assert (row["status"], row["last_status_code"], row["claimed_by"]) == ("delivered", 204, None)
    assert row["delivered_at"] is not None


def test_a_failure_backs_off_with_jitter_then_is_due_again(
    db: psycopg.Connection[Row], pending: uuid.UUID
) -> None:
    claim(db)
    assert db.execute(
        "select fail_edit_webhook_delivery(%s, 'w1', 500, 'http_status: 500', false) as s", (pending,)
    ).fetchone() == {"s": "pending"}
    row = db.execute(
        "select status, last_status_code, last_error, extract(epoch from next_attempt_at - now()) as wait "
        "from edit_webhook_deliveries where id = %s",
        (pending,),
    ).fetchone()
    assert row is not None and (row["status"], row["last_status_code"]) == ("pending", 500)
    nominal = rules.webhook_backoff_seconds(1)
    jitter = rules.WEBHOOK_BACKOFF_JITTER
    assert nominal * (1 - jitter) - 1 <= float(row["wait"]) <= nominal * (1 + jitter)
    assert claim(db) == []  # not due yet
    db.execute("update edit_webhook_deliveries set next_attempt_at = now() where id = %s", (pending,))
    assert [r["attempts"] for r in claim(db)] == [2]


def test_the_last_attempt_is_dead_with_its_status_and_reason_then_replay_makes_it_due(
    db: psycopg.Connection[Row], pending: uuid.UUID
) -> None:
    for attempt in range(1, rules.WEBHOOK_MAX_ATTEMPTS + 1):
        db.execute("update edit_webhook_deliveries set next_attempt_at = now() where id = %s", (pending,))
        # The endpoint's circuit opened after WEBHOOK_CIRCUIT_FAILURES of these: let it half-open.
        db.execute("update edit_webhook_circuits set open_until = now() - interval '1 second'")
        [claimed] = claim(db)
        assert claimed["attempts"] == attempt
        status = db.execute(
            "select fail_edit_webhook_delivery(%s, 'w1', 503, 'http_status: 503 Service Unavailable', false) as s",
            (pending,),
        ).fetchone()
        assert status == {"s": "dead" if attempt == rules.WEBHOOK_MAX_ATTEMPTS else "pending"}
    row = delivery(db, pending)
    assert (row["status"], row["last_status_code"], row["last_error"]) == ("dead", 503, "http_status")
    db.execute("update edit_webhook_deliveries set next_attempt_at = now() where id = %s", (pending,))
    assert claim(db) == []
    assert db.execute(
        "select count(*) as n from edit_webhook_circuits where open_until > now()"
    ).fetchone() == {"n": 1}
    with acting_as(db, "service_role") as conn:
        assert conn.execute("select replay_edit_webhook_delivery(%s) as ok", (pending,)).fetchone() == {
            "ok": True
        }
    [again] = claim(db)  # the replay closed the endpoint's circuit: it goes out now
    assert again["id"] == pending and again["attempts"] == 1


def test_a_permanent_failure_is_dead_at_once(db: psycopg.Connection[Row], pending: uuid.UUID) -> None:
    claim(db)
    db.execute("select fail_edit_webhook_delivery(%s, 'w1', null, 'host_not_allowed: x', true)", (pending,))
    assert delivery(db, pending)["status"] == "dead"


def test_a_lapsed_lease_is_claimed_again_and_its_old_holder_is_fenced(
    db: psycopg.Connection[Row], pending: uuid.UUID
) -> None:
    claim(db, "dead-processor")
    db.execute(
        "update edit_webhook_deliveries set claimed_until = now() - interval '1 second' where id = %s",
        (pending,),
    )
    [again] = claim(db, "w2")
    assert again["id"] == pending and again["attempts"] == 2
    assert db.execute(
        "select fail_edit_webhook_delivery(%s, 'dead-processor', 500, 'late', false) as s", (pending,)
    ).fetchone() == {"s": None}
    assert delivery(db, pending)["claimed_by"] == "w2"


def test_a_lease_lapsing_on_the_last_attempt_is_dead(db: psycopg.Connection[Row], pending: uuid.UUID) -> None:
    claim(db)
    db.execute(
        "update edit_webhook_deliveries set attempts = %s, claimed_until = now() - interval '1 second' where id = %s",
        (rules.WEBHOOK_MAX_ATTEMPTS, pending),
    )
    assert claim(db) == []
    row = delivery(db, pending)
    assert row["status"] == "dead" and row["last_error"] == "lease_expired"


def test_a_url_refused_since_it_was_registered_is_reported_at_claim(
    db: psycopg.Connection[Row], pending: uuid.UUID
) -> None:
    db.execute("delete from edit_webhook_allowed_hosts")
    [claimed] = claim(db)
    assert claimed["refusal"].startswith("host_not_allowed:")


def test_concurrent_claims_never_take_the_same_delivery(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID], database_url: str
) -> None:
    for _ in range(20):
        finish(db, add_request(webhook_endpoint_id=owner_endpoint["id"]))
    # Every delivery claimable at once (the caps have tests of their own).
    db.execute(
        "update edit_webhook_settings set max_in_flight_per_endpoint = 64, max_in_flight_per_user = 256"
    )
    taken: list[list[uuid.UUID]] = []
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            barrier.wait()
            mine: list[uuid.UUID] = []
            while rows := claim(conn, name, limit=3):  # type: ignore[arg-type]
                mine += [row["id"] for row in rows]
            taken.append(mine)

    threads = [threading.Thread(target=worker, args=(f"w{index}",)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    everything = [delivery_id for mine in taken for delivery_id in mine]
    assert len(everything) == len(set(everything)) == 20


def test_the_dashboard_counts_by_status_and_gives_the_failure_rate(
    db: psycopg.Connection[Row], owner_endpoint: Row, add_request: Callable[..., uuid.UUID]
) -> None:
    ids = []
    for _ in range(4):
        request_id = add_request(webhook_endpoint_id=owner_endpoint["id"])
        finish(db, request_id)
        ids.append(deliveries(db, request_id)[0]["id"])
    db.execute(
        "update edit_webhook_deliveries set created_at = now() - interval '90 seconds' where id = %s",
        (ids[3],),
    )
    db.execute("update edit_webhook_settings set max_in_flight_per_endpoint = 3")
    claimed = {row["id"] for row in claim(db, limit=3)}
    first, second, third = sorted(claimed)
    db.execute("select complete_edit_webhook_delivery(%s, 'w1', 200)", (first,))
    db.execute("select complete_edit_webhook_delivery(%s, 'w1', 200)", (second,))
    db.execute("select fail_edit_webhook_delivery(%s, 'w1', null, 'private_address: x', true)", (third,))
    with acting_as(db, "service_role") as conn:
        [health] = conn.execute("select * from edit_webhook_delivery_health").fetchall()
    assert (health["pending"], health["delivering"], health["delivered"], health["dead"]) == (
        4 - len(claimed), 0, 2, 1
    )  # fmt: skip
    assert health["failure_rate_last_hour"] == pytest.approx(1 / 3)
    assert health["retried_rate_last_hour"] == 0 and health["endpoints_backed_off"] == 0
    if ids[3] not in claimed:
        assert health["oldest_pending_age_s"] >= 89


# --- The rules, in SQL and in Python ------------------------------------------------------------------


def test_sql_mirrors_the_webhook_rules(db: psycopg.Connection[Row]) -> None:
    row = db.execute(
        "select edit_webhook_max_attempts() as attempts, edit_webhook_max_endpoints() as endpoints"
    ).fetchone()
    assert row == {"attempts": rules.WEBHOOK_MAX_ATTEMPTS, "endpoints": rules.WEBHOOK_MAX_ENDPOINTS_PER_USER}
    jitter = rules.WEBHOOK_BACKOFF_JITTER
    for attempts in (1, 2, 5, 10, 12):
        waits = [
            float(r["s"])
            for r in db.execute(
                "select extract(epoch from edit_webhook_backoff(%s)) as s from generate_series(1, 200)",
                (attempts,),
            ).fetchall()
        ]
        nominal = rules.webhook_backoff_seconds(attempts)
        assert nominal * (1 - jitter) <= min(waits) and max(waits) <= nominal * (1 + jitter)
        assert max(waits) - min(waits) > nominal * jitter  # the jitter is there
    for function in ("edit_webhook_url_host", "edit_webhook_url_port"):
        source = db.execute("select prosrc from pg_proc where proname = %s", (function,)).fetchone()
        assert source is not None and webhook_urls.WEBHOOK_URL_PATTERN in source["prosrc"], function
    default = db.execute(
        "select column_default from information_schema.columns "
        "where table_name = 'edit_webhook_settings' and column_name = 'allowed_ports'"
    ).fetchone()
    assert default is not None
    assert {
        int(p) for p in re.findall(r"\d+", default["column_default"])
    } == webhook_urls.WEBHOOK_DEFAULT_PORTS
    from processor.settings import Settings

    assert Settings(_env_file=None).webhook_ports() == webhook_urls.WEBHOOK_DEFAULT_PORTS  # type: ignore[call-arg]
    events = db.execute(
        "select pg_get_constraintdef(oid) as d from pg_constraint where conname = 'edit_webhook_deliveries_event_known'"
    ).fetchone()
    assert events is not None and all(f"'{event}'" in events["d"] for event in rules.WEBHOOK_EVENTS)


URL_CASES = [
    "https://hooks.example.com/x",
    "https://HOOKS.example.com/x",
    "http://hooks.example.com/x",
    "https://a.b.apps.example/",
    "https://apps.example/",
    "https://evil.example/",
    "https://127.0.0.1:8443/",
    "https://10.0.0.1/",
    "https://8.8.8.8/",
    "https://100.64.1.1/",
    "https://[::1]/",
    "https://[2606:4700::1111]/",
    "https://[fe80::1]/",
    "https://[::ffff:8.8.8.8]/",
    "https://[::8.8.8.8]/",
    "https://[fec0::1]/",
    "https://[2001::1]/",
    "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "https://[3fff::1]/",
    "https://localhost/",
    "https://x.localhost/",
    "https://999.1.1.1/",
    "https://u@hooks.example.com/",
    "https://hooks.example.com/a b",
    "https://hooks.example.com:443/?q=1#f",
    "https://hooks.example.com:80/",
    "http://hooks.example.com:443/",
    "https://hooks.example.com:8443/",
    "http://hooks.example.com:22/",
    "https://a.b.apps.example:6379/",
    "hooks.example.com",
    "https://" + "a" * 2050 + ".example/",
]


@pytest.mark.parametrize(
    "allow_http, allow_private, any_port", [(False, False, False), (True, True, False), (True, True, True)]
)
def test_python_and_sql_refuse_the_same_urls_for_the_same_reason(
    db: psycopg.Connection[Row], allow_http: bool, allow_private: bool, any_port: bool
) -> None:
    hosts = frozenset({"hooks.example.com", "*.apps.example", "127.0.0.1", "10.0.0.1", "8.8.8.8", "100.64.1.1",
                       "::1", "2606:4700::1111", "fe80::1", "::ffff:8.8.8.8", "::8.8.8.8", "fec0::1", "2001::1",
                       "2001:0:4136:e378:8000:63bf:3fff:fdd2", "3fff::1", "localhost", "x.localhost",
                       "999.1.1.1"})  # fmt: skip
    db.execute("insert into edit_webhook_allowed_hosts (host) select unnest(%s::text[])", (sorted(hosts),))
    db.execute(
        "update edit_webhook_settings set allow_http = %s, allow_private_addresses = %s, allow_any_port = %s",
        (allow_http, allow_private, any_port),
    )
    for url in URL_CASES:
        sql = db.execute("select edit_webhook_url_refusal(%s) as r", (url,)).fetchone()
        assert sql is not None
        python = webhook_urls.webhook_url_refusal(
            url,
            allowed_hosts=hosts,
            allow_http=allow_http,
            allow_private_addresses=allow_private,
            allowed_ports=None if any_port else webhook_urls.WEBHOOK_DEFAULT_PORTS,
        )
        assert (sql["r"] or "").partition(":")[0] == (python[0] if python else ""), url
        if python is not None:
            assert sql["r"] == f"{python[0]}: {python[1]}", url


def test_sql_and_python_list_the_same_private_networks(db: psycopg.Connection[Row]) -> None:
    source = db.execute(
        "select prosrc from pg_proc where proname = 'edit_webhook_address_private'"
    ).fetchone()
    assert source is not None
    listed = re.search(r"array\[(.*?)\]::inet\[\]", source["prosrc"], re.S)
    assert listed is not None
    in_sql = {ipaddress.ip_network(network) for network in re.findall(r"'([^']+)'", listed.group(1))}
    assert in_sql == set(webhook_urls.WEBHOOK_PRIVATE_NETWORKS)
    edges = [
        str(a)
        for n in webhook_urls.WEBHOOK_PRIVATE_NETWORKS
        for a in (n.network_address, n.broadcast_address)
    ]
    verdicts = db.execute(
        "select a, edit_webhook_address_private(a) as private from unnest(%s::text[]) a", (edges,)
    ).fetchall()
    assert all(row["private"] for row in verdicts)


def test_every_address_python_calls_not_global_is_refused() -> None:
    """Python's ``ipaddress`` knows which addresses are not global; the list must cover all of those
    (it may refuse more: deprecated and special-purpose blocks Python still calls global). Sampled:
    both ends and random addresses of every special block Python and IANA know of, and random
    addresses of the whole space."""
    rng = random.Random(22)
    blocks = [
        *ipaddress._IPv4Constants._private_networks,  # type: ignore[attr-defined]
        *ipaddress._IPv6Constants._private_networks,  # type: ignore[attr-defined]
        *webhook_urls.WEBHOOK_PRIVATE_NETWORKS,
    ]
    samples: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for block in blocks:
        samples += [block.network_address, block.broadcast_address]
        samples += [block.network_address + rng.randrange(block.num_addresses) for _ in range(20)]
    samples += [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(20000)]
    samples += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(20000)]
    missed = [str(a) for a in samples if not a.is_global and not webhook_urls.webhook_address_private(a)]
    assert missed == []
    for deprecated in ("::10.0.0.1", "::8.8.8.8", "fec0::1", "2001::1", "192.88.99.1"):
        assert webhook_urls.webhook_address_private(ipaddress.ip_address(deprecated)), deprecated
