"""The processor's log set-up (processor/observability/logs.py): one set-up, no credential in any line."""

from __future__ import annotations

import base64
import io
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import cast

import httpx
import pytest

from processor.core.user_actions import UserActions
from processor.entrypoints.auth import TokenVerifier
from processor.entrypoints.mcp_tools import create_mcp_server
from processor.observability.logs import REDACTED, configure_logging
from tests.conftest import Harness, png_bytes, wait_for


def test_records_go_to_the_stderr_of_the_moment_not_the_one_at_set_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stream replaced and closed after set-up (a test runner's capture, a daemon's redirect) made
    # every later record a "--- Logging error --- I/O operation on closed file" instead of a line.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        at_setup = io.StringIO()
        monkeypatch.setattr(sys, "stderr", at_setup)
        configure_logging("info", "console")
        at_setup.close()
        now = io.StringIO()
        monkeypatch.setattr(sys, "stderr", now)
        logging.getLogger("processor.test").info("after the stream of the set-up closed")
        written = now.getvalue()
        assert "Logging error" not in written
        assert written.rstrip().endswith("after the stream of the set-up closed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


class Written:
    """What the log set-up wrote to stderr so far (pytest's capture: a stream patched in a fixture
    would be replaced again when the test starts)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self._seen = ""

    def getvalue(self) -> str:
        self._seen += self._capsys.readouterr().err
        return self._seen


@pytest.fixture
def captured_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Written]:
    """Everything the processor's log set-up writes, at DEBUG for every logger (libraries included)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quieted = {
        name: logging.getLogger(name).level for name in ("httpx", "httpcore", "uvicorn.access", "hpack")
    }
    try:
        configure_logging("debug", "json")
        for name in quieted:
            logging.getLogger(name).setLevel(logging.DEBUG)
        yield Written(capsys)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in quieted.items():
            logging.getLogger(name).setLevel(was)


SIGNED_URL = "http://127.0.0.1:1/storage/v1/object/sign/edit-outputs/u/r.png?token=eyJhbGciOiJIUzI1NiJ9.eyJ1cmwiOiJ4In0.c2ln"


@pytest.mark.parametrize(
    ("message", "args", "secret"),
    [
        ('HTTP Request: GET %s "HTTP/1.1 200 OK"', (SIGNED_URL,), "eyJhbGciOiJIUzI1NiJ9"),
        ("headers %r", ({"authorization": "Bearer abc.def.ghi"},), "abc.def.ghi"),
        ("sent Authorization: Basic dXNlcjpwYXNz", (), "dXNlcjpwYXNz"),
        ("key %s", ("sb_secret_0123456789abcdef",), "0123456789abcdef"),
        ("endpoint secret %s", ("whsec_c2VjcmV0IHNlY3JldA==",), "c2VjcmV0IHNlY3JldA"),
        ("callback %s", ("https://app.example/cb?x=1&access_token=opaque-value&y=2",), "opaque-value"),
    ],
)
def test_no_line_carries_a_credential(
    captured_logs: Written, message: str, args: tuple[object, ...], secret: str
) -> None:
    logging.getLogger("httpx").info(message, *args)
    written = captured_logs.getvalue()
    assert secret not in written
    assert REDACTED in written


def test_tracebacks_are_redacted_too(captured_logs: Written) -> None:
    try:
        raise RuntimeError(f"Server error '500' for url '{SIGNED_URL}'")
    except RuntimeError:
        logging.getLogger("processor.test").exception("download failed")
    written = captured_logs.getvalue()
    assert "download failed" in written and "RuntimeError" in written
    assert "eyJhbGciOiJIUzI1NiJ9" not in written


def test_what_is_not_a_credential_stays(captured_logs: Written) -> None:
    logging.getLogger("processor.test").info("claimed %s after %d attempts (status=queued)", "a1b2", 3)
    assert "claimed a1b2 after 3 attempts (status=queued)" in captured_logs.getvalue()


def test_the_mcp_server_leaves_the_logging_set_up_as_it_was(captured_logs: Written) -> None:
    # The MCP SDK's constructor calls logging.basicConfig with a Rich handler: in `dev`, which had
    # no handler, every library's INFO line went out through it, signed URLs included.
    root = logging.getLogger()
    before = root.handlers[:]
    root.handlers.clear()  # as `dev` was: nothing set up when the MCP server was built
    try:
        create_mcp_server(cast(UserActions, object()), cast(TokenVerifier, object()))
        assert root.handlers == []
    finally:
        root.handlers[:] = before
    create_mcp_server(cast(UserActions, object()), cast(TokenVerifier, object()))
    assert root.handlers == before


def test_every_line_of_a_rest_edit_is_free_of_tokens(
    captured_logs: Written, start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    api = start_processor(rest=True)
    user = make_user()
    token = api.storage.token(user)
    headers = {"Authorization": f"Bearer {token}"}
    accepted = httpx.post(
        f"{api.served.url}/v1/edits",
        json={
            "prompt": "make it blue",
            "image": base64.b64encode(png_bytes()).decode(),
            "num_inference_steps": 2,
        },
        headers=headers,
    )
    assert accepted.status_code == 202, accepted.text
    done = wait_for(
        lambda: (
            (r := httpx.get(accepted.json()["status_url"], headers=headers).json())["status"] == "succeeded"
            and r
        ),
        what="success",
    )
    signed = httpx.get(done["output_url"])  # httpx logs the request line, signed URL and all
    assert signed.status_code == 200
    written = captured_logs.getvalue()
    assert "/object/sign/" in written  # the signed URL's request was logged ...
    token_in_url = done["output_url"].partition("token=")[2]
    for secret in (token, token_in_url, api.settings.supabase_service_role_key.get_secret_value()):
        assert secret and secret not in written  # ... without its token
