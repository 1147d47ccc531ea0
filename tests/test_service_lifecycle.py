"""The service's lifecycle: it runs requests on any adapters (here the in-memory ones), and a model
that cannot load ends it. Defect: ``edit-processor worker`` never exited when the model failed to
load (it logged the error and waited forever; worker mode has no ``/readyz``, so nothing restarted
it). It must exit non-zero with the reason on stderr, promptly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from processor.core.service import ProcessorService, SetupFailed
from processor.domain.ports.editor import Editor
from processor.testing import (
    InMemoryJobQueue,
    InMemoryObjectStorage,
    InMemoryWakeups,
    StandInEditor,
    eventually,
    fast_config,
)
from tests.conftest import DEADLINE, StorageServer, free_port, png_bytes


def test_worker_exits_non_zero_when_the_model_cannot_load(
    database_url: str, storage_server: StorageServer
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SUPABASE_URL": storage_server.url,
        "SUPABASE_SERVICE_ROLE_KEY": storage_server.service_key,
        "MODEL_ID": "qwen-edit-processor-tests/no-such-model",
        "HF_HUB_OFFLINE": "1",
        "DEVICE": "cpu",
        "WARMUP": "false",
        "LOG_FORMAT": "console",
        "LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
        # Its probes served too (Kubernetes): it exits, so the pod restarts, rather than living on
        # never ready.
        "WORKER_HEALTH_PORT": str(free_port()),
    }
    finished = subprocess.run(  # exits within the deadline: TimeoutExpired otherwise
        [sys.executable, "-m", "processor", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert finished.returncode == 1, finished.stderr[-2000:]
    last_line = finished.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: setup_failed: "), finished.stderr[-2000:]
    assert "no-such-model" in last_line


def test_the_service_stops_and_raises_when_the_model_cannot_load() -> None:
    """The same in-process, on the in-memory adapters: ``run_until`` returns without ``stop``."""
    queue, storage = InMemoryJobQueue(), InMemoryObjectStorage()

    def broken() -> Editor:
        raise OSError("no-such-model is not a local folder and the hub is offline")

    async def scenario() -> ProcessorService:
        service = ProcessorService(fast_config(), queue=queue, storage=storage, editor_factory=broken)
        with pytest.raises(SetupFailed) as caught:
            await asyncio.wait_for(service.run_until(asyncio.Event()), timeout=DEADLINE)
        assert caught.value.reason == "setup_failed"
        assert "no-such-model" in str(caught.value)
        return service

    service = asyncio.run(scenario())
    assert service.setup_error is not None and service.setup_error.startswith("OSError: no-such-model")
    with pytest.raises(RuntimeError):  # the adapters were closed on the way out
        asyncio.run(queue.ping())


def test_the_service_runs_requests_on_the_in_memory_adapters() -> None:
    storage = InMemoryObjectStorage()
    queue = InMemoryJobQueue(storage=storage)
    editor = StandInEditor()
    storage.put("edit-inputs", "u/in.png", png_bytes())

    async def scenario() -> None:
        service = ProcessorService(
            fast_config(sweep_interval_seconds=60),  # woken by the queue's notifications, not the sweep
            queue=queue,
            storage=storage,
            editor_factory=lambda: editor,
            wakeups=InMemoryWakeups(queue),
        )
        stop = asyncio.Event()
        running = asyncio.create_task(service.run_until(stop))
        await eventually(lambda: service.state == "ready", timeout=DEADLINE)
        request_id = queue.enqueue("make it blue", ["u/in.png"], num_inference_steps=2)
        await eventually(lambda: queue.row(request_id).status == "succeeded", timeout=DEADLINE)
        stop.set()
        await asyncio.wait_for(running, timeout=DEADLINE)

    asyncio.run(scenario())
    assert editor.closed
