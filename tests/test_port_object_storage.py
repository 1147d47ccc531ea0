"""Conformance of the ``ObjectStorage`` port: the same behaviour from ``SupabaseObjectStorage`` on the
project's Storage stand-in (real HTTP, real ``storage.objects``) and from ``InMemoryObjectStorage``.

Each backend supplies the adapter and what only a test does: fetch a signed URL, and cause an
outage longer than the adapter's retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import pytest

from processor.adapters.supabase_storage import SupabaseObjectStorage
from processor.domain.errors import InvalidInput, TransientError
from processor.domain.ports.storage import ObjectStorage
from processor.testing import InMemoryObjectStorage
from tests.conftest import StorageServer

BUCKET = "edit-outputs"


class Backend(Protocol):
    storage: ObjectStorage

    def fetch(self, signed_url: str) -> tuple[bytes, str]:
        """What a client fetching the URL gets: the bytes and their content type."""
        ...

    def outage(self, calls: int) -> None:
        """The next ``calls`` requests fail as in an outage."""
        ...


@dataclass
class SupabaseBackend:
    storage: SupabaseObjectStorage
    server: StorageServer

    def fetch(self, signed_url: str) -> tuple[bytes, str]:
        response = httpx.get(signed_url)
        response.raise_for_status()
        return response.content, response.headers["content-type"]

    def outage(self, calls: int) -> None:
        self.server.faults.fail_next(calls, 503)


@dataclass
class MemoryBackend:
    storage: InMemoryObjectStorage

    def fetch(self, signed_url: str) -> tuple[bytes, str]:
        stored = self.storage.resolve(signed_url)
        return stored.data, stored.content_type

    def outage(self, calls: int) -> None:
        self.storage.faults.fail_next(calls)


@pytest.fixture(params=[pytest.param("supabase", marks=pytest.mark.service), "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "supabase":
        server: StorageServer = request.getfixturevalue("storage_server")
        yield SupabaseBackend(server.adapter(attempts=3), server)
    else:
        yield MemoryBackend(InMemoryObjectStorage())


def run(backend: Backend, scenario: Callable[[ObjectStorage], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        await backend.storage.open()
        try:
            return await scenario(backend.storage)
        finally:
            await backend.storage.close()

    return asyncio.run(main())


def test_round_trip_keeps_the_bytes(backend: Backend) -> None:
    async def scenario(storage: ObjectStorage) -> bytes:
        await storage.upload(BUCKET, "u/r.png", b"\x89PNG one", content_type="image/png")
        return await storage.download(BUCKET, "u/r.png", max_bytes=1024)

    assert run(backend, scenario) == b"\x89PNG one"


def test_upload_overwrites_an_existing_object(backend: Backend) -> None:
    async def scenario(storage: ObjectStorage) -> bytes:
        await storage.upload(BUCKET, "u/r.png", b"first", content_type="image/png")
        await storage.upload(BUCKET, "u/r.png", b"second", content_type="image/png")
        return await storage.download(BUCKET, "u/r.png", max_bytes=1024)

    assert run(backend, scenario) == b"second"


def test_missing_object_is_invalid_input(backend: Backend) -> None:
    async def scenario(storage: ObjectStorage) -> bytes:
        return await storage.download(BUCKET, "u/nothing.png", max_bytes=1024)

    with pytest.raises(InvalidInput) as caught:
        run(backend, scenario)
    assert caught.value.reason == "missing_object"


def test_object_over_the_cap_is_refused(backend: Backend) -> None:
    async def scenario(storage: ObjectStorage) -> list[Any]:
        await storage.upload(BUCKET, "u/big.png", b"x" * 2048, content_type="image/png")
        exact = await storage.download(BUCKET, "u/big.png", max_bytes=2048)
        try:
            await storage.download(BUCKET, "u/big.png", max_bytes=1024)
        except InvalidInput as exc:
            return [len(exact), exc.reason]
        return [len(exact), None]

    assert run(backend, scenario) == [2048, "too_many_bytes"]


def test_signed_url_serves_the_object(backend: Backend) -> None:
    async def scenario(storage: ObjectStorage) -> str:
        await storage.upload(BUCKET, "u/s.png", b"\x89PNG signed", content_type="image/png")
        return await storage.signed_url(BUCKET, "u/s.png", expires_in=60)

    data, content_type = backend.fetch(run(backend, scenario))
    assert data == b"\x89PNG signed"
    assert content_type.startswith("image/png")


def test_signing_a_missing_object_is_invalid_input(backend: Backend) -> None:
    async def scenario(storage: ObjectStorage) -> str:
        return await storage.signed_url(BUCKET, "u/nothing.png", expires_in=60)

    with pytest.raises(InvalidInput) as caught:
        run(backend, scenario)
    assert caught.value.reason == "missing_object"


def test_a_short_fault_is_retried_and_a_long_one_is_transient(backend: Backend) -> None:
    """The real adapter retries inside (3 attempts here); the stand-in fails exactly the calls it is told to."""
    short = 2 if isinstance(backend, SupabaseBackend) else 0

    async def scenario(storage: ObjectStorage) -> list[Any]:
        await storage.upload(BUCKET, "u/f.png", b"data", content_type="image/png")
        backend.outage(short)
        survived = await storage.download(BUCKET, "u/f.png", max_bytes=1024)
        backend.outage(10)
        try:
            await storage.download(BUCKET, "u/f.png", max_bytes=1024)
        except TransientError as exc:
            return [survived, exc.reason]
        return [survived, None]

    assert run(backend, scenario) == [b"data", "storage_unavailable"]


def test_bulk_delete_deletes_exact_names_and_reports_them(backend: Backend) -> None:
    """``prefixes`` are exact names on the real server (``whereIn name``): a folder name deletes nothing."""

    async def scenario(storage: ObjectStorage) -> list[Any]:
        for name in ("u/a.png", "u/b.png", "u/keep.png"):
            await storage.upload(BUCKET, name, b"x", content_type="image/png")
        folder = await storage.delete_many(BUCKET, ["u", "u/"])
        deleted = await storage.delete_many(BUCKET, ["u/a.png", "u/b.png", "u/a.png"])
        again = await storage.delete_many(BUCKET, ["u/a.png", "u/never.png"])
        kept = await storage.download(BUCKET, "u/keep.png", max_bytes=1024)
        try:
            await storage.download(BUCKET, "u/a.png", max_bytes=1024)
        except InvalidInput as exc:
            return [folder, sorted(deleted), again, kept, exc.reason]
        return [folder, sorted(deleted), again, kept, None]

    assert run(backend, scenario) == [[], ["u/a.png", "u/b.png"], [], b"x", "missing_object"]


def test_bulk_delete_of_nothing_is_no_call(backend: Backend) -> None:
    async def scenario(storage: ObjectStorage) -> list[str]:
        return await storage.delete_many(BUCKET, [])

    assert run(backend, scenario) == []


def test_bulk_delete_outage_is_transient_and_deletes_nothing(backend: Backend) -> None:
    every_attempt = 3 if isinstance(backend, SupabaseBackend) else 1

    async def scenario(storage: ObjectStorage) -> list[Any]:
        await storage.upload(BUCKET, "u/d.png", b"data", content_type="image/png")
        backend.outage(every_attempt)
        try:
            await storage.delete_many(BUCKET, ["u/d.png"])
        except TransientError as exc:
            reason = exc.reason
        else:
            reason = None
        return [reason, await storage.download(BUCKET, "u/d.png", max_bytes=1024)]

    assert run(backend, scenario) == ["storage_unavailable", b"data"]
