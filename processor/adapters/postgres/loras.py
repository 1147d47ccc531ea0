"""``LoraAllowlist`` over PostgreSQL: ``public.edit_loras`` made equal to the processor's ``LORAS``.

Rows are never deleted (a description written by hand stays, and a name comes back enabled when
``LORAS`` names it again); a name ``LORAS`` leaves out is disabled, which the insert trigger
``edit_requests_check_loras`` refuses as an unknown LoRA. The processor's ``SPEED`` goes to
``edit_queue_settings.default_speed`` in the same transaction, so a request that names no speed is
charged what it runs (``edit_request_cost``).
"""

from __future__ import annotations

from collections.abc import Mapping

from processor.adapters.postgres.pool import Pool
from processor.domain.ports.loras import AllowlistChange
from processor.domain.rules import SpeedPreset


class PostgresLoraAllowlist:
    """Publishes the allowlist through a one-connection pool of its own (opened per publication)."""

    def __init__(self, dsn: str, *, timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._timeout = timeout

    async def publish(
        self, loras: Mapping[str, str], *, default_speed: SpeedPreset | None = None
    ) -> AllowlistChange:
        names = sorted(loras)
        speed_before: str | None = None
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
                if default_speed is not None:
                    cursor = await conn.execute(
                        "select default_speed from public.edit_queue_settings for update"
                    )
                    row = await cursor.fetchone()
                    speed_before = None if row is None else row["default_speed"]
                    await conn.execute(
                        "update public.edit_queue_settings set default_speed = %s, updated_at = now() "
                        "where default_speed is distinct from %s",
                        (default_speed, default_speed),
                    )
        finally:
            await pool.close()
        speed_changed = default_speed is not None and speed_before != default_speed
        return AllowlistChange(
            added=tuple(sorted(set(names) - before)),
            removed=tuple(sorted(before - set(names))),
            speed_changed=speed_changed,
            speed_before=speed_before if speed_changed else None,
        )
