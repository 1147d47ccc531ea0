"""One error shape everywhere: ``{"error": {"code", "message"}}`` from every route of the app, known or
not, and ``Retry-After`` on every 429."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from processor.domain.reasons import ReasonCode
from processor.domain.rules import TOO_MANY_WAITS_RETRY_SECONDS, WAITS_PER_USER
from tests.conftest import Harness


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor(rest=True)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code and body["error"]["message"], body


@pytest.mark.parametrize(
    "method, path, status, code",
    [
        ("GET", "/no/such/route", 404, ReasonCode.NOT_FOUND),
        ("GET", "/v1/nothing-here", 404, ReasonCode.NOT_FOUND),
        ("POST", "/mcp/not-the-endpoint", 404, ReasonCode.NOT_FOUND),
        ("PUT", "/v1/edits", 405, ReasonCode.METHOD_NOT_ALLOWED),
        ("DELETE", "/healthz", 405, ReasonCode.METHOD_NOT_ALLOWED),
        ("GET", "/webhooks/edit-requests", 405, ReasonCode.METHOD_NOT_ALLOWED),
        ("POST", "/webhooks/edit-requests", 401, ReasonCode.UNAUTHORIZED),
        ("GET", "/metrics", 401, ReasonCode.UNAUTHORIZED),
        ("GET", "/v1/edits/not-a-uuid", 422, ReasonCode.INVALID_REQUEST),
    ],
)
def test_every_route_answers_errors_in_the_one_shape(
    api: Harness, method: str, path: str, status: int, code: str
) -> None:
    headers = {"Authorization": f"Bearer {api.storage.token(uuid.uuid4())}"}
    response = httpx.request(method, f"{api.served.url}{path}", headers=headers)
    assert_error(response, status, code)
    if status == 405:
        assert response.headers["allow"]


def test_metrics_off_and_a_malformed_webhook_answer_in_the_one_shape(
    start_processor: Callable[..., Harness],
) -> None:
    harness = start_processor(metrics_token=None)
    assert_error(httpx.get(f"{harness.served.url}/metrics"), 404, ReasonCode.NOT_FOUND)
    malformed = httpx.post(
        f"{harness.served.url}/webhooks/edit-requests",
        json={"type": "nope"},
        headers={"X-Webhook-Secret": "webhook-secret-for-tests"},
    )
    assert_error(malformed, 422, ReasonCode.INVALID_REQUEST)
    # Without the REST API too: unknown routes are JSON.
    assert_error(httpx.get(f"{harness.served.url}/v1/edits"), 404, ReasonCode.NOT_FOUND)


def test_a_429_says_when_to_come_back(api: Harness, make_user: Callable[[], uuid.UUID]) -> None:
    user = make_user()
    headers = {"Authorization": f"Bearer {api.storage.token(user)}"}
    request_id = api.insert(user, [f"{user}/never-uploaded.png"])  # awaiting_image forever
    url = f"{api.served.url}/v1/edits/{request_id}/events"
    with httpx.Client(headers=headers, timeout=30) as client:
        streams = [client.stream("GET", url) for _ in range(WAITS_PER_USER)]
        try:
            lines = [stream.__enter__().iter_lines() for stream in streams]
            for line in lines:
                assert next(line).startswith("event: ")
            refused = client.get(url)
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
    assert_error(refused, 429, ReasonCode.TOO_MANY_WAITS)
    assert refused.headers["retry-after"] == str(TOO_MANY_WAITS_RETRY_SECONDS)
