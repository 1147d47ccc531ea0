"""One set of actions, one set of answers: every user action of the core through every way in that
acts for a user (the REST API and the MCP tools), as the rule parity test does for inputs.

Each way in names the route or tool that serves each ``Action`` (``rest.ACTIONS``, ``mcp_tools.ACTIONS``);
the table below says how a client calls it. An action added to the core fails here until each way
in offers it. Then each action that names a request or batch is asked about one that does not
exist, one of another user, and (where it changes something) one already finished, and every way
in must give the same answer. The RunPod handler and the CLI act for the operator, not for a user
(no access token reaches them): they run an edit or claim a row, and offer no user actions
(docs/decisions/0012-user-actions-in-the-core.md).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from processor.core.user_actions import Action
from processor.entrypoints import mcp_tools
from processor.entrypoints import rest as rest_api
from tests.conftest import Harness, acting_as
from tests.test_mcp_tools import call_over_http, text_of

Call = Callable[[Harness, str, str], str]
"""``(harness, token, id) -> answer``: ``ok:<status>`` or the reason code of the refusal."""


def rest_answer(response: httpx.Response) -> str:
    if response.status_code < 300:
        body = response.json()
        return f"ok:{body.get('status', 'listed')}" if isinstance(body, dict) else "ok:listed"
    return str(response.json()["error"]["code"])


def rest(method: str, path: str, **params: Any) -> Call:
    def call(harness: Harness, token: str, ident: str) -> str:
        url = f"{harness.served.url}/v1/{path.format(id=ident)}"
        headers = {"Authorization": f"Bearer {token}"}
        if path.endswith("/events"):
            with httpx.stream(method, url, headers=headers, params=params, timeout=30) as response:
                if response.status_code != 200:
                    response.read()
                    return rest_answer(response)
                last = [line for line in response.iter_lines() if line.startswith("event:")][-1]
                return "ok:" + ("finished" if last == "event: done" else "open")
        return rest_answer(httpx.request(method, url, headers=headers, params=params, timeout=30))

    return call


def mcp(tool: str, key: str | None, **arguments: Any) -> Call:
    def call(harness: Harness, token: str, ident: str) -> str:
        result = call_over_http(harness, token, tool, {**({key: ident} if key else {}), **arguments})
        text = text_of(result)
        if result.is_error:
            return text.removeprefix(f"Error executing tool {tool}: ").split(":", 1)[0]
        return f"ok:{(result.structured_content or {}).get('status', 'listed')}"

    return call


def finished(call: Call) -> Call:
    """A FOLLOW: an open stream of a finished request ends at once, with the request."""

    def wrapped(harness: Harness, token: str, ident: str) -> str:
        answer = call(harness, token, ident)
        return "ok:finished" if answer.startswith("ok:") and answer != "ok:open" else answer

    return wrapped


# How a client calls each action that names a request or batch, per way in.
BY_ID: dict[str, dict[Action, Call]] = {
    "rest": {
        Action.GET: rest("GET", "edits/{id}"),
        Action.CANCEL: rest("DELETE", "edits/{id}"),
        Action.WAIT: rest("GET", "edits/{id}", wait="true", timeout=1),
        Action.FOLLOW: finished(rest("GET", "edits/{id}/events")),
        Action.GET_BATCH: rest("GET", "batches/{id}"),
        Action.CANCEL_BATCH: rest("DELETE", "batches/{id}"),
    },
    "mcp": {
        Action.GET: mcp("get_edit_status", "edit_id"),
        Action.CANCEL: mcp("cancel_edit", "edit_id"),
        Action.WAIT: mcp("wait_for_edit", "edit_id", timeout_seconds=1),
        Action.FOLLOW: finished(mcp("wait_for_edit", "edit_id", timeout_seconds=1)),
        Action.GET_BATCH: mcp("get_batch", "batch_id"),
        Action.CANCEL_BATCH: mcp("cancel_batch", "batch_id"),
    },
}
WITHOUT_ID = {Action.SUBMIT, Action.SUBMIT_BATCH, Action.LIST}
"""Actions that name no existing request: the rule parity tests send their inputs through every way in."""
ROUTES = {"rest": rest_api.ACTIONS, "mcp": mcp_tools.ACTIONS}


def test_every_way_in_offers_every_action() -> None:
    for way, served in ROUTES.items():
        assert set(served) == set(Action), f"{way} does not offer {set(Action) - set(served)}"
        assert set(BY_ID[way]) | WITHOUT_ID == set(Action), way


def test_the_routes_and_tools_named_exist(start_processor: Callable[..., Harness]) -> None:
    harness = start_processor(rest=True)
    spec = httpx.get(f"{harness.served.url}/openapi.json").json()
    operations = {operation["operationId"] for path in spec["paths"].values() for operation in path.values()}
    for action, route in rest_api.ACTIONS.items():
        assert any(operation.startswith(f"{route}_v1_") for operation in operations), (action, route)

    async def tools() -> set[str]:
        token = harness.storage.token(uuid.uuid4())
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(streamable_http_client(f"{harness.served.url}/mcp", http_client=http)) as client,
        ):
            return {tool.name for tool in (await client.list_tools()).tools}

    assert set(mcp_tools.ACTIONS.values()) <= asyncio.run(tools())


# --- The same answers ---------------------------------------------------------------------------------


def insert_request(harness: Harness, user: uuid.UUID) -> uuid.UUID:
    # Its input is never uploaded: it waits (awaiting_image), and no worker takes it.
    return harness.insert(user, [f"{user}/{uuid.uuid4()}.png"])


def insert_batch(harness: Harness, user: uuid.UUID) -> uuid.UUID:
    with acting_as(harness.db, "authenticated", user) as conn:
        row = conn.execute(
            "insert into edit_batches (prompt, input_paths) values ('x', %s) returning id",
            ([f"{user}/{uuid.uuid4()}.png"],),
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def cancel_as_owner(harness: Harness, user: uuid.UUID, function: str, ident: uuid.UUID) -> None:
    with acting_as(harness.db, "authenticated", user) as conn:
        conn.execute(f"select public.{function}(%s)", (ident,))


# What each action answers about a request (or batch) that is not the caller's, and one finished.
EXPECTED: dict[str, dict[Action, str]] = {
    "unknown": dict.fromkeys(BY_ID["rest"], "not_found"),
    "another user's": dict.fromkeys(BY_ID["rest"], "not_found"),
    "finished": {
        Action.GET: "ok:canceled",
        Action.CANCEL: "already_finished",
        Action.WAIT: "ok:canceled",
        Action.FOLLOW: "ok:finished",
        Action.GET_BATCH: "ok:listed",
        Action.CANCEL_BATCH: "ok:listed",
    },
}


@pytest.fixture
def world(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> Iterator[tuple[Harness, str, dict[str, dict[str, uuid.UUID]]]]:
    harness = start_processor(rest=True)
    owner, other = make_user(), make_user()
    mine = {"request": insert_request(harness, owner), "batch": insert_batch(harness, owner)}
    cancel_as_owner(harness, owner, "cancel_edit_request", mine["request"])
    cancel_as_owner(harness, owner, "cancel_edit_batch", mine["batch"])
    theirs = {"request": insert_request(harness, other), "batch": insert_batch(harness, other)}
    unknown = {"request": uuid.uuid4(), "batch": uuid.uuid4()}
    yield (
        harness,
        harness.storage.token(owner),
        {"unknown": unknown, "another user's": theirs, "finished": mine},
    )


@pytest.mark.parametrize("situation", list(EXPECTED))
def test_every_way_in_gives_the_same_answer(
    world: tuple[Harness, str, dict[str, dict[str, uuid.UUID]]], situation: str
) -> None:
    harness, token, ids = world
    answers = {
        way: {
            action: call(
                harness, token, str(ids[situation]["batch" if "BATCH" in action.name else "request"])
            )
            for action, call in calls.items()
        }
        for way, calls in BY_ID.items()
    }
    assert answers == dict.fromkeys(BY_ID, EXPECTED[situation])
    # Nothing of another user's changed: their request still waits.
    other = ids["another user's"]["request"]
    assert harness.row(other)["status"] == "awaiting_image"


def test_a_list_holds_only_the_callers_requests(
    world: tuple[Harness, str, dict[str, dict[str, uuid.UUID]]],
) -> None:
    harness, token, ids = world
    listed_rest = httpx.get(
        f"{harness.served.url}/v1/edits", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ).json()
    listed_mcp = call_over_http(harness, token, "list_recent_edits", {}).structured_content["result"]
    mine = {str(ids["finished"]["request"])}
    # The batch's request is the owner's too.
    assert {row["id"] for row in listed_rest} >= mine
    assert {row["id"] for row in listed_rest} == {row["id"] for row in listed_mcp}
    assert str(ids["another user's"]["request"]) not in {row["id"] for row in listed_rest}
