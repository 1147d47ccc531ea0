"""The webhook checks its secret before it reads a byte of the body, and reads at most a few KB."""

from __future__ import annotations

import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from processor.domain.rules import WEBHOOK_MAX_BODY_BYTES
from tests.conftest import WEBHOOK_SECRET, Harness


@pytest.fixture
def processor(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor()


def answer_to_headers_alone(url: str, headers: dict[str, str], content_length: int) -> str:
    """Send only the request head (announcing a large body), and return the status line the server sends."""
    parts = urlsplit(url)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {content_length}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        # An answer before the body is sent proves the server decided without reading it.
        return conn.recv(4096).decode(errors="replace").split("\r\n", 1)[0]


def test_a_malformed_body_without_the_secret_is_refused_as_unauthorized(processor: Harness) -> None:
    response = httpx.post(
        f"{processor.served.url}/webhooks/edit-requests",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 401, response.text


def test_a_huge_body_without_the_secret_is_refused_before_it_is_read(processor: Harness) -> None:
    status = answer_to_headers_alone(
        f"{processor.served.url}/webhooks/edit-requests",
        {"Content-Type": "application/json"},
        content_length=400 * 1024 * 1024,
    )
    assert status.startswith("HTTP/1.1 401"), status


def test_a_body_over_the_limit_with_the_secret_is_refused_before_it_is_read(processor: Harness) -> None:
    status = answer_to_headers_alone(
        f"{processor.served.url}/webhooks/edit-requests",
        {"Content-Type": "application/json", "X-Webhook-Secret": WEBHOOK_SECRET},
        content_length=WEBHOOK_MAX_BODY_BYTES + 1,
    )
    assert status.startswith("HTTP/1.1 413"), status


def test_a_streamed_body_over_the_limit_is_cut_off(processor: Harness) -> None:
    def chunks() -> object:
        # No Content-Length (chunked): the limit must hold while reading.
        for _ in range(WEBHOOK_MAX_BODY_BYTES // 1024 + 2):
            yield b" " * 1024

    response = httpx.post(
        f"{processor.served.url}/webhooks/edit-requests",
        content=chunks(),  # type: ignore[arg-type]
        headers={"Content-Type": "application/json", "X-Webhook-Secret": WEBHOOK_SECRET},
    )
    assert response.status_code == 413, response.text


def test_a_webhook_within_the_limit_still_wakes_the_worker(processor: Harness) -> None:
    import uuid

    assert processor.webhook(uuid.uuid4()).status_code == 202
