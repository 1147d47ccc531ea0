"""The LoRA allowlist port: the names users may ask for, as the database checks them at insert."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AllowlistChange:
    """What one publication changed: names now allowed that were not, and names no longer allowed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


class LoraAllowlist(Protocol):
    """``public.edit_loras``: written from the processor's ``LORAS``, its one source of truth."""

    async def publish(self, loras: Mapping[str, str]) -> AllowlistChange:
        """Make the allowed names exactly ``loras`` (name to description): each enabled, every other
        disabled, in one transaction. ``TransientError`` when the database does not answer."""
        ...
