"""The object storage port: Supabase Storage, as the worker, the ways in and retention need it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ObjectStorage(Protocol):
    """Supabase Storage, as the worker needs it."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def download(self, bucket: str, path: str, *, max_bytes: int) -> bytes:
        """The object's bytes. ``InvalidInput('missing_object')`` when absent,
        ``InvalidInput('too_many_bytes')`` past ``max_bytes``, ``TransientError`` on faults."""
        ...

    async def upload(self, bucket: str, path: str, data: bytes, *, content_type: str) -> None:
        """Create or overwrite (upsert) the object."""
        ...

    async def signed_url(self, bucket: str, path: str, *, expires_in: int) -> str: ...

    async def delete_many(self, bucket: str, paths: Sequence[str]) -> list[str]:
        """Delete these objects (exact names, not prefixes) and return the names deleted.

        Names Storage does not hold, or keeps (the database refused: a live request needs the
        object), are left out of the answer, never an error; ``TransientError`` on faults, in
        which case some may be deleted already (calling again is harmless)."""
        ...
