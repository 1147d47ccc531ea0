"""The processor service: wires the adapters to the worker and tracks readiness.

Start-up order: open the queue and storage adapters, load the model in a thread
(``/healthz`` answers meanwhile, ``/readyz`` says ``starting``), then run the worker,
the LISTEN loop and the sweep; retention (when configured) runs from the start, every
``RETENTION_INTERVAL_SECONDS``. ``stop`` drains the worker (see ``JobSlots.drain``).

When the model cannot be loaded, ``state`` is ``setup_failed`` with ``setup_error`` (the HTTP
app's ``/readyz`` reports it, so the platform restarts the process); ``run_until`` (the
``worker`` command, which has no ``/readyz``) stops and raises ``SetupFailed`` instead of
waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Literal

from processor.core.lora_allowlist import publish_allowlist
from processor.core.retention import Retention
from processor.core.webhooks import WebhookDispatcher, run_dispatcher
from processor.core.worker import Worker, WorkerConfig
from processor.domain.errors import ProcessorError
from processor.domain.ports.changes import Wakeups
from processor.domain.ports.editor import Editor
from processor.domain.ports.loras import LoraAllowlist
from processor.domain.ports.queue import JobQueue
from processor.domain.ports.storage import ObjectStorage
from processor.domain.reasons import ReasonCode
from processor.domain.rules import SpeedPreset
from processor.observability.metrics import Metrics

log = logging.getLogger(__name__)

# How often a missing sweep is looked for again (pg_cron may be enabled while we run).
_SWEEP_RECHECK_SECONDS = 60.0

State = Literal["starting", "ready", "busy", "setup_failed", "stopping"]


class SetupFailed(ProcessorError):
    """The service could not start working (the model did not load); not retried in-process."""

    reason = ReasonCode.SETUP_FAILED
    retryable = False


class ProcessorService:
    """One per process: the worker, its wake-ups, completion webhooks and its health."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        queue: JobQueue,
        storage: ObjectStorage,
        editor_factory: Callable[[], Editor],
        wakeups: Wakeups | None = None,
        metrics: Metrics | None = None,
        webhooks: WebhookDispatcher | None = None,
        retention: Retention | None = None,
        allowlist: LoraAllowlist | None = None,
        loras: Mapping[str, str] | None = None,
        default_speed: SpeedPreset | None = None,
    ) -> None:
        """``allowlist``: where the LoRA allowlist ``loras`` (name to description, the ``LORAS`` setting)
        and ``default_speed`` (the ``SPEED`` setting) are published at start-up, so the database refuses
        exactly the LoRAs this processor cannot run and charges a request without a speed what it runs."""
        self.config = config
        self.metrics = metrics or Metrics()
        self._queue = queue
        self._storage = storage
        self._editor_factory = editor_factory
        self._wakeups = wakeups
        self._webhooks = webhooks
        self._retention = retention
        self._allowlist = allowlist
        self._loras = dict(loras or {})
        self._default_speed = default_speed
        self._editor: Editor | None = None
        self._stop = asyncio.Event()
        self._worker: Worker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._setup_error: str | None = None
        self._setup_what = ""
        self._setup_failed = asyncio.Event()
        self._stopping = False
        self._lease_sweep: str | None = None
        self._lease_sweep_checked = -_SWEEP_RECHECK_SECONDS

    @property
    def storage(self) -> ObjectStorage:
        return self._storage

    @property
    def webhooks(self) -> WebhookDispatcher | None:
        return self._webhooks

    @property
    def worker(self) -> Worker | None:
        return self._worker

    @property
    def state(self) -> State:
        if self._stopping:
            return "stopping"
        if self._setup_error is not None:
            return "setup_failed"
        if self._worker is None:
            return "starting"
        return "busy" if self._worker.busy else "ready"

    @property
    def setup_error(self) -> str | None:
        return self._setup_error

    async def start(self) -> None:
        """Open the adapters, then load the model and work in the background. Returns at once."""
        await self._queue.open()
        await self._storage.open()
        if self._allowlist is not None:
            self._tasks.append(
                asyncio.create_task(self._publish_allowlist(self._allowlist), name="processor-loras")
            )
        if self._retention is not None:
            # Needs no model: deletes what is due while the model loads, then every interval.
            await self._retention.open()
            self._tasks.append(
                asyncio.create_task(self._retention.run(self._stop), name="processor-retention")
            )
        self._tasks.append(asyncio.create_task(self._load_and_run(), name="processor-main"))
        if self._webhooks is not None:
            # Its own task and connections: deliveries start before the model is loaded, and a slow
            # receiver never holds up an edit (nor an edit a delivery).
            self._tasks.append(
                asyncio.create_task(run_dispatcher(self._webhooks, self._stop), name="processor-webhooks")
            )

    async def _publish_allowlist(self, allowlist: LoraAllowlist) -> None:
        try:
            await publish_allowlist(allowlist, self._loras, self._stop, default_speed=self._default_speed)
        except Exception as exc:
            # Not a passing fault (a role that may not write edit_loras): the database would check
            # requests against another list than this processor's, so the service does not go on.
            self._fail_setup(f"{type(exc).__name__}: {exc}", what="the LoRA allowlist could not be published")

    def _fail_setup(self, error: str, *, what: str) -> None:
        if self._setup_error is None:
            self._setup_error, self._setup_what = error, what
        log.error("%s: %s", what, error)
        self._setup_failed.set()

    async def _load_and_run(self) -> None:
        await self.lease_sweep()  # schedules it where pg_cron exists, or says it is missing
        started = time.monotonic()
        try:
            editor = await asyncio.to_thread(self._editor_factory)
        except Exception as exc:
            log.exception("model setup failed")
            self._fail_setup(f"{type(exc).__name__}: {exc}", what="the model could not be loaded")
            return
        log.info("model ready", extra={"seconds": round(time.monotonic() - started, 3)})
        self._editor = editor
        self._worker = Worker(
            queue=self._queue, storage=self._storage, editor=editor, config=self.config, metrics=self.metrics
        )
        if self._wakeups is not None:
            self._tasks.append(
                asyncio.create_task(
                    self._wakeups.run(on_queued=self.wake, on_cancel=self._worker.cancel, stop=self._stop),
                    name="processor-listen",
                )
            )
        await self._worker.run(self._stop)

    def wake(self, request_id: uuid.UUID | None = None) -> None:
        """A hint that something may be claimable (webhook or notification)."""
        if self._worker is not None:
            self._worker.wake()

    async def lease_sweep(self) -> str:
        """Whether the database sweeps lapsed leases on its own: ``scheduled``,
        ``not_scheduled``, ``pg_cron_missing`` or ``unknown`` (could not ask). Scale-to-zero
        deployments (RunPod) rely on it: while no processor runs, nothing else requeues a lapsed
        lease. Asking also schedules it where pg_cron exists, so the set-up order does not matter;
        a missing sweep is looked for again at most every minute and logged when it changes."""
        now = time.monotonic()
        if self._lease_sweep == "scheduled" or now - self._lease_sweep_checked < _SWEEP_RECHECK_SECONDS:
            return self._lease_sweep or "unknown"
        self._lease_sweep_checked = now
        try:
            answer = await asyncio.wait_for(self._queue.ensure_lease_sweep(), timeout=5.0)
        except Exception as exc:
            answer = "unknown"
            log.warning("could not check the lease sweep: %s", exc)
        if answer != self._lease_sweep:
            if answer == "scheduled":
                log.info("lease sweep scheduled in the database (pg_cron, every 30 s)")
            else:
                log.warning(
                    "no lease sweep is scheduled in the database (%s): lapsed leases are requeued only "
                    "while a processor runs; enable pg_cron and run select public.ensure_edit_request_sweep()",
                    answer,
                )
        self._lease_sweep = answer
        return answer

    async def database_reachable(self) -> bool:
        try:
            await asyncio.wait_for(self._queue.ping(), timeout=2.0)
        except Exception:
            return False
        return True

    async def stop(self) -> None:
        """Stop claiming, drain the jobs in flight, stop the listener."""
        self._stopping = True
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._queue.close()
        if self._retention is not None:
            await self._retention.close()
        await self._storage.close()
        if self._editor is not None:
            await asyncio.to_thread(self._editor.close)

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (the ``worker`` command's main); ``SetupFailed`` when the
        model cannot be loaded, after closing the adapters, so the process exits and is restarted."""
        await self.start()
        waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self._setup_failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        await self.stop()
        if self._setup_error is not None:
            raise SetupFailed(f"{self._setup_what}: {self._setup_error}")
