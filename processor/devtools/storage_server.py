"""A Supabase-Storage-compatible HTTP server for tests and the local one-command run.

It speaks the part of the Storage REST API that supabase-py (storage3) uses, keeps bytes
on disk, and writes ``storage.objects`` in the same PostgreSQL the way Supabase Storage
does, so triggers on ``storage.objects`` run for real. It never stands in for Supabase in
production.

Behaviour reproduced (observed against the real Storage server v1.70.6, docs/supabase-fidelity.md,
and read from its source, https://github.com/supabase/storage ``src/storage/uploader.ts``,
``src/storage/database/knex.ts``, ``src/internal/errors/codes.ts`` and ``storage-error.ts``):
- served under ``/storage/v1`` (the API gateway's prefix, stripped on the real platform);
- auth from ``apikey`` / ``Authorization: Bearer``: the service key (or a service_role JWT)
  is ``service_role``; a user JWT (HS256, the project's JWT secret) acts as its role and sub;
- an upload first runs the insert (or upsert) as the caller's role with
  ``request.jwt.claims`` set, in a transaction that is rolled back (the RLS check: storage
  triggers fire here too, and roll back); then stores the bytes; then commits
  ``INSERT ... ON CONFLICT (bucket_id, name) DO UPDATE`` (upserts) or a plain INSERT as the
  superuser with ``request.jwt.claims = {"role": "service_role"}``. ``owner``/``owner_id``
  are the JWT ``sub``, NULL for the service key, and a service-key upsert keeps the previous
  owner; ``metadata`` has Storage's keys, ``user_metadata`` is ``{}``;
- reads, lists, signs and deletes by users go through RLS (select/delete as the caller);
- bucket ``file_size_limit`` (``EntityTooLarge``) and ``allowed_mime_types``
  (``InvalidMimeType``); duplicate without upsert (``KeyAlreadyExists``); missing object, or one
  RLS hides (``NoSuchKey``); unknown bucket (``NoSuchBucket``); RLS refusals on write
  (``AccessDenied``); bad JWTs; tampered signed URLs (``InvalidJWT``);
- errors as the real server renders them: **HTTP 400 for every error below 500**, the real code
  only in the body, ``{"statusCode": "404", "code": "NoSuchKey", "error": "not_found",
  "message": "Object not found"}`` (storage3 and our adapter read the body's ``statusCode``);
- the bulk delete (``DELETE /object/{bucket}``): exact names, as the caller, 500 per transaction
  with ``storage.allow_delete_query`` set (SQL deletes are refused otherwise, as Storage's migration
  0055 does), the deleted rows in ``objectSchema``, Fastify's validation errors, the 1,000-name cap
  only with ``request_hard_limits``;
- downloads send ``cache-control``, ``last-modified``, ``etag``, ``accept-ranges`` and
  ``x-robots-tag`` as the real server does, and ``?download[=name]`` makes them attachments
  (``src/storage/renderer/renderer.ts``); ``/object/info`` returns the user metadata (``{}``).
Not covered: TUS/S3 uploads, image transforms, move/copy, public bucket caching, versions.

Faults for tests: added latency, 5xx answers, cut-off download bodies and stalls, set
in-process through ``Faults`` or over HTTP with ``POST /__faults``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import jwt
import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

PREFIX = "/storage/v1"
_VALID_NAME = re.compile(r"^[\w\-.'\s,!*&$@=;:+?/()]+$")


# --- Faults -------------------------------------------------------------------------------------------


@dataclass
class _FailRule:
    """Matching requests get ``status`` (a failure) or wait ``seconds`` after their work (a delay)."""

    remaining: int
    status: int
    method: str | None
    path: re.Pattern[str] | None
    seconds: float = 0.0
    http_status: int | None = None  # None: as the real server (400 below 500); else this status

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path.search(path) is not None
        )


@dataclass
class Faults:
    """Faults to inject; thread-safe, settable from tests in-process or over HTTP."""

    latency: float = 0.0
    _fail: list[_FailRule] = field(default_factory=list)
    _cut_downloads: int = 0
    _stalls: list[tuple[int, float]] = field(default_factory=list)
    _delays: list[_FailRule] = field(default_factory=list)
    hits: list[tuple[str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(
        self,
        count: int,
        status: int = 503,
        *,
        method: str | None = None,
        path: str | None = None,
        http_status: int | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with an error whose code is ``status``.

        The HTTP status is what the real server sends (400 below 500) unless ``http_status``
        names one: older servers (and gateways) answered with the code itself."""
        with self._lock:
            self._fail.append(
                _FailRule(count, status, method, re.compile(path) if path else None, http_status=http_status)
            )

    def cut_next_downloads(self, count: int) -> None:
        """Send the full Content-Length, then only half the body, then close."""
        with self._lock:
            self._cut_downloads += count

    def stall_next(self, count: int, seconds: float) -> None:
        """Hold the next ``count`` requests for ``seconds`` before answering."""
        with self._lock:
            self._stalls.append((count, seconds))

    def delay_answer_next(
        self, count: int, seconds: float, *, method: str | None = None, path: str | None = None
    ) -> None:
        """Do the work of the next ``count`` matching requests, then wait ``seconds`` before answering
        (the object is committed but the client does not know yet)."""
        with self._lock:
            self._delays.append(_FailRule(count, 200, method, re.compile(path) if path else None, seconds))

    def _take_delay(self, method: str, path: str) -> float:
        with self._lock:
            for rule in self._delays:
                if rule.remaining > 0 and rule.matches(method, path):
                    rule.remaining -= 1
                    return rule.seconds
        return 0.0

    def reset(self) -> None:
        with self._lock:
            self.latency = 0.0
            self._delays.clear()
            self._fail.clear()
            self._cut_downloads = 0
            self._stalls.clear()
            self.hits.clear()

    def configure(self, body: dict[str, Any]) -> None:
        """The ``POST /__faults`` body: ``{latency, fail: {count, status, method, path}, cut_downloads, stall: {count, seconds}, reset}``."""
        if body.get("reset"):
            self.reset()
        if "latency" in body:
            self.latency = float(body["latency"])
        if fail := body.get("fail"):
            self.fail_next(
                int(fail["count"]),
                int(fail.get("status", 503)),
                method=fail.get("method"),
                path=fail.get("path"),
                http_status=int(fail["http_status"]) if fail.get("http_status") else None,
            )
        if body.get("cut_downloads"):
            self.cut_next_downloads(int(body["cut_downloads"]))
        if stall := body.get("stall"):
            self.stall_next(int(stall["count"]), float(stall["seconds"]))
        if delay := body.get("delay_answer"):
            self.delay_answer_next(
                int(delay["count"]),
                float(delay["seconds"]),
                method=delay.get("method"),
                path=delay.get("path"),
            )

    def _take_failure(self, method: str, path: str) -> StorageError | None:
        with self._lock:
            for rule in self._fail:
                if rule.remaining > 0 and rule.matches(method, path):
                    rule.remaining -= 1
                    code = _FAULT_CODES.get(
                        rule.status, "InternalError" if rule.status >= 500 else "InvalidRequest"
                    )
                    return StorageError(rule.status, code, "injected fault", http_status=rule.http_status)
        return None

    def _take_cut(self) -> bool:
        with self._lock:
            if self._cut_downloads > 0:
                self._cut_downloads -= 1
                return True
        return False

    def _take_stall(self) -> float:
        with self._lock:
            for index, (count, seconds) in enumerate(self._stalls):
                if count > 0:
                    self._stalls[index] = (count - 1, seconds)
                    return seconds
        return 0.0

    def count(self, method: str, path_pattern: str) -> int:
        pattern = re.compile(path_pattern)
        with self._lock:
            return sum(1 for m, p, _ in self.hits if m == method and pattern.search(p))


