"""``ObjectStorage`` in memory: bytes in a dict, the port's errors, signed URLs, injected faults.

A stand-in for Supabase Storage in tests, not a mock: it keeps objects, answers like the port
contract says (``InvalidInput('missing_object')``, ``InvalidInput('too_many_bytes')``, upsert),
and the same conformance tests run against it and the real adapter.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, quote, unquote, urlsplit

from processor.adapters.memory.clock import Clock, wall_clock
from processor.adapters.memory.faults import Faults
from processor.domain.errors import InvalidInput
from processor.domain.reasons import ReasonCode

SIGNED_URL_PREFIX = "memory://storage/"

StoredListener = Callable[[str, str], None]
"""Called with ``(bucket, path)`` after every upload (as Storage's ``storage.objects`` trigger fires)."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    data: bytes
    content_type: str


class InMemoryObjectStorage:
    """Objects by ``(bucket, path)``. ``faults.fail_next(n, "download")`` stands in for an outage."""

    def __init__(self, *, clock: Clock = wall_clock) -> None:
        self._clock = clock
        self._objects: dict[tuple[str, str], StoredObject] = {}
        self._lock = threading.Lock()
        self._opened = False
        self._listeners: list[StoredListener] = []
        self._signing_key = secrets.token_bytes(16)
        self.faults = Faults("storage_unavailable")
        self.keep: Callable[[str, str], bool] | None = None
        """When set, objects for which it answers True are never deleted (a live request's inputs)."""
        self.calls: list[tuple[str, str, str]] = []
        """``(operation, bucket, path)`` of every port call, faulted ones included."""

    # --- The port ---------------------------------------------------------------------------------
    async def open(self) -> None:
        self._opened = True

    async def close(self) -> None:
        self._opened = False

    async def download(self, bucket: str, path: str, *, max_bytes: int) -> bytes:
        self._call("download", bucket, path)
        stored = self.get(bucket, path)
        if stored is None:
            raise InvalidInput(
                f"storage download {bucket}/{path}: object not found", reason=ReasonCode.MISSING_OBJECT
            )
        if len(stored.data) > max_bytes:
            raise InvalidInput(
                f"{bucket}/{path} has {len(stored.data)} bytes, more than {max_bytes}",
                reason=ReasonCode.TOO_MANY_BYTES,
            )
        return stored.data

    async def upload(self, bucket: str, path: str, data: bytes, *, content_type: str) -> None:
        self._call("upload", bucket, path)
        self.put(bucket, path, data, content_type=content_type)

    async def signed_url(self, bucket: str, path: str, *, expires_in: int) -> str:
        self._call("sign", bucket, path)
        if self.get(bucket, path) is None:
            raise InvalidInput(
                f"storage sign {bucket}/{path}: object not found", reason=ReasonCode.MISSING_OBJECT
            )
        expires = int((self._clock() + timedelta(seconds=expires_in)).timestamp())
        token = self._sign(bucket, path, expires)
        return f"{SIGNED_URL_PREFIX}{quote(bucket)}/{quote(path)}?expires={expires}&token={token}"

    async def delete_many(self, bucket: str, paths: Sequence[str]) -> list[str]:
        """As Storage's bulk delete: exact names; absent ones are left out of the answer. A name
        ``keep`` refuses stays (as the database's trigger keeps inputs of live requests)."""
        self._call("delete", bucket, ",".join(paths))
        deleted = []
        with self._lock:
            for path in dict.fromkeys(paths):
                if (bucket, path) in self._objects and not (self.keep and self.keep(bucket, path)):
                    del self._objects[(bucket, path)]
                    deleted.append(path)
        return deleted

    # --- For tests ----------------------------------------------------------------------------------
    def put(self, bucket: str, path: str, data: bytes, *, content_type: str = "image/png") -> None:
        """Store an object (create or overwrite), as an app's upload would."""
        with self._lock:
            self._objects[(bucket, path)] = StoredObject(bytes(data), content_type)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(bucket, path)

    def get(self, bucket: str, path: str) -> StoredObject | None:
        with self._lock:
            return self._objects.get((bucket, path))

    def exists(self, bucket: str, path: str) -> bool:
        return self.get(bucket, path) is not None

    def paths(self, bucket: str) -> list[str]:
        with self._lock:
            return sorted(path for (b, path) in self._objects if b == bucket)

    def delete(self, bucket: str, path: str) -> bool:
        with self._lock:
            return self._objects.pop((bucket, path), None) is not None

    def resolve(self, url: str) -> StoredObject:
        """What fetching a ``signed_url`` serves; ``InvalidInput`` when forged, expired or gone."""
        parts = urlsplit(url)
        if not url.startswith(SIGNED_URL_PREFIX):
            raise InvalidInput(f"not a signed URL of this storage: {url}", reason=ReasonCode.STORAGE_REJECTED)
        bucket, _, path = parts.path.lstrip("/").partition("/")
        bucket, path = unquote(bucket), unquote(path)
        query = parse_qs(parts.query)
        expires = int(query.get("expires", ["0"])[0])
        if not hmac.compare_digest(query.get("token", [""])[0], self._sign(bucket, path, expires)):
            raise InvalidInput("the URL does not match its signature", reason=ReasonCode.STORAGE_REJECTED)
        if self._clock().timestamp() > expires:
            raise InvalidInput("the signed URL has expired", reason=ReasonCode.STORAGE_REJECTED)
        stored = self.get(bucket, path)
        if stored is None:
            raise InvalidInput(f"{bucket}/{path}: object not found", reason=ReasonCode.MISSING_OBJECT)
        return stored

    def on_stored(self, listener: StoredListener) -> Callable[[], None]:
        """Call ``listener(bucket, path)`` after each upload; returns a function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    # --- Internals ----------------------------------------------------------------------------------
    def _call(self, operation: str, bucket: str, path: str) -> None:
        if not self._opened:
            raise RuntimeError("InMemoryObjectStorage.open() was not called")
        with self._lock:
            self.calls.append((operation, bucket, path))
        self.faults.check(operation)

    def _sign(self, bucket: str, path: str, expires: int) -> str:
        message = f"{bucket}/{path}:{expires}".encode()
        return hmac.new(self._signing_key, message, "sha256").hexdigest()
