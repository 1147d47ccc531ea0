"""``POST /v1/edits`` reads at most what three images at the byte limit need, and refuses early."""

from __future__ import annotations

import base64
import socket
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from processor.domain.params import MAX_IMAGES
from processor.domain.rules import MULTIPART_MAX_FIELDS, edit_body_bytes
from tests.conftest import Harness, png_bytes

MAX_IMAGE_BYTES = 200_000  # small, so the limit is quick to cross


@pytest.fixture
def api(start_processor: Callable[..., Harness]) -> Harness:
    return start_processor(rest=True, max_image_bytes=MAX_IMAGE_BYTES)


@pytest.fixture
def headers(api: Harness, make_user: Callable[[], uuid.UUID]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.storage.token(make_user())}"}


LIMIT = edit_body_bytes(MAX_IMAGES, MAX_IMAGE_BYTES)


def status_for_head(url: str, headers: dict[str, str], content_length: int) -> str:
    parts = urlsplit(url)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {content_length}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as conn:
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        return conn.recv(4096).decode(errors="replace").split("\r\n", 1)[0]


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    api: Harness, headers: dict[str, str]
) -> None:
    status = status_for_head(
        f"{api.served.url}/v1/edits", {**headers, "Content-Type": "application/json"}, 300 * 1024 * 1024
    )
    assert status.startswith("HTTP/1.1 413"), status


def test_a_streamed_json_body_over_the_limit_is_cut_off_in_the_error_shape(
    api: Harness, headers: dict[str, str]
) -> None:
    def chunks() -> object:
        yield b'{"prompt": "x", "image": "'
        for _ in range(LIMIT // 65536 + 2):
            yield b"A" * 65536
        yield b'"}'

    response = httpx.post(
        f"{api.served.url}/v1/edits",
        content=chunks(),  # type: ignore[arg-type]
        headers={**headers, "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "body_too_large"


def test_a_multipart_body_with_a_thousand_fields_stops_at_the_field_limit(
    api: Harness, headers: dict[str, str]
) -> None:
    fields = {f"f{i}": "x" for i in range(1000)}
    image = [("image", ("a.png", png_bytes(), "image/png"))]  # a file makes httpx send multipart
    response = httpx.post(
        f"{api.served.url}/v1/edits", data={"prompt": "x", **fields}, files=image, headers=headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_multipart"
    assert str(MULTIPART_MAX_FIELDS) in response.json()["error"]["message"]


def test_four_images_are_too_many_images_and_more_stop_the_parser(
    api: Harness, headers: dict[str, str]
) -> None:
    image = png_bytes()
    four = [("image", (f"{i}.png", image, "image/png")) for i in range(MAX_IMAGES + 1)]
    response = httpx.post(f"{api.served.url}/v1/edits", data={"prompt": "x"}, files=four, headers=headers)
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_many_images"
    six = [("image", (f"{i}.png", image, "image/png")) for i in range(MAX_IMAGES + 3)]
    response = httpx.post(f"{api.served.url}/v1/edits", data={"prompt": "x"}, files=six, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_multipart"


def test_three_images_at_the_byte_limit_fit_in_json(api: Harness, headers: dict[str, str]) -> None:
    # Padding after IEND keeps each PNG valid at exactly the limit.
    image = png_bytes()
    image += b"\0" * (MAX_IMAGE_BYTES - len(image))
    body = {"prompt": "x", "images": [base64.b64encode(image).decode()] * MAX_IMAGES}
    response = httpx.post(f"{api.served.url}/v1/edits", json=body, headers=headers, timeout=60)
    assert response.status_code == 202, response.text
