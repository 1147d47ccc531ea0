"""Storage faults: transient ones are retried with back-off, 4xx never, and the cap is honoured."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from processor.adapters.supabase_storage import SupabaseObjectStorage
from processor.domain.errors import InvalidInput, ProcessorError, TransientError
from tests.conftest import StorageServer

BUCKET = "edit-inputs"
OBJECT = r"/object/edit-inputs/u/a\.png$"


def run(
    server: StorageServer, scenario: Callable[[SupabaseObjectStorage], Awaitable[Any]], **kwargs: Any
) -> Any:
    async def main() -> Any:
        adapter = server.adapter(**kwargs)
        await adapter.open()
        try:
            return await scenario(adapter)
        finally:
            await adapter.close()

    return asyncio.run(main())


@pytest.fixture
def stored(storage_server: StorageServer) -> StorageServer:
    async def put(storage: SupabaseObjectStorage) -> None:
        await storage.upload(BUCKET, "u/a.png", b"\x89PNG" + bytes(range(200)), content_type="image/png")

    run(storage_server, put)
    storage_server.faults.reset()
    return storage_server


def download(storage: SupabaseObjectStorage) -> Awaitable[bytes]:
    return storage.download(BUCKET, "u/a.png", max_bytes=10_000)


def test_5xx_twice_then_success(stored: StorageServer) -> None:
    stored.faults.fail_next(2, 503, method="GET", path=OBJECT)
    assert run(stored, download).startswith(b"\x89PNG")
    assert stored.faults.count("GET", OBJECT) == 3


def test_cut_off_body_is_retried(stored: StorageServer) -> None:
    stored.faults.cut_next_downloads(1)
    data = run(stored, download)
    assert len(data) == 204
    assert stored.faults.count("GET", OBJECT) == 2


# Both answer shapes: the real server (HTTP 400, the code in the body) and older servers or
# gateways (the code as the HTTP status). The adapter must read them alike.
SHAPES = pytest.mark.parametrize("http_status", [None, "same"], ids=["real-http-400", "older-http-status"])


def shaped(status: int, http_status: str | None) -> int | None:
    return status if http_status == "same" else None


@SHAPES
def test_4xx_is_not_retried(stored: StorageServer, http_status: str | None) -> None:
    stored.faults.fail_next(5, 403, method="GET", path=OBJECT, http_status=shaped(403, http_status))
    with pytest.raises(ProcessorError) as caught:
        run(stored, download)
    assert caught.value.reason == "storage_rejected"
    assert not caught.value.retryable
    assert stored.faults.count("GET", OBJECT) == 1
    assert stored.faults.hits[-1][2] == (403 if http_status else 400)


@SHAPES
def test_not_found_is_missing_object_in_either_shape(stored: StorageServer, http_status: str | None) -> None:
    stored.faults.fail_next(5, 404, method="GET", path=OBJECT, http_status=shaped(404, http_status))
    with pytest.raises(InvalidInput) as caught:
        run(stored, download)
    assert caught.value.reason == "missing_object"
    assert stored.faults.count("GET", OBJECT) == 1


@SHAPES
def test_a_rejected_upload_is_not_retried_in_either_shape(
    stored: StorageServer, http_status: str | None
) -> None:
    path = r"/object/edit-inputs/u/c\.png$"
    stored.faults.fail_next(5, 413, method="POST", path=path, http_status=shaped(413, http_status))

    async def upload(storage: SupabaseObjectStorage) -> None:
        await storage.upload(BUCKET, "u/c.png", b"\x89PNG c", content_type="image/png")

    with pytest.raises(ProcessorError) as caught:
        run(stored, upload)
    assert caught.value.reason == "storage_rejected" and "413" in str(caught.value)
    assert stored.faults.count("POST", path) == 1


def test_a_5xx_code_in_a_400_answer_is_retried(stored: StorageServer) -> None:
    # The real server's DatabaseConnectionLimit: HTTP 400, body statusCode "503". Worth retrying.
    stored.faults.fail_next(1, 503, method="GET", path=OBJECT, http_status=400)
    assert run(stored, download).startswith(b"\x89PNG")
    assert stored.faults.count("GET", OBJECT) == 2


def test_persistent_5xx_gives_up_after_the_configured_attempts(stored: StorageServer) -> None:
    stored.faults.fail_next(100, 500, method="GET", path=OBJECT)
    with pytest.raises(TransientError) as caught:
        run(stored, download, attempts=3)
    assert caught.value.reason == "storage_unavailable"
    assert stored.faults.count("GET", OBJECT) == 3


def test_a_stalled_answer_times_out_and_is_retried(stored: StorageServer) -> None:
    stored.faults.stall_next(1, 3.0)
    assert run(stored, download, timeout=1).startswith(b"\x89PNG")


def test_uploads_are_retried_too(stored: StorageServer) -> None:
    stored.faults.fail_next(1, 502, method="POST", path=r"/object/edit-inputs/u/b\.png$")

    async def upload(storage: SupabaseObjectStorage) -> bytes:
        await storage.upload(BUCKET, "u/b.png", b"\x89PNG b", content_type="image/png")
        return await storage.download(BUCKET, "u/b.png", max_bytes=100)

    assert run(stored, upload) == b"\x89PNG b"
