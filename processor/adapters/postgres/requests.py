"""``UserRequests`` over PostgreSQL: ``edit_requests`` read and written *as the user*.

Each call runs in a transaction with ``set local role authenticated`` and the user's
``request.jwt.claims``, exactly as PostgREST would, so the schema's RLS policies and
column grants decide what a caller may do; this adapter adds no access rules of its own.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from processor.adapters.postgres.pool import Pool
from processor.domain.cost import cost_of
from processor.domain.errors import InvalidInput, KeyTaken, LimitExceeded, Unauthorized
from processor.domain.reasons import QUOTA_SQLSTATE, ReasonCode, reason_for_constraint
from processor.domain.request import (
    NO_OPTIONS,
    OPTION_FIELDS,
    PARAM_FIELDS,
    DeclaredField,
    EditParams,
    RequestOptions,
    text_bytes,
)
from processor.domain.users import User


def request_columns(request: EditParams | RequestOptions) -> dict[str, Any]:
    """A request's fields as the row's columns hold them (named as the fields; LoRAs as a jsonb list
    of ``{name, scale}``): what an insert writes, and what a claim reads back whole."""
    declared = PARAM_FIELDS if isinstance(request, EditParams) else OPTION_FIELDS
    return {item.name: _column_value(item, getattr(request, item.name)) for item in declared}


def _column_value(item: DeclaredField, value: Any) -> Any:
    if item.spec.kind == "loras":
        return Jsonb([lora.as_json() for lora in value])
    return value


# The request's columns are named as its declared fields (domain/request.py): listed from there.
_PARAM_COLUMNS = ", ".join(item.name for item in PARAM_FIELDS)
_PARAM_MARKS = ", ".join(["%s"] * len(PARAM_FIELDS))
_OPTION_COLUMNS = ", ".join(item.name for item in OPTION_FIELDS)
_OPTION_MARKS = ", ".join(["%s"] * len(OPTION_FIELDS))
_VIEW_COLUMNS = (
    # What `authenticated` may select (migration 20261201000700): no lease, attempts or raw error.
    f"id, status, progress, {_PARAM_COLUMNS}, input_paths, output_bucket, output_path, error_code, "
    "error_message, result, created_at, started_at, finished_at, updated_at, batch_id, inputs_expired_at, "
    "output_expired_at, cost, preview_path, preview_step, idempotency_key, idempotency_fingerprint"
)
_BATCH_COLUMNS = (
    "id, prompt, created_at, requests, awaiting_image, queued, processing, succeeded, failed, canceled, "
    "finished, progress, last_finished_at"
)


def _values(request: EditParams | RequestOptions) -> tuple[Any, ...]:
    return tuple(request_columns(request).values())


async def _batch(conn: psycopg.AsyncConnection[DictRow], batch_id: uuid.UUID) -> dict[str, Any] | None:
    """The batch's progress row with its requests (``items``), in the order of its images."""
    cursor = await conn.execute(
        f"select {_BATCH_COLUMNS} from public.edit_batch_progress where id = %s", (batch_id,)
    )
    batch = await cursor.fetchone()
    if batch is None:
        return None
    columns = ", ".join(f"r.{name.strip()}" for name in _VIEW_COLUMNS.split(","))
    cursor = await conn.execute(
        f"select {columns} from public.edit_requests r join public.edit_batches b on b.id = r.batch_id "
        "where r.batch_id = %s order by array_position(b.input_paths, r.input_paths[1]), r.id",
        (batch_id,),
    )
    return {**batch, "items": await cursor.fetchall()}


_KEY_INDEXES = frozenset({"edit_requests_idempotency_key_unique", "edit_batches_idempotency_key_unique"})
"""The unique indexes of the idempotency keys: a violation of one is ``KeyTaken``."""
_OWNER_KEYS = frozenset({"edit_requests_user_id_fkey", "edit_batches_user_id_fkey"})
"""The rows' references to ``auth.users``: a violation of one is a user who is gone (``Unauthorized``)."""


