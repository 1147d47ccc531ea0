"""The processor service: wires the adapters to the worker and tracks readiness.

Start-up order: open the queue and storage adapters, load the model in a thread
(``/healthz`` answers meanwhile, ``/readyz`` says ``starting``), then run the worker,
the LISTEN loop and the sweep. ``stop`` drains the worker (see ``Worker._drain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from processor.metrics import Metrics
from processor.notifications import listen
from processor.ports import Editor, JobQueue, ObjectStorage
from processor.settings import Settings
from processor.worker import Worker

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from processor.api import RestApi

log = logging.getLogger(__name__)

State = Literal["starting", "ready", "busy", "setup_failed", "stopping"]


@runtime_checkable
class Pingable(Protocol):
    """An adapter that can tell whether its backend answers (for ``/readyz``)."""

    async def ping(self) -> None: ...


@runtime_checkable
class Opens(Protocol):
    """An adapter with resources to open at start-up and close at shutdown."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class ProcessorService:
    """One per process: the worker, its wake-ups and its health."""

    def __init__(
        self,
        settings: Settings,
        *,
        queue: JobQueue,
        storage: ObjectStorage,
        editor_factory: Callable[[], Editor],
        metrics: Metrics | None = None,
        listen_for_notifications: bool = True,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._queue = queue
        self._storage = storage
        self._editor_factory = editor_factory
        self._listen = listen_for_notifications
        self._stop = asyncio.Event()
        self._worker: Worker | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._setup_error: str | None = None
        self._stopping = False

    @property
    def storage(self) -> ObjectStorage:
        return self._storage

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
        for adapter in (self._queue, self._storage):
            if isinstance(adapter, Opens):
                await adapter.open()
        self._tasks.append(asyncio.create_task(self._load_and_run(), name="processor-main"))

    async def _load_and_run(self) -> None:
        started = time.monotonic()
        try:
            editor = await asyncio.to_thread(self._editor_factory)
        except Exception as exc:
            self._setup_error = f"{type(exc).__name__}: {exc}"
            log.exception("model setup failed")
            return
        log.info("model ready", extra={"seconds": round(time.monotonic() - started, 3)})
        self._worker = Worker(
            queue=self._queue,
            storage=self._storage,
            editor=editor,
            settings=self.settings,
            metrics=self.metrics,
        )
        if self._listen and self.settings.database_url:
            self._tasks.append(
                asyncio.create_task(
                    listen(
                        self.settings.database_url,
                        on_queued=self.wake,
                        on_cancel=self._worker.cancel,
                        stop=self._stop,
                    ),
                    name="processor-listen",
                )
            )
        await self._worker.run(self._stop)

    def wake(self, request_id: uuid.UUID | None = None) -> None:
        """A hint that something may be claimable (webhook or notification)."""
        if self._worker is not None:
            self._worker.wake()

    async def database_reachable(self) -> bool:
        if not isinstance(self._queue, Pingable):
            return True
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
        for adapter in (self._queue, self._storage):
            if isinstance(adapter, Opens):
                await adapter.close()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (the ``worker`` command's main)."""
        await self.start()
        await stop.wait()
        await self.stop()


def build_service(settings: Settings, *, listen_for_notifications: bool = True) -> ProcessorService:
    """The production wiring: Postgres queue, Supabase Storage, diffusers editor."""
    settings.require("database_url", "supabase_url", "supabase_service_role_key")
    # Imported here so that `edit-processor --help` stays fast and light.
    from processor.editors import build_editor
    from processor.queue import PostgresJobQueue
    from processor.storage import SupabaseObjectStorage

    assert settings.database_url is not None
    return ProcessorService(
        settings,
        queue=PostgresJobQueue(settings.database_url),
        storage=SupabaseObjectStorage.from_settings(settings),
        editor_factory=lambda: build_editor(settings),
        listen_for_notifications=listen_for_notifications,
    )


def build_rest_api(settings: Settings, service: ProcessorService) -> RestApi:
    """The REST API over the service's storage adapter and a pool of its own (rows as the user)."""
    from processor.api import RestApi
    from processor.auth import TokenVerifier
    from processor.images import ImageLimits
    from processor.submissions import EditRequests, Submissions

    assert settings.database_url is not None
    secret = settings.supabase_jwt_secret.get_secret_value() if settings.supabase_jwt_secret else None
    verifier = TokenVerifier(jwt_secret=secret, jwks_url=settings.jwks_url())
    submissions = Submissions(
        EditRequests(settings.database_url), service.storage, ImageLimits.from_settings(settings)
    )
    return RestApi(submissions, verifier, signed_url_seconds=settings.signed_url_seconds)


def build_mcp(settings: Settings, api: RestApi) -> MCPServer | None:
    """MCP tools over the REST API's submissions (same users, same rows); None without the `mcp` extra."""
    try:
        from processor.mcp_server import create_mcp_server
    except ModuleNotFoundError as error:
        if error.name is None or error.name.partition(".")[0] != "mcp":
            raise
        log.warning("MCP is off: the mcp package is not installed (pip install 'qwen-edit-processor[mcp]')")
        return None

    return create_mcp_server(api.submissions, api.verifier, signed_url_seconds=settings.signed_url_seconds)
