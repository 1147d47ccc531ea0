"""The REST API end to end: a user's token, their rows, real uploads, the tiny model, one error shape."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from processor.devtools.tokens import mint_token
from processor.domain.ports.editor import Editor
from tests.conftest import GatedEditor, Harness, png_bytes, wait_for


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor(rest=True)


def auth(harness: Harness, user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.storage.token(user)}"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_submit_json_then_follow_to_success(api: Harness, make_user: Callable[[], uuid.UUID]) -> None:
    user = make_user()
    response = httpx.post(
        f"{api.served.url}/v1/edits",
        json={"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 2, "seed": 11},
        headers=auth(api, user),
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["status_url"].endswith(f"/v1/edits/{accepted['id']}")

    final = wait_for(
        lambda: (
            (r := httpx.get(accepted["status_url"], headers=auth(api, user)).json())["status"] == "succeeded"
            and r
        ),
        what="success",
    )
    assert final["progress"] == 1 and final["result"]["seed"] == 11
    image = httpx.get(final["output_url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    row = api.row(uuid.UUID(accepted["id"]))
    assert row["user_id"] == user and row["input_paths"][0].startswith(f"{user}/")
    # The server chose the id at insert, after the upload: the upload folder is not the id.
    assert accepted["id"] not in row["input_paths"][0]


def test_wait_returns_the_image_like_the_runpod_handler(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    response = httpx.post(
        f"{api.served.url}/v1/edits?wait=true&timeout=60",
        json={
            "prompt": "make it blue",
            "images": [b64(png_bytes()), b64(png_bytes((32, 64)))],
            "num_inference_steps": 2,
        },
        headers=auth(api, user),
        timeout=90,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.format == "PNG" and image.size == (body["result"]["width"], body["result"]["height"])


def test_multipart_upload(api: Harness, make_user: Callable[[], uuid.UUID]) -> None:
    user = make_user()
    response = httpx.post(
        f"{api.served.url}/v1/edits",
        data={"prompt": "make it blue", "num_inference_steps": "2"},
        files=[("image", ("a.png", png_bytes(), "image/png"))],
        headers=auth(api, user),
    )
    assert response.status_code == 202, response.text
    assert api.wait_status(uuid.UUID(response.json()["id"]), "succeeded", "failed")["status"] == "succeeded"


def test_events_stream_progress_until_done(api: Harness, make_user: Callable[[], uuid.UUID]) -> None:
    user = make_user()
    created = httpx.post(
        f"{api.served.url}/v1/edits",
        json={"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 30},
        headers=auth(api, user),
    ).json()
    events: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", created["events_url"], headers=auth(api, user), timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
    assert all(name == "progress" for name, _ in events[:-1])
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress)


def test_cancel_a_running_edit(
    start_processor: Callable[..., Harness], tiny_editor: Editor, make_user: Callable[[], uuid.UUID]
) -> None:
    gated = GatedEditor(tiny_editor)
    harness = start_processor(rest=True, editor=gated)
    user = make_user()
    created = httpx.post(
        f"{harness.served.url}/v1/edits",
        json={"prompt": "make it blue", "image": b64(png_bytes()), "num_inference_steps": 4},
        headers=auth(harness, user),
    ).json()
    wait_for(gated.reached.is_set, what="the edit to start")

    response = httpx.delete(f"{harness.served.url}/v1/edits/{created['id']}", headers=auth(harness, user))

    assert response.status_code == 200 and response.json()["status"] == "canceled"
    again = httpx.delete(f"{harness.served.url}/v1/edits/{created['id']}", headers=auth(harness, user))
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_finished"


def test_another_users_request_is_not_found(api: Harness, make_user: Callable[[], uuid.UUID]) -> None:
    alice, bob = make_user(), make_user()
    created = httpx.post(
        f"{api.served.url}/v1/edits",
        json={"prompt": "x", "image": b64(png_bytes()), "num_inference_steps": 2},
        headers=auth(api, alice),
    ).json()
    for method in ("GET", "DELETE"):
        response = httpx.request(method, f"{api.served.url}/v1/edits/{created['id']}", headers=auth(api, bob))
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "not_found", "message": "no such edit request"}}


@pytest.mark.parametrize(
    "make_header",
    [
        lambda h, u: {},
        lambda h, u: {"Authorization": "Bearer not-a-token"},
        lambda h, u: {"Authorization": f"Bearer {h.storage.token(u, expires_in=-5)}"},
        lambda h, u: {
            "Authorization": f"Bearer {mint_token('a-different-secret-of-32-characters!!', sub=u)}"
        },
        lambda h, u: {"Authorization": f"Bearer {h.storage.service_key}"},
        lambda h, u: {"Authorization": f"Bearer {h.storage.token(role='service_role')}"},
        lambda h, u: {"Authorization": f"Bearer {h.storage.token(role='anon')}"},
    ],
    ids=["missing", "garbage", "expired", "forged", "service-key", "service-role-jwt", "anon"],
)
def test_bad_tokens_are_refused(
    api: Harness, make_user: Callable[[], uuid.UUID], make_header: Callable[..., dict[str, str]]
) -> None:
    user = make_user()
    response = httpx.post(
        f"{api.served.url}/v1/edits",
        json={"prompt": "x", "image": b64(png_bytes())},
        headers=make_header(api, user),
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert api.db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}


@pytest.mark.parametrize(
    "body, code",
    [
        ({"prompt": "x", "image": "!!!not base64"}, "invalid_base64"),
        ({"prompt": "x", "image": b64(b"GIF89a not really")}, "unknown_format"),
        ({"prompt": "x", "image": b64(png_bytes()[:50])}, "truncated_image"),
        ({"prompt": "x", "width": 64}, "invalid_size"),
        # The same reason codes as every other way in (tests/test_rule_parity.py).
        ({"prompt": "x", "base": "plasma"}, "invalid_parameter"),
        ({"prompt": "x", "images": [b64(png_bytes())] * 4}, "too_many_images"),
        ({"prompt": "x", "image": b64(png_bytes()), "images": [b64(png_bytes())] * 3}, "too_many_images"),
        ({"prompt": "", "image": b64(png_bytes())}, "invalid_prompt"),
        ({"prompt": "x", "image": b64(png_bytes()), "num_inference_steps": 500}, "invalid_parameter"),
        ({"prompt": "x", "num_inference_steps": "40"}, "invalid_parameter"),
        (["not", "an", "object"], "invalid_request"),
    ],
)
def test_bad_input_gets_a_reason_and_stores_nothing(
    api: Harness, make_user: Callable[[], uuid.UUID], body: Any, code: str
) -> None:
    response = httpx.post(f"{api.served.url}/v1/edits", json=body, headers=auth(api, make_user()))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert api.db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}


def test_openapi_documents_both_bodies_and_the_error_shape(api: Harness) -> None:
    spec = httpx.get(f"{api.served.url}/openapi.json").json()
    create = spec["paths"]["/v1/edits"]["post"]
    assert set(create["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "ErrorResponse" in json.dumps(create["responses"]["401"])
    assert {"/v1/edits/{request_id}", "/v1/edits/{request_id}/events"} <= set(spec["paths"])
    # Every reference resolves inside the document (a dangling one breaks client generators).
    refs = set(re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(spec)))
    for ref in refs:
        node: Any = spec
        for part in ref.split("/"):
            assert isinstance(node, dict) and part in node, f"dangling $ref #/{ref}"
            node = node[part]


def test_numbers_the_database_cannot_hold_are_refused_with_a_reason(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    # Found by schemathesis: 1e-300 is within 0..20 but underflows the ``real`` column.
    body = {"prompt": "x", "image": b64(png_bytes()), "true_cfg_scale": 1e-300}
    response = httpx.post(f"{api.served.url}/v1/edits", json=body, headers=auth(api, make_user()))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_parameter"
