"""``webhook_endpoint_id`` through the REST API (JSON and multipart) and the MCP tool: the user's own
endpoint is recorded on the row; another user's, or a value that is no UUID, is refused with a reason."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from processor.domain.errors import InvalidInput
from processor.domain.params import options_from_mapping
from tests.conftest import Harness, acting_as, png_bytes
from tests.test_mcp_tools import call_over_http, text_of

Row = dict[str, Any]


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    harness = start_processor(rest=True)
    harness.db.execute(
        "update edit_webhook_settings set allow_http = true, allow_private_addresses = true, "
        "allowed_ports = '{443,80,9}'"
    )
    harness.db.execute("insert into edit_webhook_allowed_hosts (host) values ('127.0.0.1')")
    return harness


def endpoint_of(api: Harness, user: uuid.UUID) -> uuid.UUID:
    with acting_as(api.db, "authenticated", user) as conn:
        row = conn.execute(
            "insert into edit_webhook_endpoints (url) values ('http://127.0.0.1:9/hook') returning id"
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def auth(api: Harness, user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.storage.token(user)}"}


def body(**fields: Any) -> dict[str, Any]:
    return {
        "prompt": "make it blue",
        "image": base64.b64encode(png_bytes()).decode(),
        "num_inference_steps": 2,
        **fields,
    }


def test_rest_json_and_multipart_record_the_users_endpoint(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    endpoint = endpoint_of(api, user)
    as_json = httpx.post(
        f"{api.served.url}/v1/edits", json=body(webhook_endpoint_id=str(endpoint)), headers=auth(api, user)
    )
    multipart = httpx.post(
        f"{api.served.url}/v1/edits",
        data={"prompt": "make it blue", "num_inference_steps": "2", "webhook_endpoint_id": str(endpoint)},
        files={"image": ("in.png", png_bytes(), "image/png")},
        headers=auth(api, user),
    )
    for response in (as_json, multipart):
        assert response.status_code == 202, response.text
        assert api.row(uuid.UUID(response.json()["id"]))["webhook_endpoint_id"] == endpoint
    spec = httpx.get(f"{api.served.url}/openapi.json").json()
    multipart_schema = spec["paths"]["/v1/edits"]["post"]["requestBody"]["content"]["multipart/form-data"][
        "schema"
    ]
    assert "webhook_endpoint_id" in multipart_schema["properties"]


@pytest.mark.parametrize("whose", ["another users", "nobody's", "not a uuid"])
def test_rest_refuses_an_endpoint_that_is_not_the_users(
    api: Harness, make_user: Callable[[], uuid.UUID], whose: str
) -> None:
    user, other = make_user(), make_user()
    value = {"another users": str(endpoint_of(api, other)), "nobody's": str(uuid.uuid4()), "not a uuid": "x"}[
        whose
    ]
    response = httpx.post(
        f"{api.served.url}/v1/edits", json=body(webhook_endpoint_id=value), headers=auth(api, user)
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter"
    assert (
        "must be a UUID" if whose == "not a uuid" else "is not one of this request's owner's endpoints"
    ) in error["message"]
    assert api.db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}


def test_the_mcp_tool_records_the_users_endpoint_and_refuses_anothers(
    api: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    user, other = make_user(), make_user()
    mine, theirs = endpoint_of(api, user), endpoint_of(api, other)
    arguments = {"prompt": "make it blue", "image_base64": body()["image"], "num_inference_steps": 2}
    token = api.storage.token(user)

    refused = call_over_http(api, token, "edit_image", {**arguments, "webhook_endpoint_id": str(theirs)})
    assert refused.is_error and "invalid_parameter: request refused" in text_of(refused)
    accepted = call_over_http(api, token, "edit_image", {**arguments, "webhook_endpoint_id": str(mine)})
    assert not accepted.is_error, text_of(accepted)
    [row] = api.db.execute("select webhook_endpoint_id from edit_requests").fetchall()
    assert row["webhook_endpoint_id"] == mine


def test_the_mapping_reads_only_a_uuid() -> None:
    value = uuid.uuid4()
    assert options_from_mapping({"webhook_endpoint_id": str(value)}).webhook_endpoint_id == value
    assert options_from_mapping({}).webhook_endpoint_id is None
    assert options_from_mapping({"webhook_endpoint_id": None}).webhook_endpoint_id is None
    assert options_from_mapping({"webhook_endpoint_id": ""}).webhook_endpoint_id is None
    for bad in (5, "not-a-uuid", ["x"]):
        with pytest.raises(InvalidInput) as caught:
            options_from_mapping({"webhook_endpoint_id": bad})
        assert caught.value.reason == "invalid_parameter"
