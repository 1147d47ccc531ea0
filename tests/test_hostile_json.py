"""Bodies a JSON parser chokes on, and tokens of users who are gone: answers in the one error shape.

Issue 22 item 7: a 5,000-digit integer, 100,000-deep nesting and a lone surrogate in the prompt were
bare 500s with a traceback on ``POST /v1/edits`` and ``/v1/batches``, and a valid token of a user no
longer in ``auth.users`` a plain-text 500 from a foreign-key violation.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from processor.domain.reasons import ReasonCode
from tests.conftest import Harness, png_bytes

IMAGE = base64.b64encode(png_bytes()).decode()
HUGE_INTEGER = "9" * 5000
DEEP = "[" * 100_000 + "]" * 100_000


def members(*items: str) -> str:
    return "{" + ", ".join(items) + "}"


PROMPT = '"prompt": "make it blue"'
IMAGES = f'"images": ["{IMAGE}"]'
BODIES = {
    "huge-integer-seed": (members(PROMPT, f'"seed": {HUGE_INTEGER}', IMAGES), 400, ReasonCode.INVALID_JSON),
    "huge-integer-anywhere": (members(PROMPT, f'"x": {HUGE_INTEGER}'), 400, ReasonCode.INVALID_JSON),
    "deep-nesting": (members(PROMPT, f'"x": {DEEP}'), 400, ReasonCode.INVALID_JSON),
    "deep-nesting-whole": (DEEP, 400, ReasonCode.INVALID_JSON),
    "lone-surrogate-prompt": (
        members('"prompt": "make it \\ud800 blue"', IMAGES),
        422,
        ReasonCode.INVALID_PROMPT,
    ),
    "lone-low-surrogate-negative": (
        members(PROMPT, '"negative_prompt": "\\udfff"', IMAGES),
        422,
        ReasonCode.INVALID_PROMPT,
    ),
}


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor(rest=True)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body


@pytest.mark.parametrize("route", ["/v1/edits", "/v1/batches"])
@pytest.mark.parametrize("name", list(BODIES))
def test_bodies_a_parser_chokes_on_are_client_errors(
    api: Harness, make_user: Callable[[], uuid.UUID], route: str, name: str
) -> None:
    body, status, code = BODIES[name]
    headers = {
        "Authorization": f"Bearer {api.storage.token(make_user())}",
        "Content-Type": "application/json",
    }
    response = httpx.post(f"{api.served.url}{route}", content=body.encode(), headers=headers, timeout=60)
    assert_error(response, status, code)
    assert api.db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}


@pytest.mark.parametrize("route", ["/v1/edits", "/v1/batches"])
def test_a_deleted_users_token_is_refused_in_the_error_shape(api: Harness, route: str) -> None:
    gone = uuid.uuid4()  # never in auth.users: a user deleted while their token is still valid
    headers = {"Authorization": f"Bearer {api.storage.token(gone)}"}
    response = httpx.post(
        f"{api.served.url}{route}",
        json={"prompt": "make it blue", "images": [IMAGE]},
        headers=headers,
        timeout=60,
    )
    assert_error(response, 401, ReasonCode.UNAUTHORIZED)
    # Nothing of theirs stayed in Storage either.
    left = api.db.execute(
        "select count(*) as n from storage.objects where name like %s", (f"{gone}/%",)
    ).fetchone()
    assert left == {"n": 0}


def call_tool(api: Harness, token: str, tool: str, arguments: str) -> str:
    """The tool's answer to ``arguments`` (JSON text, sent as it is: a client library would not
    encode a lone surrogate): ``accepted``, or the reason code its error starts with."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    with httpx.Client(base_url=api.served.url, headers=headers, timeout=60) as http:
        hello = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        opened = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
        assert opened.status_code == 200, opened.text
        session = {"mcp-session-id": opened.headers["mcp-session-id"]}
        http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        call = f'{{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {{"name": "{tool}", "arguments": {arguments}}}}}'
        answer = http.post("/mcp", content=call.encode(), headers=session)
    assert answer.status_code < 500, answer.text
    data = [line.removeprefix("data: ") for line in answer.text.splitlines() if line.startswith("data: ")]
    message = json.loads(data[-1] if data else answer.text)
    if "error" in message:  # a JSON-RPC error: the arguments never reached the tool
        return str(message["error"]["code"])
    result = message["result"]
    if not result.get("isError"):
        return "accepted"
    text = "".join(item["text"] for item in result["content"] if item["type"] == "text")
    return text.removeprefix(f"Error executing tool {tool}: ").split(":", 1)[0]


MCP_CALLS = {
    "edit_image": f'"image_base64": "{IMAGE}", "timeout_seconds": 0',
    "submit_batch": f'"images_base64": ["{IMAGE}"]',
}


PARSE_ERROR = "-32700"
"""JSON-RPC's parse error: MCP's protocol layer refuses the message before any tool runs."""


@pytest.mark.parametrize("tool", list(MCP_CALLS))
def test_mcp_refuses_what_a_parser_chokes_on_and_a_deleted_user(
    api: Harness, make_user: Callable[[], uuid.UUID], tool: str
) -> None:
    token = api.storage.token(make_user())
    refused = {
        # The MCP SDK's parser (pydantic-core) refuses a lone surrogate and deep nesting as a parse
        # error; were it to pass them on, the rules would refuse them as REST does.
        '"prompt": "make it \\ud800 blue"': {PARSE_ERROR, ReasonCode.INVALID_PROMPT},
        f'{PROMPT}, "seed": {HUGE_INTEGER}': {PARSE_ERROR, ReasonCode.INVALID_PARAMETER},
        f'{PROMPT}, "loras": {DEEP}': {PARSE_ERROR, ReasonCode.INVALID_PARAMETER},
    }
    for fields, verdicts in refused.items():
        assert call_tool(api, token, tool, members(MCP_CALLS[tool], fields)) in verdicts, fields[:60]
    gone = uuid.uuid4()
    deleted = members(MCP_CALLS[tool], PROMPT)
    assert call_tool(api, api.storage.token(gone), tool, deleted) == ReasonCode.UNAUTHORIZED
    assert api.db.execute("select count(*) as n from edit_requests").fetchone() == {"n": 0}
    left = api.db.execute(
        "select count(*) as n from storage.objects where name like %s", (f"{gone}/%",)
    ).fetchone()
    assert left == {"n": 0}
