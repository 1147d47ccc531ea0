"""Secrets never reach a log line, an error body, metrics or a settings dump.

The processor runs with every secret set (service key, webhook secret, JWT secret, MCP
token, a database password) and is driven through its failure paths with logging at
DEBUG; then every captured log line, response body and printable view is searched.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable

import httpx
import pytest

from processor.devtools.tokens import mint_token
from processor.domain.errors import ConfigurationError
from processor.settings import load_settings
from tests.conftest import JWT_SECRET, SERVICE_KEY, WEBHOOK_SECRET, Harness, png_bytes

DATABASE_PASSWORD = "db-password-never-printed-4711"
MCP_TOKEN = "mcp-token-never-printed-0815"
SECRETS = (SERVICE_KEY, JWT_SECRET, WEBHOOK_SECRET, DATABASE_PASSWORD, MCP_TOKEN)


def with_password(database_url: str) -> str:
    # Trust authentication ignores the password, so the processor really connects with it.
    return database_url.replace("postgresql://postgres@", f"postgresql://postgres:{DATABASE_PASSWORD}@", 1)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret appears in {where}: {text[:300]}"


def test_secrets_stay_out_of_logs_and_answers(
    start_processor: Callable[..., Harness],
    database_url: str,
    make_user: Callable[[], uuid.UUID],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert database_url.startswith("postgresql://postgres@")
    caplog.set_level(logging.DEBUG)
    harness = start_processor(rest=True, database_url=with_password(database_url), mcp_access_token=MCP_TOKEN)
    url = harness.served.url
    user = make_user()
    bearer = {"Authorization": f"Bearer {harness.storage.token(user)}"}
    answers: list[httpx.Response] = [
        harness.webhook(uuid.uuid4(), secret="wrong"),
        httpx.post(
            f"{url}/webhooks/edit-requests",
            json={"type": "nope"},
            headers={"X-Webhook-Secret": WEBHOOK_SECRET},
        ),
        httpx.get(f"{url}/v1/edits/{uuid.uuid4()}"),
        httpx.get(f"{url}/v1/edits/{uuid.uuid4()}", headers={"Authorization": "Bearer not-a-jwt"}),
        httpx.get(
            f"{url}/v1/edits/{uuid.uuid4()}",
            headers={"Authorization": f"Bearer {mint_token('forged-secret-of-32-characters!!', sub=user)}"},
        ),
        httpx.get(
            f"{url}/v1/edits/{uuid.uuid4()}",
            headers={"Authorization": f"Bearer {harness.storage.token(user, expires_in=-60)}"},
        ),
        httpx.post(f"{url}/v1/edits", json={"prompt": "x", "image": "not base64"}, headers=bearer),
        httpx.post(
            f"{url}/v1/edits",
            json={"prompt": "x", "image": base64.b64encode(b"GIF89a").decode()},
            headers=bearer,
        ),
        httpx.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    ]
    # Failure paths inside the worker: Storage refusing, then an image that is not one.
    harness.storage.faults.fail_next(1, 403, method="GET")
    failed = harness.insert(user, [harness.upload(user, "a.png", png_bytes())])
    bad = harness.insert(user, [harness.upload(user, "b.png", b"not an image")])
    assert harness.wait_status(failed, "failed")["error"]
    assert harness.wait_status(bad, "failed")["error"]
    answers += [httpx.get(f"{url}/readyz"), httpx.get(f"{url}/metrics")]

    assert {answer.status_code for answer in answers[:9]} >= {401, 422}
    for answer in answers:
        assert_no_secret(answer.text, f"{answer.request.method} {answer.request.url.path}")
    for row in harness.db.execute("select error, result from edit_requests").fetchall():
        assert_no_secret(str(row), "a row")
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for record in caplog.records:
        formatted = logging.Formatter("%(message)s %(exc_text)s").format(record)
        assert_no_secret(formatted + repr(record.__dict__), f"the log line of {record.name}")
    assert_no_secret(repr(harness.settings), "repr(settings)")


def test_configuration_errors_do_not_echo_secrets(database_url: str) -> None:
    bad_url = with_password(database_url).replace("postgresql://", "mysql://")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(database_url=bad_url, webhook_secret=WEBHOOK_SECRET, lease_seconds=1)
    assert "DATABASE_URL" in str(caught.value) and "LEASE_SECONDS" in str(caught.value)
    error: BaseException | None = caught.value
    while error is not None:  # the whole chain: a traceback prints every link
        assert_no_secret(str(error), type(error).__name__)
        error = error.__cause__ or error.__context__
