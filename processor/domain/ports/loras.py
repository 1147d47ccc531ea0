"""The LoRA allowlist port: the names users may ask for, as the database checks them at insert, and
the speed a request that names none runs at, as the database charges it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from processor.domain.rules import SpeedPreset


@dataclass(frozen=True, slots=True)
class AllowlistChange:
    """What one publication changed: names now allowed that were not, names no longer allowed, and
    the default speed it replaced (``speed_before``, only when ``speed_changed``)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    speed_changed: bool = False
    speed_before: str | None = None


class LoraAllowlist(Protocol):
    """``public.edit_loras``: written from the processor's ``LORAS``, its one source of truth."""

    async def publish(
        self, loras: Mapping[str, str], *, default_speed: SpeedPreset | None = None
    ) -> AllowlistChange:
        """Make the allowed names exactly ``loras`` (name to description): each enabled, every other
        disabled, and the default speed (``edit_queue_settings.default_speed``, what a request with
        speed null is charged as) ``default_speed`` where one is given, in one transaction.
        ``TransientError`` when the database does not answer."""
        ...
