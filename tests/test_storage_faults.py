"""Storage faults: transient ones are retried with back-off, 4xx never, and the cap is honoured."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from processor.adapters.supabase_storage import SupabaseObjectStorage
from processor.domain.errors import ProcessorError, TransientError
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


def test_4xx_is_not_retried(stored: StorageServer) -> None:
    stored.faults.fail_next(5, 403, method="GET", path=OBJECT)
    with pytest.raises(ProcessorError) as caught:
        run(stored, download)
    assert caught.value.reason == "storage_rejected"
    assert not caught.value.retryable
    assert stored.faults.count("GET", OBJECT) == 1


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
