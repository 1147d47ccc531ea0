"""``ObjectStorage`` over Supabase Storage, through supabase-py's async client.

Transient faults (timeouts, connection errors, cut-off bodies, 5xx) are retried with
exponential back-off and jitter; 4xx answers are not, since repeating them cannot help.
A missing object or one over the size cap is the request's fault (``InvalidInput``);
anything still failing after the last attempt is ``TransientError`` so the job is
retried later by the queue. The key is sent to Supabase only, never logged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from storage3.exceptions import StorageApiError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from processor.domain.errors import InvalidInput, ProcessorError, TransientError
from processor.domain.reasons import ReasonCode
from processor.domain.rules import STORAGE_DELETE_MAX_OBJECTS
from supabase import AsyncClient, AsyncClientOptions, acreate_client

log = logging.getLogger(__name__)

T = TypeVar("T")


def _status(exc: StorageApiError) -> int:
    try:
        return int(exc.status)
    except (TypeError, ValueError):
        return 500


def is_transient(exc: BaseException) -> bool:
    """Worth another try: network trouble, a timeout, a cut-off body, or a 5xx answer."""
    if isinstance(exc, StorageApiError):
        return _status(exc) >= 500
    return isinstance(exc, httpx.TransportError | httpx.TimeoutException)


class SupabaseObjectStorage:
    """Downloads inputs and uploads results; call ``open()`` before use and ``close()`` after."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 60.0,
        attempts: int = 4,
        backoff_initial: float = 0.25,
        backoff_max: float = 8.0,
    ) -> None:
        self._url = url
        self._key = key
        self._timeout = timeout
        self._attempts = attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._client: AsyncClient | None = None

    async def open(self) -> None:
        if self._client is None:
            self._client = await acreate_client(
                self._url, self._key, options=AsyncClientOptions(storage_client_timeout=int(self._timeout))
            )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.storage.__aexit__(None, None, None)  # closes its HTTP session

    def _bucket(self, bucket: str) -> Any:
        if self._client is None:
            raise RuntimeError("SupabaseObjectStorage.open() was not called")
        return self._client.storage.from_(bucket)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        def log_retry(state: RetryCallState) -> None:
            outcome = state.outcome.exception() if state.outcome else None
            log.warning("storage %s failed (attempt %d): %s; retrying", what, state.attempt_number, outcome)

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._attempts),
                wait=wait_exponential_jitter(initial=self._backoff_initial, max=self._backoff_max),
                retry=retry_if_exception(is_transient),
                before_sleep=log_retry,
                reraise=True,
            ):
                with attempt:
                    return await call()
        except StorageApiError as exc:
            raise _classify(what, exc) from exc
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise TransientError(
                f"storage {what} failed after {self._attempts} attempts: {type(exc).__name__}: {exc}",
                reason=ReasonCode.STORAGE_UNAVAILABLE,
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def download(self, bucket: str, path: str, *, max_bytes: int) -> bytes:
        return await self._retrying(
            f"download {bucket}/{path}", lambda: self._stream(bucket, path, max_bytes)
        )

    async def _stream(self, bucket: str, path: str, max_bytes: int) -> bytes:
        """One GET through supabase-py's own HTTP session, stopped as soon as it passes the cap,
        so an oversized object is never held in memory (storage3's ``download`` buffers it all)."""
        if self._client is None:
            raise RuntimeError("SupabaseObjectStorage.open() was not called")
        session = self._client.storage.session
        url = f"{self._url}/storage/v1/object/{bucket}/{quote(path)}"
        async with session.stream("GET", url) as response:
            if response.status_code >= 400:
                await response.aread()
                raise _api_error(response)
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise InvalidInput(
                    f"{bucket}/{path} has {declared} bytes, more than {max_bytes}",
                    reason=ReasonCode.TOO_MANY_BYTES,
                )
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise InvalidInput(
                        f"{bucket}/{path} has more than {max_bytes} bytes", reason=ReasonCode.TOO_MANY_BYTES
                    )
                chunks.append(chunk)
        return b"".join(chunks)

    async def upload(self, bucket: str, path: str, data: bytes, *, content_type: str) -> None:
        files = self._bucket(bucket)
        # "upsert" must be the string "true": it becomes the x-upsert header.
        options = {"content-type": content_type, "upsert": "true", "cache-control": "3600"}
        await self._retrying(f"upload {bucket}/{path}", lambda: files.upload(path, data, options))

    async def signed_url(self, bucket: str, path: str, *, expires_in: int) -> str:
        files = self._bucket(bucket)
        signed = await self._retrying(
            f"sign {bucket}/{path}", lambda: files.create_signed_url(path, expires_in)
        )
        return str(signed["signedURL"])

    async def delete_many(self, bucket: str, paths: Sequence[str]) -> list[str]:
        """Storage's bulk delete (``DELETE /object/{bucket}`` with ``{"prefixes": [...]}``): exact
        names despite the field's name; the answer lists the objects deleted, and names it does not
        hold (absent, hidden by RLS, kept by a database trigger) are left out with HTTP 200."""
        files = self._bucket(bucket)
        deleted: list[str] = []
        names = list(dict.fromkeys(paths))
        # The real server refuses more than 1,000 names per request where hard limits are on.
        for start in range(0, len(names), STORAGE_DELETE_MAX_OBJECTS):
            chunk = names[start : start + STORAGE_DELETE_MAX_OBJECTS]
            rows: list[dict[str, Any]] = await self._retrying(
                f"delete {len(chunk)} objects from {bucket}", functools.partial(files.remove, chunk)
            )
            deleted.extend(str(row["name"]) for row in rows)
        return deleted


def _api_error(response: httpx.Response) -> StorageApiError:
    """The error storage3 would raise for this answer (same parsing, same fallback).

    The real server (v1.x) answers HTTP 400 for every error below 500 and puts the real code
    only in the body's ``statusCode``; older servers answered with the code as the HTTP status.
    Reading the body covers both; a 5xx HTTP status (a gateway, an overloaded server) wins
    over the body, so it is always retried."""
    try:
        body = response.json()
        status = response.status_code if response.status_code >= 500 else body["statusCode"]
        return StorageApiError(body["message"], body["error"], status)
    except (KeyError, TypeError, ValueError):
        return StorageApiError(
            f"Unable to parse error message: {response.text}", "InternalError", response.status_code
        )


def _classify(what: str, exc: StorageApiError) -> ProcessorError:
    status = _status(exc)
    if status == 404:
        return InvalidInput(f"storage {what}: object not found", reason=ReasonCode.MISSING_OBJECT)
    if status >= 500:
        return TransientError(
            f"storage {what} failed: {status} {exc.message}", reason=ReasonCode.STORAGE_UNAVAILABLE
        )
    return ProcessorError(
        f"storage {what} refused: {status} {exc.code}: {exc.message}", reason=ReasonCode.STORAGE_REJECTED
    )
