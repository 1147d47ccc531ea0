"""Batches through the REST API (``/v1/batches``, JSON and multipart) and the MCP tools (``submit_batch``,
``get_batch``, ``cancel_batch``), end to end with a running processor and the tiny model."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from processor.domain.ports.editor import Editor
from tests.conftest import GatedEditor, Harness, png_bytes, wait_for
from tests.test_mcp_tools import call_over_http, text_of


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor(rest=True)


def auth(harness: Harness, user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.storage.token(user)}"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def batch_rows(harness: Harness) -> tuple[int, int]:
    row = harness.db.execute(
        "select (select count(*) from edit_batches) as b, (select count(*) from edit_requests) as r"
    ).fetchone()
    assert row is not None
    return int(row["b"]), int(row["r"])


def get_batch(harness: Harness, user: uuid.UUID, batch_id: str) -> dict[str, Any]:
    response = httpx.get(f"{harness.served.url}/v1/batches/{batch_id}", headers=auth(harness, user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_json_batch_runs_every_image_with_the_references(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    images = [b64(png_bytes(color=(index * 40, 10, 10))) for index in range(3)]
    response = httpx.post(
        f"{api.served.url}/v1/batches",
        json={
            "prompt": "make it blue",
            "images": images,
            "reference_images": [b64(png_bytes((32, 32)))],
            "num_inference_steps": 2,
            "seed": 5,
        },
        headers=auth(api, user),
        timeout=60,
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["requests"] == 3 and len(batch["items"]) == 3
    assert {item["batch_id"] for item in batch["items"]} == {batch["id"]}
    final = wait_for(
        lambda: (b := get_batch(api, user, batch["id"]))["finished"] == 3 and b, what="the batch to finish"
    )
    assert (final["succeeded"], final["progress"]) == (3, 1.0)
    rows = [api.row(uuid.UUID(item["id"])) for item in final["items"]]
    # One upload folder for the batch, a random one: the server chose the batch's id at insert, after it.
    folder = rows[0]["input_paths"][0].split("/")[1]
    assert folder != batch["id"] and uuid.UUID(folder).version == 4
    assert [row["input_paths"][0] for row in rows] == [f"{user}/{folder}/{i}.png" for i in range(3)]
    assert {row["input_paths"][1] for row in rows} == {f"{user}/{folder}/ref0.png"}
    assert {(str(row["batch_id"]), row["seed"], row["num_inference_steps"]) for row in rows} == {
        (batch["id"], 5, 2)
    }


def test_a_multipart_batch(api: Harness, make_user: Callable[[], uuid.UUID]) -> None:
    user = make_user()
    response = httpx.post(
        f"{api.served.url}/v1/batches",
        data={"prompt": "make it blue", "num_inference_steps": "2"},
        files=[("image", (f"{i}.png", png_bytes(), "image/png")) for i in range(2)],
        headers=auth(api, user),
        timeout=60,
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    final = wait_for(lambda: (b := get_batch(api, user, batch_id))["finished"] == 2 and b, what="finish")
    assert final["succeeded"] == 2


def test_object_paths_already_uploaded_make_a_batch(api: Harness, make_user: Callable[[], uuid.UUID]) -> None:
    user = make_user()
    paths = [api.upload(user, f"{i}.png", png_bytes()) for i in range(2)]
    response = httpx.post(
        f"{api.served.url}/v1/batches",
        json={"prompt": "make it blue", "object_paths": paths, "num_inference_steps": 2},
        headers=auth(api, user),
    )
    assert response.status_code == 202, response.text
    assert [item["input_paths"] for item in response.json()["items"]] == [[path] for path in paths]


def test_another_users_paths_are_refused_and_nothing_is_created(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    alice, bob = make_user(), make_user()
    path = api.upload(alice, "in.png", png_bytes())
    response = httpx.post(
        f"{api.served.url}/v1/batches",
        json={"prompt": "x", "images": [b64(png_bytes())], "reference_paths": [path]},
        headers=auth(api, bob),
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert batch_rows(api) == (0, 0)


def test_a_batch_over_the_in_flight_limit_is_429_and_creates_nothing(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    api.db.execute("insert into edit_user_limits (user_id, max_in_flight) values (%s, 2)", (user,))
    response = httpx.post(
        f"{api.served.url}/v1/batches",
        json={"prompt": "x", "images": [b64(png_bytes())] * 3, "num_inference_steps": 2},
        headers=auth(api, user),
    )
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "quota_exceeded"
    assert batch_rows(api) == (0, 0)


def test_delete_cancels_the_running_and_queued_requests(
    start_processor: Callable[..., Harness], tiny_editor: Editor, make_user: Callable[[], uuid.UUID]
) -> None:
    gated = GatedEditor(tiny_editor)
    harness = start_processor(rest=True, editor=gated)
    user = make_user()
    created = httpx.post(
        f"{harness.served.url}/v1/batches",
        json={"prompt": "x", "images": [b64(png_bytes())] * 3, "num_inference_steps": 4},
        headers=auth(harness, user),
    ).json()
    wait_for(gated.reached.is_set, what="the first edit to start")
    response = httpx.delete(f"{harness.served.url}/v1/batches/{created['id']}", headers=auth(harness, user))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["canceled_now"], body["canceled"], body["finished"], body["progress"]) == (3, 3, 3, 1.0)
    gated.release.set()
    again = httpx.delete(f"{harness.served.url}/v1/batches/{created['id']}", headers=auth(harness, user))
    assert again.json()["canceled_now"] == 0


def test_another_users_batch_is_not_found(api: Harness, make_user: Callable[[], uuid.UUID]) -> None:
    alice, bob = make_user(), make_user()
    created = httpx.post(
        f"{api.served.url}/v1/batches",
        json={"prompt": "x", "images": [b64(png_bytes())], "num_inference_steps": 2},
        headers=auth(api, alice),
    ).json()
    for method in ("GET", "DELETE"):
        response = httpx.request(
            method, f"{api.served.url}/v1/batches/{created['id']}", headers=auth(api, bob)
        )
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "not_found", "message": "no such batch"}}
    assert api.db.execute("select count(*) as n from edit_requests where status = 'canceled'").fetchone() == {
        "n": 0
    }


def test_mcp_submit_get_and_cancel_a_batch(
    start_processor: Callable[..., Harness], tiny_editor: Editor, make_user: Callable[[], uuid.UUID]
) -> None:
    gated = GatedEditor(tiny_editor)
    harness = start_processor(rest=True, editor=gated)
    user, other = make_user(), make_user()
    token = harness.storage.token(user)
    submitted = call_over_http(
        harness,
        token,
        "submit_batch",
        {"prompt": "x", "images_base64": [b64(png_bytes())] * 2, "num_inference_steps": 4},
    )
    assert not submitted.is_error, text_of(submitted)
    batch = submitted.structured_content
    assert batch["requests"] == 2 and len(batch["items"]) == 2
    wait_for(gated.reached.is_set, what="the first edit to start")
    status = call_over_http(harness, token, "get_batch", {"batch_id": batch["id"]})
    assert status.structured_content["processing"] == 1 and status.structured_content["queued"] == 1

    foreign = call_over_http(harness, harness.storage.token(other), "cancel_batch", {"batch_id": batch["id"]})
    assert foreign.is_error and "not_found" in text_of(foreign)
    canceled = call_over_http(harness, token, "cancel_batch", {"batch_id": batch["id"]})
    assert canceled.structured_content["canceled_now"] == 2
    gated.release.set()
    bad = call_over_http(harness, token, "get_batch", {"batch_id": "nope"})
    assert bad.is_error and "invalid_request" in text_of(bad)
