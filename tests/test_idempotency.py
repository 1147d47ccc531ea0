"""Idempotent submits: a retry with the same key is the same request, made once and run once, however
many copies race; the same key with another body is refused; nothing a losing retry uploaded stays."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from processor.domain.ports.editor import Editor
from processor.domain.reasons import ReasonCode
from tests.conftest import DEADLINE, GatedEditor, Harness, acting_as, png_bytes
from tests.test_mcp_tools import call_over_http, text_of

Row = dict[str, Any]
RETRIES = 10


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def auth(harness: Harness, user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.storage.token(user)}"}


def rows_of(harness: Harness, user: uuid.UUID, table: str = "edit_requests") -> list[Row]:
    return harness.db.execute(f"select * from {table} where user_id = %s", (user,)).fetchall()


def uploads_of(harness: Harness, user: uuid.UUID) -> set[str]:
    found = harness.db.execute(
        "select name from storage.objects where bucket_id = 'edit-inputs' and name like %s", (f"{user}/%",)
    ).fetchall()
    return {str(row["name"]) for row in found}


def concurrently(count: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    barrier = threading.Barrier(count)

    def go(index: int) -> httpx.Response:
        barrier.wait(DEADLINE)  # all at once, as retries after a timeout are
        # Past the user's submissions in flight (rules.SUBMISSIONS_PER_USER) a retry is refused before
        # its body is read (429 too_many_submissions) and, as a client would, sent again.
        deadline = time.monotonic() + DEADLINE
        while True:
            response = call(index)
            refused = response.status_code == 429 and "too_many_submissions" in response.text
            if not refused or time.monotonic() > deadline:
                return response

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(go, range(count)))


@pytest.fixture
def counted(start_processor: Callable[..., Harness], tiny_editor: Editor) -> tuple[Harness, GatedEditor]:
    editor = GatedEditor(tiny_editor)
    editor.release.set()  # never held: it only counts the edits it runs
    return start_processor(rest=True, editor=editor), editor


def test_concurrent_retries_with_one_key_make_one_request_that_runs_once(
    counted: tuple[Harness, GatedEditor], make_user: Callable[[], uuid.UUID]
) -> None:
    harness, editor = counted
    user = make_user()
    body = {"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 2}
    headers = {**auth(harness, user), "Idempotency-Key": f"order-{uuid.uuid4()}"}

    responses = concurrently(
        RETRIES,
        lambda _: httpx.post(f"{harness.served.url}/v1/edits", json=body, headers=headers, timeout=120),
    )

    assert [r.status_code for r in responses] == [202] * RETRIES, [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    (request_id,) = ids
    assert all(r.headers["location"].endswith(f"/v1/edits/{request_id}") for r in responses)
    # One made it; every other answer says it was found again.
    assert sorted(r.headers.get("idempotent-replayed", "") for r in responses) == [""] + ["true"] * (
        RETRIES - 1
    )
    rows = rows_of(harness, user)
    assert [str(row["id"]) for row in rows] == [request_id]
    harness.wait_status(uuid.UUID(request_id), "succeeded")
    assert editor.calls == 1
    # The losers' uploads were deleted: only the request's own inputs remain.
    assert uploads_of(harness, user) == set(rows[0]["input_paths"])


def test_a_retry_after_the_edit_finished_gets_it_back_and_waits_alike(
    counted: tuple[Harness, GatedEditor], make_user: Callable[[], uuid.UUID]
) -> None:
    harness, editor = counted
    user = make_user()
    body = {"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 2}
    headers = {**auth(harness, user), "Idempotency-Key": '"quoted-key-1"'}  # a structured-field string
    first = httpx.post(
        f"{harness.served.url}/v1/edits?wait=true&timeout=60", json=body, headers=headers, timeout=90
    )
    assert first.status_code == 200 and first.json()["status"] == "succeeded", first.text
    assert "idempotent-replayed" not in first.headers

    again = httpx.post(
        f"{harness.served.url}/v1/edits?wait=true&timeout=60", json=body, headers=headers, timeout=90
    )
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.json()["image"]
    assert again.json()["idempotency_key"] == "quoted-key-1"
    plain = httpx.post(f"{harness.served.url}/v1/edits", json=body, headers=headers)
    assert plain.status_code == 202 and plain.json()["id"] == first.json()["id"]
    assert len(rows_of(harness, user)) == 1 and editor.calls == 1


def test_the_same_key_with_another_body_is_refused_and_stores_nothing(
    counted: tuple[Harness, GatedEditor], make_user: Callable[[], uuid.UUID]
) -> None:
    harness, _ = counted
    user = make_user()
    headers = {**auth(harness, user), "Idempotency-Key": "k-1"}
    body = {"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 2}
    assert httpx.post(f"{harness.served.url}/v1/edits", json=body, headers=headers).status_code == 202
    kept = uploads_of(harness, user)

    for other in (
        {**body, "prompt": "make it red"},
        {**body, "image": b64(png_bytes(color=(0, 0, 255)))},
        {**body, "num_inference_steps": 3},
    ):
        refused = httpx.post(f"{harness.served.url}/v1/edits", json=other, headers=headers)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == ReasonCode.IDEMPOTENCY_KEY_REUSED
    # The same body as multipart is the same request.
    form = httpx.post(
        f"{harness.served.url}/v1/edits",
        data={"prompt": "make it blue", "num_inference_steps": "2"},
        files={"image": ("a.png", png_bytes(), "image/png")},
        headers=headers,
    )
    assert form.status_code == 202 and form.headers["idempotent-replayed"] == "true"
    assert len(rows_of(harness, user)) == 1 and uploads_of(harness, user) == kept


def test_keys_are_per_user_and_checked(
    counted: tuple[Harness, GatedEditor], make_user: Callable[[], uuid.UUID]
) -> None:
    harness, _ = counted
    alice, bob = make_user(), make_user()
    body = {"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 2}
    ids = [
        httpx.post(
            f"{harness.served.url}/v1/edits",
            json=body,
            headers={**auth(harness, who), "Idempotency-Key": "same"},
        ).json()["id"]
        for who in (alice, bob)
    ]
    assert ids[0] != ids[1]
    for key in ("has space", "x" * 256, "naïve"):
        refused = httpx.post(
            f"{harness.served.url}/v1/edits",
            json=body,
            headers={**auth(harness, alice), "Idempotency-Key": key.encode()},  # type: ignore[dict-item]
        )
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_parameter", key
    mismatch = httpx.post(
        f"{harness.served.url}/v1/edits",
        json={**body, "idempotency_key": "one"},
        headers={**auth(harness, alice), "Idempotency-Key": "two"},
    )
    assert mismatch.status_code == 422 and mismatch.json()["error"]["code"] == "invalid_request"
    assert len(rows_of(harness, alice)) == 1


def test_concurrent_batch_retries_with_one_key_make_one_batch(
    counted: tuple[Harness, GatedEditor], make_user: Callable[[], uuid.UUID]
) -> None:
    harness, _ = counted
    user = make_user()
    body = {
        "prompt": "make it blue",
        "images": [b64(png_bytes()), b64(png_bytes((48, 48)))],
        "num_inference_steps": 2,
    }
    headers = {**auth(harness, user), "Idempotency-Key": "batch-1"}
    responses = concurrently(
        5, lambda _: httpx.post(f"{harness.served.url}/v1/batches", json=body, headers=headers, timeout=120)
    )
    assert [r.status_code for r in responses] == [202] * 5, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(rows_of(harness, user, "edit_batches")) == 1
    requests = rows_of(harness, user)
    assert len(requests) == 2
    assert uploads_of(harness, user) == {path for row in requests for path in row["input_paths"]}
    other = httpx.post(
        f"{harness.served.url}/v1/batches", json={**body, "prompt": "make it red"}, headers=headers
    )
    assert other.status_code == 422 and other.json()["error"]["code"] == ReasonCode.IDEMPOTENCY_KEY_REUSED


def test_the_mcp_tools_take_the_key_too(
    counted: tuple[Harness, GatedEditor], make_user: Callable[[], uuid.UUID]
) -> None:
    harness, _ = counted
    user = make_user()
    token = harness.storage.token(user)
    arguments = {"prompt": "make it blue", "image_base64": b64(png_bytes()), "timeout_seconds": 0,
                 "num_inference_steps": 2, "idempotency_key": "mcp-1"}  # fmt: skip
    ids = [
        json.loads(text_of(call_over_http(harness, token, "edit_image", arguments)))["id"] for _ in range(2)
    ]
    assert ids[0] == ids[1] and len(rows_of(harness, user)) == 1
    batch = {"prompt": "make it blue", "images_base64": [b64(png_bytes())], "idempotency_key": "mcp-b"}
    batches = [
        call_over_http(harness, token, "submit_batch", batch).structured_content["id"] for _ in range(2)
    ]
    assert batches[0] == batches[1] and len(rows_of(harness, user, "edit_batches")) == 1


# --- Apps inserting rows themselves (supabase-js, as `authenticated`) -------------------------------


def test_concurrent_inserts_with_one_key_make_one_row(
    database_url: str, db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    path = f"{user}/in.png"
    db.execute("insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (path,))
    barrier = threading.Barrier(RETRIES)

    def insert(_: int) -> str:
        with psycopg.connect(database_url, autocommit=True) as conn:
            barrier.wait(DEADLINE)
            try:
                with acting_as(conn, "authenticated", user):  # type: ignore[arg-type]
                    conn.execute(
                        "insert into edit_requests (prompt, input_paths, idempotency_key) values (%s, %s, %s)",
                        ("make it blue", [path], "app-key-1"),
                    )
            except psycopg.errors.UniqueViolation as exc:
                return str(exc.diag.constraint_name)  # PostgREST answers 409
        return "inserted"

    with ThreadPoolExecutor(RETRIES) as pool:
        outcomes = list(pool.map(insert, range(RETRIES)))
    assert sorted(outcomes) == ["edit_requests_idempotency_key_unique"] * (RETRIES - 1) + ["inserted"]
    assert db.execute("select count(*) as n from edit_requests where user_id = %s", (user,)).fetchone() == {
        "n": 1
    }
    # The app reads the request back by its key.
    with acting_as(db, "authenticated", user) as conn:
        found = conn.execute("select id from edit_requests where idempotency_key = 'app-key-1'").fetchall()
    assert len(found) == 1


def test_a_batch_key_is_unique_per_user_in_sql(
    db: psycopg.Connection[Row], make_user: Callable[[], uuid.UUID]
) -> None:
    alice, bob = make_user(), make_user()
    for who in (alice, bob):
        with acting_as(db, "authenticated", who) as conn:
            conn.execute(
                "insert into edit_batches (prompt, input_paths, idempotency_key) values ('x', %s, 'b')",
                ([f"{who}/a.png"],),
            )
    with pytest.raises(psycopg.errors.UniqueViolation), acting_as(db, "authenticated", alice) as conn:
        conn.execute(
            "insert into edit_batches (prompt, input_paths, idempotency_key) values ('x', %s, 'b')",
            ([f"{alice}/b.png"],),
        )
    with pytest.raises(psycopg.errors.CheckViolation), acting_as(db, "authenticated", alice) as conn:
        conn.execute(
            "insert into edit_batches (prompt, input_paths, idempotency_key) values ('x', %s, 'with space')",
            ([f"{alice}/c.png"],),
        )
