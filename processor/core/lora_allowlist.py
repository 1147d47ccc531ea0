"""The LoRA allowlist has one truth, the processor's ``LORAS``; ``public.edit_loras`` is its copy in
the database (where the insert trigger refuses a request naming any other LoRA), written by every
processor as it starts (docs/decisions/0014-one-lora-allowlist.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from processor.domain.errors import TransientError
from processor.domain.ports.loras import AllowlistChange, LoraAllowlist
from processor.domain.rules import SpeedPreset

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0
"""How long a start-up waits before publishing again when the database did not answer."""


async def publish_allowlist(
    allowlist: LoraAllowlist,
    loras: Mapping[str, str],
    stop: asyncio.Event,
    *,
    default_speed: SpeedPreset | None = None,
    retry_seconds: float | None = None,
) -> AllowlistChange | None:
    """Publish ``loras`` (name to description) and ``default_speed`` (the ``SPEED`` setting; None
    leaves the database's as it is), again every ``retry_seconds`` while the database does not answer
    (default ``RETRY_SECONDS``), until it is done or ``stop`` is set (then None). Any other failure
    is raised."""
    pause = RETRY_SECONDS if retry_seconds is None else retry_seconds
    while not stop.is_set():
        try:
            change = await allowlist.publish(loras, default_speed=default_speed)
        except TransientError as exc:
            log.warning("the LoRA allowlist is not published yet (%s); trying again", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()
            continue
        report(change, loras)
        return change
    return None


def report(change: AllowlistChange, loras: Mapping[str, str]) -> None:
    """Say what a publication changed: the table differed from ``LORAS`` (edited by hand, or by a
    processor with other settings: every processor of one database should share ``LORAS``)."""
    if change.added or change.removed:
        log.warning(
            "public.edit_loras differed from LORAS and now follows it: allowed %s, no longer allowed %s",
            list(change.added),
            list(change.removed),
        )
    else:
        log.info("LoRA allowlist published", extra={"loras": len(loras)})
    if change.speed_changed and change.speed_before is None:
        log.info("default speed published for the charge of requests without one")  # a first start
    elif change.speed_changed:
        # Processors of one database disagree on SPEED: requests without a speed are charged as the
        # last one to start runs them.
        log.warning("edit_queue_settings.default_speed was %s and now follows SPEED", change.speed_before)
