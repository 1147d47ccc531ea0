"""Wake-up: a row becoming queued notifies LISTENers and, where pg_net and Vault exist, POSTs a
Supabase-Database-Webhook-shaped body to the processor. Status updates never re-fire it."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import OWNER, wait_for

Row = dict[str, Any]


@pytest.fixture
def fake_pg_net_and_vault(db: psycopg.Connection[Row]) -> psycopg.Connection[Row]:
    """Stand-ins with the real signatures: net.http_post records its arguments; Vault holds the secrets."""
    db.execute(
        """
        create schema net;
        create table net.sent (url text, body jsonb, params jsonb, headers jsonb, timeout_milliseconds int);
        create function net.http_post(url text, body jsonb default '{}', params jsonb default '{}',
                                      headers jsonb default '{"Content-Type": "application/json"}',
                                      timeout_milliseconds int default 5000) returns bigint
        language sql as $$
          insert into net.sent values (url, body, params, headers, timeout_milliseconds);
          select 1::bigint;
        $$;
        create schema vault;
        create table vault.decrypted_secrets (name text, decrypted_secret text);
        insert into vault.decrypted_secrets values
          ('edit_processor_webhook_url', 'https://processor.example/webhooks/edit-requests'),
          ('edit_processor_webhook_secret', 's3cret');
        """
    )
    return db


def sent(db: psycopg.Connection[Row]) -> list[Row]:
    return db.execute("select * from net.sent").fetchall()


def test_insert_as_queued_posts_one_webhook(
    fake_pg_net_and_vault: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    [post] = sent(fake_pg_net_and_vault)
    assert post["url"] == "https://processor.example/webhooks/edit-requests"
    assert post["headers"] == {"Content-Type": "application/json", "X-Webhook-Secret": "s3cret"}
    body = post["body"]
    assert (body["type"], body["table"], body["schema"], body["old_record"]) == (
        "INSERT",
        "edit_requests",
        "public",
        None,
    )
    assert body["record"]["id"] == str(request_id) and body["record"]["status"] == "queued"


def test_awaiting_image_to_queued_posts_an_update_webhook(
    fake_pg_net_and_vault: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    db = fake_pg_net_and_vault
    request_id = add_request(stored=False)
    assert sent(db) == []
    db.execute(
        "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)",
        (f"{OWNER}/{request_id}.png",),
    )
    [post] = sent(db)
    assert post["body"]["type"] == "UPDATE"
    assert post["body"]["old_record"]["status"] == "awaiting_image"
    assert post["body"]["record"]["status"] == "queued"


def test_runpod_format_posts_a_runpod_job(
    fake_pg_net_and_vault: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    db = fake_pg_net_and_vault
    db.execute("insert into vault.decrypted_secrets values ('edit_processor_webhook_format', 'runpod')")
    request_id = add_request()
    [post] = sent(db)
    assert post["body"] == {"input": {"edit_request_id": str(request_id)}}
    assert post["headers"] == {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}


def test_status_and_progress_updates_do_not_refire(
    fake_pg_net_and_vault: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    db = fake_pg_net_and_vault
    request_id = add_request()
    db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
    db.execute("select heartbeat_edit_request(%s, 'w', 0.5)", (request_id,))
    db.execute("select complete_edit_request(%s, 'w', 'out.png')", (request_id,))
    assert len(sent(db)) == 1


def test_retry_with_back_off_waits_for_the_sweep(
    fake_pg_net_and_vault: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    db = fake_pg_net_and_vault
    request_id = add_request()
    db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
    db.execute("select fail_edit_request(%s, 'w', 'flaky', true)", (request_id,))
    assert len(sent(db)) == 1  # not due yet: no pointless wake-up


def test_a_retry_is_woken_again_when_its_back_off_ends(
    fake_pg_net_and_vault: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    db = fake_pg_net_and_vault
    request_id = add_request()
    db.execute("select * from claim_edit_request('w', 120, %s)", (request_id,))
    db.execute("select fail_edit_request(%s, 'w', 'flaky', true)", (request_id,))
    db.execute("select requeue_expired_edit_requests()")
    assert len(sent(db)) == 1  # still backing off
    db.execute(
        "update edit_requests set next_attempt_at = now() - interval '1 second' where id = %s", (request_id,)
    )

    assert db.execute("select requeue_expired_edit_requests() as n").fetchone() == {"n": 1}

    posts = sent(db)
    assert len(posts) == 2 and posts[1]["body"]["record"]["id"] == str(request_id)
    db.execute("select requeue_expired_edit_requests()")
    assert len(sent(db)) == 2  # once only


def test_without_a_url_in_vault_nothing_is_sent(
    fake_pg_net_and_vault: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    db = fake_pg_net_and_vault
    db.execute("delete from vault.decrypted_secrets where name = 'edit_processor_webhook_url'")
    add_request()
    assert sent(db) == []


def test_plain_postgres_skips_http_without_error(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    assert db.execute("select status from edit_requests where id = %s", (request_id,)).fetchone() == {
        "status": "queued"
    }


def test_becoming_queued_notifies_listeners_once(
    database_url: str, db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as listener:
        listener.execute("listen edit_requests")
        waiting = add_request(stored=False)
        ready = add_request()
        db.execute(
            "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)",
            (f"{OWNER}/{waiting}.png",),
        )
        db.execute("select * from claim_edit_request('w', 120, %s)", (ready,))
        db.execute("select complete_edit_request(%s, 'w', 'x.png')", (ready,))
        payloads: list[str] = []
        wait_for(
            lambda: payloads.extend(n.payload for n in listener.notifies(timeout=0.2)) or len(payloads) >= 2,
            what="two notifications",
        )
        payloads.extend(n.payload for n in listener.notifies(timeout=0.3))
    assert payloads == [str(ready), str(waiting)]
