"""The retention port: what is due for deletion and what is gone (``edit_retention_*`` SQL functions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from processor.domain import rules


@dataclass(frozen=True, slots=True)
class RetentionCandidate:
    """An object due for deletion: an input or output of a finished request, or an orphan upload."""

    kind: rules.RetentionKind
    bucket: str
    path: str


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long objects are kept; ``None`` keeps them forever."""

    input_age: timedelta | None = timedelta(hours=rules.DEFAULT_INPUT_RETENTION_HOURS)
    output_age: timedelta | None = timedelta(hours=rules.DEFAULT_OUTPUT_RETENTION_HOURS)
    orphan_grace: timedelta | None = timedelta(hours=rules.DEFAULT_ORPHAN_GRACE_HOURS)
    batch_size: int = rules.DEFAULT_RETENTION_BATCH_SIZE

    @property
    def keeps_everything(self) -> bool:
        return self.input_age is None and self.output_age is None and self.orphan_grace is None


class RetentionStore(Protocol):
    """What is due and what is gone, in the database (``edit_retention_*`` SQL functions)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def candidates(self, worker_id: str, policy: RetentionPolicy) -> list[RetentionCandidate]:
        """At most ``policy.batch_size`` objects due; empty while another worker holds the lease."""
        ...

    async def mark_deleted(self, bucket: str, paths: Sequence[str]) -> int:
        """Mark the finished rows whose objects among ``paths`` Storage no longer holds; rows marked."""
        ...

    async def release(self, worker_id: str) -> None: ...
