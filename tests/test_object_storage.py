"""Conformance of the ``ObjectStorage`` port, through each adapter (today: Supabase Storage over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from processor.adapters.supabase_storage import SupabaseObjectStorage
from processor.domain.errors import InvalidInput
from processor.domain.ports import ObjectStorage
from tests.conftest import StorageServer

BUCKET = "edit-outputs"


@pytest.fixture(params=["supabase"])
def run_with_storage(request: pytest.FixtureRequest, storage_server: StorageServer) -> Callable[..., Any]:
    """Run ``scenario(storage)`` with an opened adapter inside one event loop."""

    def run(scenario: Callable[[ObjectStorage], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            adapter = SupabaseObjectStorage(
                storage_server.url, storage_server.service_key, backoff_initial=0.01
            )
            await adapter.open()
            try:
                return await scenario(adapter)
            finally:
                await adapter.close()

        return asyncio.run(main())

    return run


def test_round_trip_keeps_the_bytes(run_with_storage: Callable[..., Any]) -> None:
    async def scenario(storage: ObjectStorage) -> bytes:
        await storage.upload(BUCKET, "u/r.png", b"\x89PNG one", content_type="image/png")
        return await storage.download(BUCKET, "u/r.png", max_bytes=1024)

    assert run_with_storage(scenario) == b"\x89PNG one"


def test_upload_overwrites_an_existing_object(run_with_storage: Callable[..., Any]) -> None:
    async def scenario(storage: ObjectStorage) -> bytes:
        await storage.upload(BUCKET, "u/r.png", b"first", content_type="image/png")
        await storage.upload(BUCKET, "u/r.png", b"second", content_type="image/png")
        return await storage.download(BUCKET, "u/r.png", max_bytes=1024)

    assert run_with_storage(scenario) == b"second"


def test_missing_object_is_invalid_input(run_with_storage: Callable[..., Any]) -> None:
    async def scenario(storage: ObjectStorage) -> bytes:
        return await storage.download(BUCKET, "u/nothing.png", max_bytes=1024)

    with pytest.raises(InvalidInput) as caught:
        run_with_storage(scenario)
    assert caught.value.reason == "missing_object"


def test_object_over_the_cap_is_refused(run_with_storage: Callable[..., Any]) -> None:
    async def scenario(storage: ObjectStorage) -> bytes:
        await storage.upload(BUCKET, "u/big.png", b"x" * 2048, content_type="image/png")
        return await storage.download(BUCKET, "u/big.png", max_bytes=1024)

    with pytest.raises(InvalidInput) as caught:
        run_with_storage(scenario)
    assert caught.value.reason == "too_many_bytes"


def test_signed_url_serves_the_object(run_with_storage: Callable[..., Any]) -> None:
    import httpx

    async def scenario(storage: ObjectStorage) -> str:
        await storage.upload(BUCKET, "u/s.png", b"\x89PNG signed", content_type="image/png")
        return await storage.signed_url(BUCKET, "u/s.png", expires_in=60)

    url = run_with_storage(scenario)
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"\x89PNG signed"
    assert response.headers["content-type"].startswith("image/png")