# --- Errors and auth ------------------------------------------------------------------------------------

# Codes an injected fault carries, by its status, as the real server would name them.
_FAULT_CODES = {403: "AccessDenied", 404: "NoSuchKey", 409: "KeyAlreadyExists", 413: "EntityTooLarge"}


class StorageError(Exception):
    """An error answer in Storage's shape: ``status`` is the error's own code (the body's
    ``statusCode``); the HTTP status is 400 for all of them below 500, as on the real server
    (``userStatusCode``), unless ``http_status`` says otherwise (fault injection imitating an
    older server or a gateway)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error: str | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error = error or code  # the "backwards compatible" error string; the code when absent
        self.message = message
        self.http_status = http_status if http_status is not None else (status if status >= 500 else 400)

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"statusCode": str(self.status), "code": self.code, "error": self.error, "message": self.message},
            status_code=self.http_status,
        )


def _not_found() -> StorageError:
    return StorageError(404, "NoSuchKey", "Object not found", error="not_found")


def _no_such_bucket() -> StorageError:
    return StorageError(404, "NoSuchBucket", "Bucket not found", error="Bucket not found")


def _duplicate() -> StorageError:
    return StorageError(409, "KeyAlreadyExists", "The resource already exists", error="Duplicate")


def _rls_refused() -> StorageError:
    return StorageError(
        403, "AccessDenied", "new row violates row-level security policy", error="Unauthorized"
    )


@dataclass(frozen=True)
class Caller:
    """Who is asking: the Postgres role Storage would use, and the JWT claims."""

    role: str
    claims: dict[str, Any]

    @property
    def sub(self) -> str | None:
        sub = self.claims.get("sub")
        return str(sub) if sub else None

    @property
    def is_service(self) -> bool:
        return self.role == "service_role"


@dataclass
class StorageConfig:
    """What the server needs: the database, where bytes live, and the keys it accepts."""

    database_url: str
    root: Path
    service_key: str
    jwt_secret: str
    faults: Faults = field(default_factory=Faults)
    request_hard_limits: bool = False
    """``REQUEST_HARD_LIMITS_ENABLED``: refuse bulk deletes of more than 1,000 names (off by default)."""


def _caller(request: Request, config: StorageConfig) -> Caller:
    token = request.headers.get("authorization", "")
    token = token[7:] if token.lower().startswith("bearer ") else request.headers.get("apikey", "")
    if not token:
        raise StorageError(400, "InvalidRequest", "headers must have required property 'authorization'")
    if token == config.service_key:
        return Caller("service_role", {"role": "service_role"})
    # The real server refuses a JWT it cannot verify as AccessDenied (body statusCode 403,
    # error "Unauthorized") with jose's message; the HTTP status is still 400.
    try:
        claims = jwt.decode(token, config.jwt_secret, algorithms=["HS256"], options={"verify_aud": False})
    except jwt.ExpiredSignatureError as exc:
        raise StorageError(
            403, "AccessDenied", '"exp" claim timestamp check failed', error="Unauthorized"
        ) from exc
    except jwt.InvalidSignatureError as exc:
        raise StorageError(
            403, "AccessDenied", "signature verification failed", error="Unauthorized"
        ) from exc
    except jwt.InvalidTokenError as exc:
        raise StorageError(403, "AccessDenied", "Invalid Compact JWS", error="Unauthorized") from exc
    role = str(claims.get("role", "anon"))
    if role not in ("anon", "authenticated", "service_role"):
        raise StorageError(403, "AccessDenied", f"unknown role {role}", error="Unauthorized")
    return Caller(role, claims)


# --- Database -------------------------------------------------------------------------------------------


async def _as_caller(conn: psycopg.AsyncConnection[Any], caller: Caller) -> None:
    """Inside a transaction: act as the caller's role, as Storage's request scope does."""
    await conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(caller.claims),))
    await conn.execute("select set_config('request.jwt.claim.role', %s, true)", (caller.role,))
    await conn.execute("select set_config('request.jwt.claim.sub', %s, true)", (caller.sub or "",))
    await conn.execute(sql.SQL("set local role {}").format(sql.Identifier(caller.role)))


def _is_rls_violation(exc: psycopg.Error) -> bool:
    return exc.sqlstate == "42501"


class _Store:
    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
            config.database_url,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"row_factory": dict_row},
            check=AsyncConnectionPool.check_connection,
        )

    def blob_path(self, bucket: str, name: str, version: str) -> Path:
        # Names are checked for dot segments already; this keeps any other trick under the root too.
        root = self.config.root.resolve()
        path = (root / bucket / name / version).resolve()
        if not path.is_relative_to(root):
            raise StorageError(400, "InvalidKey", f"Invalid key: {bucket}/{name}")
        return path

    async def bucket(self, bucket_id: str) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("select * from storage.buckets where id = %s", (bucket_id,))
            ).fetchone()
        if row is None:
            raise _no_such_bucket()
        return row

    async def find(self, caller: Caller, bucket: str, name: str) -> dict[str, Any]:
        """The object row if it exists and the caller may read it (an unknown bucket is told
        apart first, as the real server does)."""
        await self.bucket(bucket)
        async with self.pool.connection() as conn, conn.transaction():
            if not caller.is_service:
                await _as_caller(conn, caller)
            row = await (
                await conn.execute(
                    "select id, name, version, metadata, user_metadata, created_at, updated_at, owner_id "
                    "from storage.objects "
                    "where bucket_id = %s and name = %s",
                    (bucket, name),
                )
            ).fetchone()
        if row is None:
            raise _not_found()
        return row

    async def upload(
        self,
        caller: Caller,
        bucket: str,
        name: str,
        data: bytes,
        mimetype: str,
        cache_control: str,
        upsert: bool,
    ) -> dict[str, Any]:
        row_bucket = await self.bucket(bucket)
        limit = row_bucket.get("file_size_limit")
        if limit is not None and len(data) > limit:
            raise StorageError(
                413,
                "EntityTooLarge",
                "The object exceeded the maximum allowed size",
                error="Payload too large",
            )
        allowed = row_bucket.get("allowed_mime_types")
        if allowed and mimetype.split(";")[0].strip() not in allowed:
            raise StorageError(
                415, "InvalidMimeType", f"mime type {mimetype} is not supported", error="invalid_mime_type"
            )

        version = str(uuid.uuid4())
        owner = caller.sub if not caller.is_service else None
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        metadata = {
            "eTag": etag,
            "size": len(data),
            "mimetype": mimetype,
            "cacheControl": f"max-age={cache_control}" if cache_control.isdigit() else cache_control,
            "lastModified": formatdate(usegmt=True),
            "contentLength": len(data),
            "httpStatusCode": 200,
        }
        insert = (
            "insert into storage.objects (bucket_id, name, owner, owner_id, metadata, user_metadata, version) "
            "values (%s, %s, %s, %s, %s, '{}'::jsonb, %s)"
        )
        # The real server leaves the owner out of the merge when the caller has none (the
        # service key), so a service-key upsert over a user's object keeps the user as owner.
        upsert_tail = (
            " on conflict (bucket_id, name) do update set metadata = excluded.metadata, version = excluded.version,"
            " user_metadata = excluded.user_metadata,"
            " owner = coalesce(excluded.owner, storage.objects.owner),"
            " owner_id = coalesce(excluded.owner_id, storage.objects.owner_id), updated_at = now()"
        )
        statement = insert + (upsert_tail if upsert else "") + " returning id"
        params = (bucket, name, owner, owner, Jsonb(metadata), version)

        # 1. The permission check: the same statement as the caller, rolled back.
        async with self.pool.connection() as conn:
            try:
                async with conn.transaction(force_rollback=True):
                    await _as_caller(conn, caller)
                    await conn.execute(statement, params)
            except psycopg.errors.UniqueViolation as exc:
                raise _duplicate() from exc
            except psycopg.Error as exc:
                if _is_rls_violation(exc):
                    raise _rls_refused() from exc
                raise
        # 2. The bytes.
        blob = self.blob_path(bucket, name, version)
        await anyio.to_thread.run_sync(_write_file, blob, data)
        # 3. The committed write, as Storage's superuser connection in a service_role scope.
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "select set_config('request.jwt.claims', %s, true)", ('{"role":"service_role"}',)
            )
            try:
                row = await (await conn.execute(statement, params)).fetchone()
            except psycopg.errors.UniqueViolation as exc:
                raise _duplicate() from exc
        assert row is not None
        return {"Id": str(row["id"]), "Key": f"{bucket}/{name}"}

    async def read(self, caller: Caller, bucket: str, name: str) -> tuple[bytes, dict[str, Any]]:
        row = await self.find(caller, bucket, name)
        if not row["version"]:
            raise _not_found()  # a row without stored bytes: the backend has no such key
        blob = self.blob_path(bucket, name, row["version"])
        try:
            data = await anyio.to_thread.run_sync(blob.read_bytes)
        except FileNotFoundError as exc:
            raise _not_found() from exc
        metadata = dict(row["metadata"] or {})
        metadata.setdefault("lastModified", formatdate(row["updated_at"].timestamp(), usegmt=True))
        return data, metadata

    async def remove(self, caller: Caller, bucket: str, names: list[str]) -> list[dict[str, Any]]:
        """The bulk delete as v1.70's ``ObjectStorage.deleteObjects``: exact names (``whereIn``),
        in transactions of 500 names, as the caller (RLS hides what it may not delete), with
        ``storage.allow_delete_query`` set as Storage's request scope does; the rows the database
        deleted are returned, then their files removed. No bucket check: an unknown bucket, a
        missing name and a name RLS or a trigger keeps are all just absent from the answer."""
        deleted: list[dict[str, Any]] = []
        for start in range(0, len(names), _DELETE_BATCH):
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute("select set_config('storage.allow_delete_query', 'true', true)")
                if not caller.is_service:
                    await _as_caller(conn, caller)
                rows = await (
                    await conn.execute(
                        "delete from storage.objects where bucket_id = %s and name = any(%s) returning *",
                        (bucket, names[start : start + _DELETE_BATCH]),
                    )
                ).fetchall()
                for row in rows:
                    if row["version"]:
                        self.blob_path(bucket, row["name"], row["version"]).unlink(missing_ok=True)
            deleted.extend(_object_body(row) for row in rows)
        return deleted

    async def list(self, caller: Caller, bucket: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        prefix = str(body.get("prefix") or "").strip("/")
        like = f"{prefix}/%" if prefix else "%"
        search = str(body.get("search") or "")
        async with self.pool.connection() as conn, conn.transaction():
            if not caller.is_service:
                await _as_caller(conn, caller)
            rows = await (
                await conn.execute(
                    "select id, name, metadata, created_at, updated_at, last_accessed_at from storage.objects "
                    "where bucket_id = %s and name like %s order by name",
                    (bucket, like),
                )
            ).fetchall()
        entries: dict[str, dict[str, Any]] = {}
        for row in rows:
            rest = row["name"][len(prefix) + 1 :] if prefix else row["name"]
            head, _, tail = rest.partition("/")
            if search and search not in head:
                continue
            if tail:  # a folder, shown once with null id, as Storage does
                entries.setdefault(head, {"name": head, "id": None, "metadata": None})
            else:
                entries[head] = {
                    "name": head,
                    "id": str(row["id"]),
                    "metadata": row["metadata"],
                    "created_at": row["created_at"].isoformat(),
                    "updated_at": row["updated_at"].isoformat(),
                    "last_accessed_at": row["last_accessed_at"].isoformat(),
                }
        offset = int(body.get("offset", 0))
        limit = int(body.get("limit", 100))
        return list(entries.values())[offset : offset + limit]


_DELETE_BATCH = 500  # MAX_OBJECTS_PER_DELETE_BATCH: one transaction per 500 names
DELETE_OBJECTS_LIMIT = 1000  # MAX_OBJECTS_PER_REQUEST, enforced only with REQUEST_HARD_LIMITS_ENABLED


def _iso(value: Any) -> str | None:
    # fast-json-stringify writes a Date as toISOString(): UTC, milliseconds, "Z".
    if value is None:
        return None
    return str(value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"))


def _object_body(row: dict[str, Any]) -> dict[str, Any]:
    """A ``storage.objects`` row as the real server serialises it with ``objectSchema``: only its
    properties; ``owner``, ``owner_id`` and ``version`` are plain strings there, so NULL becomes
    ``""`` (fast-json-stringify's ``asString(null)``); the nullable ones stay null."""
    return {
        "name": row["name"],
        "bucket_id": row["bucket_id"],
        "owner": str(row["owner"]) if row["owner"] is not None else "",
        "owner_id": row["owner_id"] or "",
        "version": row["version"] or "",
        "id": str(row["id"]) if row["id"] is not None else None,
        "updated_at": _iso(row["updated_at"]),
        "created_at": _iso(row["created_at"]),
        "last_accessed_at": _iso(row["last_accessed_at"]),
        "metadata": row["metadata"],
        "user_metadata": row["user_metadata"],
    }


def _validation_error(message: str) -> StorageError:
    # Fastify's schema validation error as Storage's error handler renders it: HTTP 400,
    # error "Error" (the formatter's plain Error), code InvalidRequest (ERROR_CODE_MAP).
    return StorageError(400, "InvalidRequest", message, error="Error")


def _prefixes(body: Any) -> list[str]:
    """``deleteObjectsBodySchema`` under Fastify's Ajv (``coerceTypes: 'array'``): an object with
    ``prefixes``, an array of at least one string; a lone scalar becomes a one-item array."""
    if not isinstance(body, dict):
        raise _validation_error("body must be object")
    if "prefixes" not in body:
        raise _validation_error("body must have required property 'prefixes'")
    prefixes = body["prefixes"]
    if isinstance(prefixes, str | int | float) and not isinstance(prefixes, bool):
        prefixes = [prefixes]
    if not isinstance(prefixes, list):
        raise _validation_error("body/prefixes must be array")
    if not prefixes:
        raise _validation_error("body/prefixes must NOT have fewer than 1 items")
    for index, item in enumerate(prefixes):
        if isinstance(item, dict | list) or item is None:
            raise _validation_error(f"body/prefixes/{index} must be string")
    return [item if isinstance(item, str) else json.dumps(item) for item in prefixes]


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _object_name(raw: str) -> str:
    # "." and ".." segments (also sent as %2e%2e, which arrives decoded) would climb out of the
    # bucket's folder on disk: refused, as the object names apps use never contain them.
    if (
        not raw
        or raw.startswith("/")
        or "//" in raw
        or not _VALID_NAME.match(raw)
        or any(segment in (".", "..") for segment in raw.split("/"))
    ):
        raise StorageError(400, "InvalidKey", f"Invalid key: {raw}")
    return raw


# --- The app --------------------------------------------------------------------------------------------


def create_storage_app(  # noqa: C901 - one small closure per route
    config: StorageConfig, *, beside: Sequence[BaseRoute] = ()
) -> Starlette:
    """The Storage-compatible ASGI app, mounted under ``/storage/v1``; ``beside``: more of the platform
    at the same address (``edit-processor dev`` mounts its Auth stand-in at ``/auth/v1``)."""
    store = _Store(config)
    faults = config.faults

    async def upload(request: Request) -> Response:
        caller = _caller(request, config)
        bucket = request.path_params["bucket"]
        name = _object_name(request.path_params["name"])
        upsert = request.method == "PUT" or request.headers.get("x-upsert", "").lower() == "true"
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form()
            part = form.get("file")
            if part is None or isinstance(part, str):
                raise StorageError(400, "InvalidRequest", "No content provided")
            data = await part.read()
            mimetype = part.content_type or "application/octet-stream"
            cache_control = str(form.get("cacheControl") or "3600")
        else:
            data = await request.body()
            mimetype = content_type or "application/octet-stream"
            cache_control = request.headers.get("cache-control", "3600")
        return JSONResponse(await store.upload(caller, bucket, name, data, mimetype, cache_control, upsert))

    async def download(request: Request) -> Response:
        caller = _caller(request, config)
        data, metadata = await store.read(caller, request.path_params["bucket"], request.path_params["name"])
        return _object_response(data, metadata, request.query_params.get("download"))

    def _object_response(data: bytes, metadata: dict[str, Any], download: str | None = None) -> Response:
        # The headers the real server sends with an object (research §11).
        headers = {
            "content-length": str(len(data)),
            "etag": str(metadata.get("eTag", "")),
            "cache-control": str(metadata.get("cacheControl", "no-cache")),
            "last-modified": str(metadata.get("lastModified", "")),
            "accept-ranges": "bytes",
            "x-robots-tag": "none",
        }
        if download is not None:
            # ?download[=name]: an attachment, as supabase/storage's renderer.ts handleDownload says it.
            name = quote(download, safe="!*'()")  # encodeURIComponent's set
            headers["content-disposition"] = (
                f"attachment; filename={name}; filename*=UTF-8''{name};" if download else "attachment;"
            )
        media_type = str(metadata.get("mimetype", "application/octet-stream"))
        if faults._take_cut():

            async def half_then_close() -> AsyncIterator[bytes]:
                yield data[: len(data) // 2]
                raise ConnectionAbortedError("cut off by fault injection")

            return StreamingResponse(half_then_close(), headers=headers, media_type=media_type)
        return Response(data, headers=headers, media_type=media_type)

    async def info(request: Request) -> Response:
        caller = _caller(request, config)
        bucket, name = request.path_params["bucket"], request.path_params["name"]
        row = await store.find(caller, bucket, name)
        metadata = row["metadata"] or {}
        # ``metadata`` in the answer is the user metadata (``{}`` for a plain upload), not the
        # system metadata, whose fields are spread over size, content_type, etag, ...
        body = {
            "id": str(row["id"]),
            "name": name,
            "bucket_id": bucket,
            "version": row["version"],
            "size": metadata.get("size"),
            "content_type": metadata.get("mimetype"),
            "cache_control": metadata.get("cacheControl"),
            "etag": metadata.get("eTag"),
            "metadata": row["user_metadata"] or {},
            "last_modified": row["updated_at"].isoformat(),
            "created_at": row["created_at"].isoformat(),
        }
        if request.method == "HEAD":
            return Response(status_code=200, headers={"content-length": str(metadata.get("size", 0))})
        return JSONResponse(body)

    async def remove(request: Request) -> Response:
        caller = _caller(request, config)
        raw = await request.body()
        is_json = request.headers.get("content-type", "").startswith("application/json")
        # Fastify's JSON parser errors (FST_ERR_CTP_*), rendered as InvalidRequest.
        if is_json and not raw:
            raise StorageError(
                400,
                "InvalidRequest",
                "Body cannot be empty when content-type is set to 'application/json'",
                error="FastifyError",
            )
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            raise StorageError(
                400,
                "InvalidRequest",
                "Body is not valid JSON but content-type is set to 'application/json'",
                error="FastifyError",
            ) from exc
        prefixes = _prefixes(body)
        if config.request_hard_limits and len(prefixes) > DELETE_OBJECTS_LIMIT:
            raise StorageError(
                400,
                "InvalidRequest",
                f"Bulk object requests are limited to {DELETE_OBJECTS_LIMIT} objects per request.",
            )
        return JSONResponse(await store.remove(caller, request.path_params["bucket"], prefixes))

    async def list_objects(request: Request) -> Response:
        caller = _caller(request, config)
        return JSONResponse(await store.list(caller, request.path_params["bucket"], await request.json()))

    async def sign(request: Request) -> Response:
        caller = _caller(request, config)
        bucket, name = request.path_params["bucket"], request.path_params["name"]
        await store.find(caller, bucket, name)
        body = await request.json()
        expires_in = int(body.get("expiresIn", 60))
        token = jwt.encode(
            {"url": f"{bucket}/{name}", "iat": int(time.time()), "exp": int(time.time()) + expires_in},
            config.jwt_secret,
            algorithm="HS256",
        )
        return JSONResponse({"signedURL": f"/object/sign/{bucket}/{name}?token={token}"})

    async def signed_download(request: Request) -> Response:
        bucket, name = request.path_params["bucket"], request.path_params["name"]
        try:
            claims = jwt.decode(
                request.query_params.get("token", ""), config.jwt_secret, algorithms=["HS256"]
            )
        except jwt.InvalidTokenError as exc:
            # A tampered or expired signed-URL token: InvalidJWT with jose's message.
            message = (
                "signature verification failed" if isinstance(exc, jwt.InvalidSignatureError) else str(exc)
            )
            raise StorageError(400, "InvalidJWT", message) from exc
        if claims.get("url") != f"{bucket}/{name}":
            raise StorageError(400, "InvalidSignature", "The url do not match the signature")
        data, metadata = await store.read(Caller("service_role", {"role": "service_role"}), bucket, name)
        return _object_response(data, metadata, request.query_params.get("download"))

    async def list_buckets(request: Request) -> Response:
        _caller(request, config)
        async with store.pool.connection() as conn:
            rows = await (await conn.execute("select * from storage.buckets order by id")).fetchall()
        return JSONResponse(json.loads(json.dumps(rows, default=str)))

    async def get_bucket(request: Request) -> Response:
        _caller(request, config)
        row = await store.bucket(request.path_params["bucket"])
        return JSONResponse(json.loads(json.dumps(row, default=str)))

    async def set_faults(request: Request) -> Response:
        # Developers run this server on their machines: only the service key may switch faults on.
        if _caller(request, config).role != "service_role":
            raise StorageError(
                403, "AccessDenied", "the fault switch needs the service key", error="Unauthorized"
            )
        faults.configure(await request.json())
        return JSONResponse({"ok": True})

    routes = [
        Route("/bucket", list_buckets, methods=["GET"]),
        Route("/bucket/{bucket}", get_bucket, methods=["GET"]),
        Route("/object/list/{bucket}", list_objects, methods=["POST"]),
        Route("/object/sign/{bucket}/{name:path}", sign, methods=["POST"]),
        Route("/object/sign/{bucket}/{name:path}", signed_download, methods=["GET"]),
        Route("/object/info/authenticated/{bucket}/{name:path}", info, methods=["GET", "HEAD"]),
        Route("/object/info/{bucket}/{name:path}", info, methods=["GET", "HEAD"]),
        Route("/object/authenticated/{bucket}/{name:path}", download, methods=["GET"]),
        Route("/object/{bucket}/{name:path}", download, methods=["GET"]),
        Route("/object/{bucket}/{name:path}", upload, methods=["POST", "PUT"]),
        Route("/object/{bucket}", remove, methods=["DELETE"]),
    ]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        config.root.mkdir(parents=True, exist_ok=True)
        await store.pool.open()
        try:
            yield
        finally:
            await store.pool.close()

    async def inject_faults(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if path == "/__faults":
            passthrough: Response = await call_next(request)
            return passthrough
        if faults.latency:
            await anyio.sleep(faults.latency)
        if stall := faults._take_stall():
            await anyio.sleep(stall)
        failure = faults._take_failure(request.method, path)
        if failure is not None:
            faults.hits.append((request.method, path, failure.http_status))
            return failure.response()
        response: Response = await call_next(request)
        faults.hits.append((request.method, path, response.status_code))
        if delay := faults._take_delay(request.method, path):
            await anyio.sleep(delay)
        return response

    async def storage_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StorageError)
        return exc.response()

    return Starlette(
        routes=[Route("/__faults", set_faults, methods=["POST"]), Mount(PREFIX, routes=routes), *beside],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=inject_faults)],
        exception_handlers={StorageError: storage_error},
        lifespan=lifespan,
    )