class EditRequests:
    """``edit_requests`` as one user sees it, through a pooled direct connection."""

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self._pool = Pool(dsn, min_size=1, max_size=max_size, timeout=10.0)

    async def open(self) -> None:
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _as_user(self, user: User) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
        # One transaction: the role and claims are `local`, so they end with it.
        async with self._pool.connection() as conn, conn.transaction():
            claims = {**user.claims, "sub": str(user.id), "role": "authenticated"}
            await conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
            await conn.execute("set local role authenticated")
            yield conn

    @asynccontextmanager
    async def _refusals(self, user: User, requests: int, cost: float) -> AsyncIterator[None]:
        """What the schema's refusal of an insert of ``requests`` requests costing ``cost`` in all
        means, as the domain's errors."""
        try:
            yield
        except psycopg.errors.CheckViolation as exc:
            # The constraint names what was refused; rules maps each to the code the Python checks give.
            # A trigger's own message ("unknown LoRA: x") says more than Postgres' CHECK boilerplate.
            detail = exc.diag.message_primary or ""
            said = "" if detail.startswith("new row for relation") else f": {detail}"
            raise InvalidInput(
                f"request refused by the schema ({exc.diag.constraint_name}){said}",
                reason=reason_for_constraint(exc.diag.constraint_name),
            ) from exc
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name not in _KEY_INDEXES:
                raise
            raise KeyTaken("an earlier request holds this idempotency key") from exc
        except psycopg.errors.ForeignKeyViolation as exc:
            if exc.diag.constraint_name not in _OWNER_KEYS:
                raise
            # A valid token of a user deleted since it was issued: no one the rows could belong to.
            raise Unauthorized("the token's user does not exist (deleted?); sign in again") from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            # RLS: a path outside the caller's own folder (or a batch that is not theirs).
            raise InvalidInput(
                "refused by row-level security: every object path must be under your own folder",
                reason=ReasonCode.INVALID_INPUT,
            ) from exc
        except psycopg.errors.DataError as exc:
            # A value the column type cannot hold (1e-300 is a valid float, but underflows ``real``).
            raise InvalidInput(
                f"a parameter cannot be stored: {exc.diag.message_primary}",
                reason=ReasonCode.INVALID_PARAMETER,
            ) from exc
        except psycopg.Error as exc:
            if exc.sqlstate != QUOTA_SQLSTATE:
                raise
            # The per-user limits of edit_user_limits (migration 20261201000500): HTTP 429, not 500.
            message = str(exc.diag.message_primary or "a per-user limit is reached")
            raise LimitExceeded(
                message,
                reason=ReasonCode.QUOTA_EXCEEDED,
                retry_after=await self._retry_after(user, message, requests, cost),
            ) from exc

    async def _retry_after(self, user: User, message: str, requests: int, cost: float) -> float | None:
        """When the refused insert would pass (``edit_request_retry_after``), if the database can tell;
        the refusal's message names the limit ("... limit exceeded: max_cost_per_hour (20000)")."""
        named = re.search(r"exceeded: ([a-z_]+)", message)
        if named is None:
            return None
        try:
            async with self._as_user(user) as conn:
                cursor = await conn.execute(
                    "select public.edit_request_retry_after(%s, %s, %s) as seconds",
                    (named.group(1), requests, cost),
                )
                row = await cursor.fetchone()
        except psycopg.Error:
            return None  # the refusal stands; only the hint is lost
        return None if row is None or row["seconds"] is None else float(row["seconds"])

    async def admit(self, user: User, params: EditParams, inputs: int, *, requests: int = 1) -> None:
        # The cost's arguments as the insert trigger gives them to edit_request_cost (the speed's
        # default is the database's); the limits and the refusal's text are the insert's. A value
        # the insert could not store is refused here as the insert would (``_refusals``).
        cost = requests * cost_of(params, inputs)
        async with self._refusals(user, requests, cost), self._as_user(user) as conn:
            cursor = await conn.execute(
                "select refused, message from public.edit_request_admission_check(%s::integer, "
                "%s::integer, %s::real, %s::text, %s::integer, %s::integer, %s::integer, %s::integer, "
                "%s::integer, %s::integer)",
                (
                    requests,
                    params.num_inference_steps,
                    params.true_cfg_scale,
                    params.speed,
                    params.width,
                    params.height,
                    inputs,
                    text_bytes(params.prompt),
                    text_bytes(params.negative_prompt),
                    len(params.loras),
                ),
            )
            row = await cursor.fetchone()
        if row is None or row["refused"] is None:
            return
        if row["refused"] == "no_such_user":
            raise Unauthorized("the token's user does not exist (deleted?); sign in again")
        message = str(row["message"])
        raise LimitExceeded(
            message,
            reason=ReasonCode.QUOTA_EXCEEDED,
            retry_after=await self._retry_after(user, message, requests, cost),
        )

    async def insert(
        self,
        user: User,
        paths: Sequence[str],
        params: EditParams,
        options: RequestOptions = NO_OPTIONS,
        *,
        fingerprint: str | None = None,
    ) -> dict[str, Any]:
        # No id: the server chooses it (users may not name one; migration 20261206004000).
        cost = cost_of(params, len(paths))
        async with self._refusals(user, 1, cost), self._as_user(user) as conn:
            cursor = await conn.execute(
                f"insert into public.edit_requests (input_paths, {_PARAM_COLUMNS}, {_OPTION_COLUMNS}, "
                f"idempotency_fingerprint) values (%s, {_PARAM_MARKS}, {_OPTION_MARKS}, %s) "
                f"returning {_VIEW_COLUMNS}",
                (list(paths), *_values(params), *_values(options), fingerprint),
            )
            row = await cursor.fetchone()
        assert row is not None
        return row

    async def find(self, user: User, idempotency_key: str) -> dict[str, Any] | None:
        async with self._as_user(user) as conn:
            cursor = await conn.execute(
                f"select {_VIEW_COLUMNS} from public.edit_requests where idempotency_key = %s",
                (idempotency_key,),
            )
            return await cursor.fetchone()

    async def insert_batch(
        self,
        user: User,
        paths: Sequence[str],
        reference_paths: Sequence[str],
        params: EditParams,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> dict[str, Any]:
        # One statement: its trigger inserts every request, or the statement fails whole. The server
        # chooses the id, as for a request.
        count = len(paths)
        cost = count * cost_of(params, 1 + len(reference_paths))
        async with self._refusals(user, count, cost), self._as_user(user) as conn:
            cursor = await conn.execute(
                "insert into public.edit_batches (input_paths, reference_paths, idempotency_key, "
                f"idempotency_fingerprint, {_PARAM_COLUMNS}) values (%s, %s, %s, %s, {_PARAM_MARKS}) "
                "returning id",
                (list(paths), list(reference_paths), idempotency_key, fingerprint, *_values(params)),
            )
            inserted = await cursor.fetchone()
            assert inserted is not None
            batch = await _batch(conn, inserted["id"])
        assert batch is not None
        return batch

    async def find_batch(self, user: User, idempotency_key: str) -> dict[str, Any] | None:
        async with self._as_user(user) as conn:
            cursor = await conn.execute(
                "select id, idempotency_fingerprint from public.edit_batches where idempotency_key = %s",
                (idempotency_key,),
            )
            found = await cursor.fetchone()
            if found is None:
                return None
            batch = await _batch(conn, found["id"])
        return (
            None if batch is None else {**batch, "idempotency_fingerprint": found["idempotency_fingerprint"]}
        )

    async def get_batch(self, user: User, batch_id: uuid.UUID) -> dict[str, Any] | None:
        async with self._as_user(user) as conn:
            return await _batch(conn, batch_id)

    async def cancel_batch(self, user: User, batch_id: uuid.UUID) -> int:
        async with self._as_user(user) as conn:
            cursor = await conn.execute("select public.cancel_edit_batch(%s) as canceled", (batch_id,))
            row = await cursor.fetchone()
        return int(row["canceled"]) if row else 0

    async def get(self, user: User, request_id: uuid.UUID) -> dict[str, Any] | None:
        async with self._as_user(user) as conn:
            cursor = await conn.execute(
                f"select {_VIEW_COLUMNS} from public.edit_requests where id = %s", (request_id,)
            )
            return await cursor.fetchone()

    async def recent(
        self,
        user: User,
        limit: int = 20,
        *,
        before: uuid.UUID | None = None,
        statuses: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        # Keyset paging on (created_at, id), newest first: the owner's (user_id, created_at) index
        # (RLS adds the user) finds the page however deep it is.
        conditions: list[str] = []
        values: list[Any] = []
        if before is not None:
            conditions.append(
                "(created_at, id) < (select b.created_at, b.id from public.edit_requests b where b.id = %s)"
            )
            values.append(before)
        if statuses:
            conditions.append("status = any(%s)")
            values.append(list(statuses))
        where = f"where {' and '.join(conditions)} " if conditions else ""
        async with self._as_user(user) as conn:
            cursor = await conn.execute(
                f"select {_VIEW_COLUMNS} from public.edit_requests {where}"
                "order by created_at desc, id desc limit %s",
                (*values, limit),
            )
            return await cursor.fetchall()

    async def cancel(self, user: User, request_id: uuid.UUID) -> bool:
        async with self._as_user(user) as conn:
            cursor = await conn.execute("select public.cancel_edit_request(%s) as ok", (request_id,))
            row = await cursor.fetchone()
        return bool(row and row["ok"])
