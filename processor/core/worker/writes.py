"""A job's last writes (complete, fail, release), retried through short database outages."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from processor.core.worker.config import WorkerConfig
from processor.domain.errors import ProcessorError, TransientError
from processor.domain.ports.queue import EditJob, JobQueue

log = logging.getLogger(__name__)

T = TypeVar("T")


class FinalWrites:
    """Each write retries for up to a third of the lease (a restart, a failover): finished
    GPU work is worth keeping, and the lease still protects the row meanwhile."""

    def __init__(self, queue: JobQueue, config: WorkerConfig) -> None:
        self._queue = queue
        self._config = config

    async def complete(self, job: EditJob, output_path: str, result: Mapping[str, Any]) -> bool:
        worker_id = self._config.worker_id
        return await self._outlasting_outages(
            lambda: self._queue.complete(job.id, worker_id, output_path, result)
        )

    async def fail(self, job: EditJob, exc: ProcessorError, *, retryable: bool) -> str:
        """The row's new status (``queued``, ``failed``, or ``lost``); raises when it cannot be written."""
        worker_id = self._config.worker_id
        return await self._outlasting_outages(
            lambda: self._queue.fail(
                job.id, worker_id, exc.message, retryable=retryable, error_code=exc.reason
            )
        )

    async def release(self, job: EditJob) -> None:
        """Give the row back with its attempt; a failure is logged (the lease lapses instead)."""
        worker_id = self._config.worker_id
        try:
            await self._outlasting_outages(lambda: self._queue.release(job.id, worker_id))
        except ProcessorError as exc:
            log.error("could not release: %s", exc)

    async def _outlasting_outages(self, write: Callable[[], Awaitable[T]]) -> T:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_delay(self._config.lease_seconds / 3),
            wait=wait_exponential_jitter(initial=0.2, max=2.0),
            reraise=True,
        ):
            with attempt:
                return await write()
        raise AssertionError("unreachable")  # pragma: no cover
