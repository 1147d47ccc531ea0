"""Validating uploads never waits for the threads that edits (and the worker's decodes) run in."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import uuid
from collections.abc import Callable

import httpx

from tests.conftest import DEADLINE, Harness, png_bytes, wait_for


def test_a_submission_is_validated_while_every_default_thread_is_busy(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True)
    loop = harness.served.server.servers[0].get_loop()
    release = threading.Event()
    started = 0
    lock = threading.Lock()

    def hold() -> None:
        nonlocal started
        with lock:
            started += 1
        release.wait(DEADLINE)

    # asyncio's default executor: min(32, cores + 4) threads, all held (as long edits would hold them).
    size = min(32, (os.cpu_count() or 1) + 4)
    for _ in range(size):
        asyncio.run_coroutine_threadsafe(asyncio.to_thread(hold), loop)
    try:
        wait_for(lambda: started == size, what="the default executor to be saturated")
        token = harness.storage.token(make_user())
        response = httpx.post(
            f"{harness.served.url}/v1/edits",
            json={"prompt": "make it blue", "image": base64.b64encode(png_bytes()).decode()},
            headers={"Authorization": f"Bearer {token}"},
            timeout=15,
        )
        assert response.status_code == 202, response.text
    finally:
        release.set()
