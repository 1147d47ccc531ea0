"""Retention: delete what is due through the Storage API, then mark the rows (docs/retention.md).

One run: ask the database for a bounded list of due objects (it holds a lease, so one processor
at a time runs), delete them bucket by bucket with Storage's bulk delete, and mark the finished
rows whose objects are gone; then again, batch after batch, while the last batch deleted
something and the run's time budget lasts (uploads are not bounded by a batch an hour). What is due, and what a live request needs, is decided in SQL, and
decided again inside Storage's delete transaction, so nothing here can delete a live input.

Failures lose nothing: a bucket whose delete failed is not marked, and its objects are still
due on the next run; marks are made from what Storage no longer holds, so a repeated or partial
delete marks exactly what is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from processor.domain.errors import ProcessorError
from processor.domain.ports.retention import RetentionCandidate, RetentionPolicy, RetentionStore
from processor.domain.ports.storage import ObjectStorage
from processor.domain.rules import (
    DEFAULT_RETENTION_RUN_SECONDS,
    PREVIEW_EXTENSIONS,
    RetentionKind,
    output_names_beside,
    preview_path_beside,
)
from processor.observability.metrics import Metrics

log = logging.getLogger(__name__)


def leftovers_beside(output_path: str) -> list[str]:
    """What an attempt of this output's request may have left that its row does not name: a live
    preview (``{id}.preview.{ext}``), and an output in another format (``{id}.png`` beside
    ``{id}.webp``: an attempt that uploaded and then lost its lease, under another ``OUTPUT_FORMAT``)."""
    previews = [preview_path_beside(output_path, extension) for extension in PREVIEW_EXTENSIONS.values()]
    return [*previews, *output_names_beside(output_path)]


@dataclass
class RetentionReport:
    """What one run did: objects deleted, kept (Storage did not delete them) and failed, by kind."""

    deleted: Counter[RetentionKind] = field(default_factory=Counter)
    kept: Counter[RetentionKind] = field(default_factory=Counter)
    failed: Counter[RetentionKind] = field(default_factory=Counter)
    rows_marked: int = 0
    batches: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def candidates(self) -> int:
        return sum(self.deleted.values()) + sum(self.kept.values()) + sum(self.failed.values())

    def summary(self) -> dict[str, object]:
        return {
            "deleted": dict(self.deleted),
            "kept": dict(self.kept),
            "failed": dict(self.failed),
            "rows_marked": self.rows_marked,
            "batches": self.batches,
            "errors": list(self.errors),
        }


class Retention:
    """Runs retention once (``run_once``) or every ``interval_seconds`` (``run``). A run takes batch
    after batch until one deletes nothing, one fails, or ``run_seconds`` have passed (``0``: one
    batch a run)."""

    def __init__(
        self,
        store: RetentionStore,
        storage: ObjectStorage,
        policy: RetentionPolicy,
        *,
        worker_id: str,
        interval_seconds: float,
        run_seconds: float = DEFAULT_RETENTION_RUN_SECONDS,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._storage = storage
        self.policy = policy
        self._worker_id = worker_id
        self._interval = interval_seconds
        self._run_seconds = run_seconds
        self._metrics = metrics

    async def open(self) -> None:
        """Open the store (the storage adapter is the service's, opened and closed by it)."""
        await self._store.open()

    async def close(self) -> None:
        await self._store.close()

    async def run_once(self) -> RetentionReport:
        report = RetentionReport()
        if self.policy.keeps_everything:
            return report
        try:
            await self._run(report)
        except ProcessorError as exc:  # the database: what was deleted is marked on a later run
            report.errors.append(str(exc))
            log.warning("retention run failed: %s", exc)
        if self._metrics is not None:
            self._metrics.retention_runs.labels(outcome="failed" if report.errors else "done").inc()
            for outcome, counts in (
                ("deleted", report.deleted),
                ("kept", report.kept),
                ("failed", report.failed),
            ):
                for kind, count in counts.items():
                    self._metrics.retention_objects.labels(kind=kind, outcome=outcome).inc(count)
        if report.candidates or report.errors:
            log.info("retention run", extra=report.summary())
        return report

    async def _run(self, report: RetentionReport) -> None:
        started = time.monotonic()
        try:
            while True:
                candidates = await self._store.candidates(self._worker_id, self.policy)
                if not candidates:
                    return
                deleted_before = sum(report.deleted.values())
                errors_before = len(report.errors)
                await self._batch(candidates, report)
                report.batches += 1
                if (
                    len(report.errors) > errors_before  # Storage is failing: the next run tries again
                    or sum(report.deleted.values()) == deleted_before  # no progress: nothing to gain
                    or time.monotonic() - started >= self._run_seconds
                ):
                    return
        finally:
            await self._store.release(self._worker_id)

    async def _batch(self, candidates: list[RetentionCandidate], report: RetentionReport) -> None:
        """Delete one list of candidates bucket by bucket, then mark what is gone."""
        by_bucket: dict[str, dict[str, RetentionKind]] = {}
        for candidate in candidates:
            by_bucket.setdefault(candidate.bucket, {})[candidate.path] = candidate.kind
        for bucket, kinds in by_bucket.items():
            paths = list(kinds)
            # With an output go the live previews and other-format outputs an attempt may have
            # left beside it (a final row no longer names them; absent names are no error).
            leftovers = [name for path in paths if kinds[path] == "output" for name in leftovers_beside(path)]
            try:
                deleted = set(await self._storage.delete_many(bucket, paths + leftovers))
            except ProcessorError as exc:
                # Some may be gone already: marking below counts what Storage no longer holds.
                report.errors.append(f"{bucket}: {exc}")
                log.warning("retention: deleting %d objects from %s failed: %s", len(paths), bucket, exc)
                for path in paths:
                    report.failed[kinds[path]] += 1
            else:
                for path in paths:
                    (report.deleted if path in deleted else report.kept)[kinds[path]] += 1
            report.rows_marked += await self._store.mark_deleted(bucket, paths)

    async def run(self, stop: asyncio.Event) -> None:
        """Every interval until ``stop``; the first run right away."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:  # a bug must not end the service's other work
                log.exception("retention run crashed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await stop.wait()
