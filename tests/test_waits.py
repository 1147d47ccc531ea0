"""Waiting for a request (REST ``wait=true``, event streams, MCP) is driven by notifications, lasts
a bounded time, and one user holds a bounded number of waits."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from processor.adapters.postgres.changes import PostgresRowChanges
from processor.adapters.postgres.requests import EditRequests
from processor.core import user_actions as user_actions_module
from processor.core.user_actions import UserActions
from processor.domain.errors import LimitExceeded
from processor.domain.images import ImageLimits
from processor.domain.rules import WAIT_MAX_SECONDS, WAITS_PER_USER
from processor.domain.users import User
from tests.conftest import DEADLINE, OWNER, GatedEditor, Harness, StorageServer, png_bytes, wait_for

Row = dict[str, Any]


def owner() -> User:
    return User(OWNER, {"sub": str(OWNER), "role": "authenticated"})


def actions_for(database_url: str, storage: StorageServer, **options: Any) -> UserActions:
    return UserActions(
        EditRequests(database_url),
        storage.adapter(),
        ImageLimits(),
        PostgresRowChanges(database_url),
        **options,
    )


async def collect(rows: AsyncIterator[Row]) -> list[Row]:
    return [row async for row in rows]


def test_a_stream_on_a_row_that_never_finishes_ends_at_its_lifetime(
    database_url: str, storage_server: StorageServer, add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request(stored=False)  # awaiting_image: it would never finish

    async def main() -> list[Row]:
        actions = actions_for(database_url, storage_server, stream_seconds=0.5)
        await actions.open()
        try:
            return await asyncio.wait_for(
                collect(await actions.follow(owner(), request_id)), timeout=DEADLINE
            )
        finally:
            await actions.close()

    rows = asyncio.run(main())
    assert [row["status"] for row in rows] == ["awaiting_image"]


def test_a_change_reaches_a_waiter_by_notification_not_by_polling(
    database_url: str,
    storage_server: StorageServer,
    add_request: Callable[..., uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With the fallback re-read an hour away, only the notification can deliver the change in time.
    monkeypatch.setattr(user_actions_module, "CHANGES_FALLBACK_SECONDS", 3600.0)
    request_id = add_request()

    async def main() -> list[tuple[str, float]]:
        actions = actions_for(database_url, storage_server)
        await actions.open()
        seen: list[tuple[str, float]] = []
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as worker:
                stream = await actions.follow(owner(), request_id)
                first = await anext(stream)
                seen.append((first["status"], first["progress"]))
                await worker.execute("select * from public.claim_edit_request('w', 60, %s)", (request_id,))
                claimed = await asyncio.wait_for(anext(stream), timeout=DEADLINE)
                seen.append((claimed["status"], claimed["progress"]))
                await worker.execute("select public.heartbeat_edit_request(%s, 'w', 0.5, 60)", (request_id,))
                moved = await asyncio.wait_for(anext(stream), timeout=DEADLINE)
                seen.append((moved["status"], moved["progress"]))
                await stream.aclose()
        finally:
            await actions.close()
        return seen

    started = time.monotonic()
    assert asyncio.run(main()) == [("queued", 0.0), ("processing", 0.0), ("processing", 0.5)]
    assert time.monotonic() - started < 60


def test_one_user_holds_at_most_a_bounded_number_of_waits(
    database_url: str, storage_server: StorageServer, add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request(stored=False)

    async def main() -> None:
        actions = actions_for(database_url, storage_server, stream_seconds=60)
        await actions.open()
        try:
            streams = [await actions.follow(owner(), request_id) for _ in range(WAITS_PER_USER)]
            for stream in streams:
                await anext(stream)
            with pytest.raises(LimitExceeded) as refused:
                actions.ensure_can_wait(owner())
            assert refused.value.reason == "too_many_waits"
            other = User(uuid.uuid4(), {})
            actions.ensure_can_wait(other)  # other users are not affected
            await streams[0].aclose()
            actions.ensure_can_wait(owner())  # a closed stream gives its place back
            for stream in streams[1:]:
                await stream.aclose()
        finally:
            await actions.close()

    asyncio.run(main())


def test_the_rest_api_answers_429_past_the_bound_and_refuses_long_waits(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True)
    user = make_user()
    headers = {"Authorization": f"Bearer {harness.storage.token(user)}"}
    request_id = harness.insert(user, [f"{user}/never-uploaded.png"])  # awaiting_image forever
    url = f"{harness.served.url}/v1/edits/{request_id}/events"
    with httpx.Client(headers=headers, timeout=30) as client:
        streams = [client.stream("GET", url) for _ in range(WAITS_PER_USER)]
        opened = [stream.__enter__() for stream in streams]
        try:
            assert all(response.status_code == 200 for response in opened)
            # Keep each line iterator: dropping one closes its stream (httpx closes the connection).
            lines = [response.iter_lines() for response in opened]
            for line in lines:
                assert next(line).startswith("event: ")  # the first event: the stream is held
            refused = client.get(url)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_waits"
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
        # Disconnected streams give their places back (the server notices the client leaving).
        wait_for(lambda: client.get(f"{harness.served.url}/v1/edits/{request_id}").status_code == 200)
        too_long = client.post(
            f"{harness.served.url}/v1/edits?wait=true&timeout={WAIT_MAX_SECONDS + 1}", json={"prompt": "x"}
        )
        assert too_long.status_code == 422


def test_concurrent_waiting_submits_past_the_bound_create_nothing_they_refuse(
    start_processor: Callable[..., Harness], tiny_editor: Any, make_user: Callable[[], uuid.UUID]
) -> None:
    # Reported: six concurrent `?wait=true` submits of one user; two got 429 with no id, and all six
    # edits ran. Now a refused submit creates nothing, and every created request is answered with its id.
    gated = GatedEditor(tiny_editor)  # edits hold, so every accepted wait stays open to its timeout
    harness = start_processor(rest=True, editor=gated)
    user = make_user()
    headers = {"Authorization": f"Bearer {harness.storage.token(user)}"}
    body = {
        "prompt": "make it blue",
        "image": base64.b64encode(png_bytes()).decode(),
        "num_inference_steps": 2,
    }

    def submit(_: int) -> httpx.Response:
        return httpx.post(
            f"{harness.served.url}/v1/edits?wait=true&timeout=20", json=body, headers=headers, timeout=120
        )

    try:
        with ThreadPoolExecutor(WAITS_PER_USER + 2) as pool:
            responses = list(pool.map(submit, range(WAITS_PER_USER + 2)))
    finally:
        gated.release.set()
    answered = [r.json()["id"] for r in responses if r.status_code in (200, 202)]
    refused = [r for r in responses if r.status_code == 429]
    assert len(answered) + len(refused) == len(responses), [r.text for r in responses]
    # Past the user's waits, or (while the others' bodies are read) past their submissions in flight.
    codes = {r.json()["error"]["code"] for r in refused}
    assert codes <= {"too_many_waits", "too_many_submissions"}, codes
    rows = harness.db.execute("select id from edit_requests where user_id = %s", (user,)).fetchall()
    assert sorted(str(row["id"]) for row in rows) == sorted(answered)


def test_a_new_live_preview_reaches_a_waiter_by_notification(
    database_url: str,
    storage_server: StorageServer,
    add_request: Callable[..., uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Event streams send each preview (preview_url, preview_step) as it comes, not at the next progress.
    monkeypatch.setattr(user_actions_module, "CHANGES_FALLBACK_SECONDS", 3600.0)
    request_id = add_request()

    async def main() -> list[Any]:
        actions = actions_for(database_url, storage_server)
        await actions.open()
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as worker:
                stream = await actions.follow(owner(), request_id)
                await anext(stream)
                await worker.execute("select * from public.claim_edit_request('w', 60, %s)", (request_id,))
                await asyncio.wait_for(anext(stream), timeout=DEADLINE)
                await worker.execute(
                    "select public.preview_edit_request(%s, 'w', %s, 3)", (request_id, f"{OWNER}/p.webp")
                )
                previewed = await asyncio.wait_for(anext(stream), timeout=DEADLINE)
                await stream.aclose()
        finally:
            await actions.close()
        return [previewed["status"], previewed["preview_step"]]

    assert asyncio.run(main()) == ["processing", 3]
