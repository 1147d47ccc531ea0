"""Who asks: an authenticated Supabase user, as the core and the database see them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated caller: their id, and the claims to hand to Postgres for RLS."""

    id: uuid.UUID
    claims: dict[str, Any]
