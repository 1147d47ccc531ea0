"""``UserRequests`` over PostgreSQL: ``edit_requests`` read and written *as the user*.

Each call runs in a transaction with ``set local role authenticated`` and the user's
``request.jwt.claims``, exactly as PostgREST would, so the schema's RLS policies and
column grants decide what a caller may do; this adapter adds no access rules of its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from processor.domain.errors import InvalidInput, LimitExceeded, TransientError
from processor.domain.ports import EditParams
from processor.domain.rules import QUOTA_SQLSTATE, ReasonCode, reason_for_constraint
from processor.domain.users import User

_VIEW_COLUMNS = (
    # What `authenticated` may select (migration 20261201000700): no lease, attempts or raw error.
    "id, status, progress, prompt, negative_prompt, num_inference_steps, true_cfg_scale, guidance_scale, seed, "
    "input_paths, output_bucket, output_path, error_code, error_message, result, created_at, started_at, "
    "finished_at, updated_at, width, height, base, base_color, speed, loras, inputs_expired_at, output_expired_at"
)


class EditRequests:
    """``edit_requests`` as one user sees it, through a pooled direct connection."""

    def __init__(self, dsn: str, *, max_size: int = 4) -> None:
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]] = AsyncConnectionPool(
            dsn,
            connection_class=psycopg.AsyncConnection[DictRow],
            min_size=1,
            max_size=max_size,
            kwargs={"row_factory": dict_row},
            open=False,
            check=AsyncConnectionPool.check_connection,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _as_user(self, user: User) -> AsyncIterator[psycopg.AsyncConnection[DictRow]]:
        try:
            async with self._pool.connection(timeout=10.0) as conn, conn.transaction():
                claims = {**user.claims, "sub": str(user.id), "role": "authenticated"}
                await conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
                await conn.execute("set local role authenticated")
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as exc:
            raise TransientError(
                f"database unavailable: {exc}", reason=ReasonCode.DATABASE_UNAVAILABLE
            ) from exc

    async def insert(
        self, user: User, request_id: uuid.UUID, paths: Sequence[str], params: EditParams
    ) -> dict[str, Any]:
        try:
            async with self._as_user(user) as conn:
                cursor = await conn.execute(
                    "insert into public.edit_requests (id, prompt, negative_prompt, input_paths, "
                    "num_inference_steps, true_cfg_scale, guidance_scale, seed, width, height, base, "
                    "base_color, speed, loras) "
                    f"values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) returning {_VIEW_COLUMNS}",
                    (
                        request_id,
                        params.prompt,
                        params.negative_prompt,
                        list(paths),
                        params.num_inference_steps,
                        params.true_cfg_scale,
                        params.guidance_scale,
                        params.seed,
                        params.width,
                        params.height,
                        params.base,
                        params.base_color,
                        params.speed,
                        Jsonb([lora.as_json() for lora in params.loras]),
                    ),
                )
                row = await cursor.fetchone()
        except psycopg.errors.CheckViolation as exc:
            # The constraint names what was refused; rules maps each to the code the Python checks give.
            # A trigger's own message ("unknown LoRA: x") says more than Postgres' CHECK boilerplate.
            detail = exc.diag.message_primary or ""
            said = "" if detail.startswith("new row for relation") else f": {detail}"
            raise InvalidInput(
                f"request refused by the schema ({exc.diag.constraint_name}){said}",
                reason=reason_for_constraint(exc.diag.constraint_name),
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
            raise LimitExceeded(
                str(exc.diag.message_primary or "a per-user limit is reached"),
                reason=ReasonCode.QUOTA_EXCEEDED,
            ) from exc
        assert row is not None
        return row

    async def get(self, user: User, request_id: uuid.UUID) -> dict[str, Any] | None:
        async with self._as_user(user) as conn:
            cursor = await conn.execute(
                f"select {_VIEW_COLUMNS} from public.edit_requests where id = %s", (request_id,)
            )
            return await cursor.fetchone()

    async def recent(self, user: User, limit: int = 20) -> list[dict[str, Any]]:
        async with self._as_user(user) as conn:
            cursor = await conn.execute(
                f"select {_VIEW_COLUMNS} from public.edit_requests order by created_at desc limit %s",
                (limit,),
            )
            return await cursor.fetchall()

    async def cancel(self, user: User, request_id: uuid.UUID) -> bool:
        async with self._as_user(user) as conn:
            cursor = await conn.execute("select public.cancel_edit_request(%s) as ok", (request_id,))
            row = await cursor.fetchone()
        return bool(row and row["ok"])
