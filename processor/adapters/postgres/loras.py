"""``LoraAllowlist`` over PostgreSQL: ``public.edit_loras`` made equal to the processor's ``LORAS``.

Rows are never deleted (a description written by hand stays, and a name comes back enabled when
``LORAS`` names it again); a name ``LORAS`` leaves out is disabled, which the insert trigger
``edit_requests_check_loras`` refuses as an unknown LoRA.
"""

from __future__ import annotations

from collections.abc import Mapping

from processor.adapters.postgres.pool import Pool
from processor.domain.ports.loras import AllowlistChange


class PostgresLoraAllowlist:
    """Publishes the allowlist through a one-connection pool of its own (opened per publication)."""

    def __init__(self, dsn: str, *, timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._timeout = timeout

    async def publish(self, loras: Mapping[str, str]) -> AllowlistChange:
        names = sorted(loras)
        pool = Pool(self._dsn, min_size=1, max_size=1, timeout=self._timeout)
        await pool.open()
        try:
            async with pool.connection() as conn, conn.transaction():
                # Processors starting together take turns: each publication is whole.
                await conn.execute("lock table public.edit_loras in share row exclusive mode")
                cursor = await conn.execute("select name from public.edit_loras where enabled")
                before = {str(row["name"]) for row in await cursor.fetchall()}
                await conn.execute(
                    "insert into public.edit_loras (name, description, enabled) "
                    "select name, description, true from unnest(%s::text[], %s::text[]) as l(name, description) "
                    "on conflict (name) do update set enabled = true, description = "
                    "case when excluded.description = '' then edit_loras.description else excluded.description end",
                    (names, [loras[name] for name in names]),
                )
                await conn.execute(
                    "update public.edit_loras set enabled = false where enabled and name <> all(%s::text[])",
                    (names,),
                )
        finally:
            await pool.close()
        return AllowlistChange(
            added=tuple(sorted(set(names) - before)), removed=tuple(sorted(before - set(names)))
        )
