"""The Storage stand-in runs on developers' machines: no path climbs out of its root, and only the
service key switches faults on."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import StorageServer, png_bytes


@pytest.mark.parametrize(
    "name",
    [
        "{user}/%2e%2e/%2e%2e/%2e%2e/escape.png",
        "{user}/%2E%2E/escape.png",
        "{user}/%2e/a.png",
        "{user}/a/%2e%2e/%2e%2e/escape.png",
    ],
)
def test_dot_segments_are_refused_and_nothing_is_written_outside_the_root(
    storage_server: StorageServer, make_user: Callable[[], uuid.UUID], tmp_path: Path, name: str
) -> None:
    user = make_user()
    response = httpx.post(
        f"{storage_server.url}/storage/v1/object/edit-inputs/{name.format(user=user)}",
        headers={"Authorization": f"Bearer {storage_server.token(user)}"},
        files={"file": ("escape.png", png_bytes(), "image/png")},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "InvalidKey"
    root = tmp_path / "objects"
    outside = [path for path in tmp_path.rglob("*") if path.is_file() and root not in path.parents]
    assert not [path for path in outside if path.name.startswith("escape")], outside


def test_the_fault_switch_needs_the_service_key(
    storage_server: StorageServer, make_user: Callable[[], uuid.UUID]
) -> None:
    body = {"latency": 0.0}
    url = f"{storage_server.url}/__faults"
    assert httpx.post(url, json=body).status_code == 400
    user_answer = httpx.post(
        url, json=body, headers={"Authorization": f"Bearer {storage_server.token(make_user())}"}
    )
    assert user_answer.status_code == 400 and user_answer.json()["statusCode"] == "403", user_answer.text
    assert (
        httpx.post(
            url, json=body, headers={"Authorization": f"Bearer {storage_server.service_key}"}
        ).status_code
        == 200
    )
