"""Decoding work is bounded whatever the bytes: every way in decodes untrusted images in child
processes whose CPU time the kernel cuts off (``MAX_DECODE_SECONDS``), refused as ``decode_too_slow``.

The slow inputs break no rule that can be counted before decoding: millions of empty JPEG comment
segments, or of empty private PNG chunks, which Pillow's header parsers walk in Python (seconds of
CPU for 16 MB). At ``MAX_DECODE_SECONDS=1`` each is stopped after a second or two of CPU time.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from processor.core.decoding import DecodePool
from processor.devtools.hostile_images import chunk_flood, photo_like, segment_flood
from processor.domain.errors import InvalidInput, TransientError
from processor.domain.images import ImageLimits
from tests.conftest import DEADLINE, Harness, StorageServer, png_bytes, wait_for

ONE_SECOND = ImageLimits(max_decode_seconds=1)


def slow_jpeg() -> bytes:
    return segment_flood(4_000_000)  # 16 MB: about 4 s of CPU here, so well past 1 s on a faster machine


def photo_png(size: int = 256) -> bytes:
    buffer = io.BytesIO()
    photo_like(size, size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def pool() -> Any:
    decoding = DecodePool(1)
    yield decoding
    decoding.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def alive_child(pid: int) -> bool:
    """Whether our child ``pid`` has not yet ended for good: until it can be reaped. Its /proc state
    reads ``Z`` as soon as its main thread exits, while any other thread of it may still hold
    its end of the pipes; only then does the pool see it gone (``waitid`` with ``WNOWAIT`` looks
    without reaping it)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False  # reaped already


@pytest.mark.parametrize(
    "make", [slow_jpeg, lambda: chunk_flood(1_400_000)], ids=["jpeg-segments", "png-chunks"]
)
def test_an_image_slower_to_decode_than_its_cpu_time_is_refused_and_the_pool_goes_on(
    pool: DecodePool, make: Callable[[], bytes]
) -> None:
    async def scenario() -> None:
        with pytest.raises(InvalidInput) as refused:
            await pool.check(make(), ONE_SECOND)
        assert refused.value.reason == "decode_too_slow"
        assert "1 s of CPU time" in refused.value.message
        # The stopped child was replaced: the next image decodes, pixels and all.
        image = await pool.decode(photo_png(), ONE_SECOND)
        assert (image.mode, image.size) == ("RGB", (256, 256))

    asyncio.run(scenario())


def test_the_decoders_refusals_come_back_with_their_reason(pool: DecodePool) -> None:
    from processor.devtools.hostile_images import HIDING_PLACES, scan_bomb

    with pytest.raises(InvalidInput) as refused:
        pool.decode_blocking(HIDING_PLACES["junk-after-app0"](scan_bomb(256, 3000)), ImageLimits())
    assert refused.value.reason == "too_many_scans"
    with pytest.raises(InvalidInput) as refused:
        pool.decode_blocking(png_bytes()[:60], ImageLimits())
    assert refused.value.reason == "truncated_image"
    assert pool.decode_blocking(png_bytes((40, 64)), ImageLimits()).size == (40, 64)


def test_cancelling_a_decode_kills_its_process_and_frees_its_place(pool: DecodePool) -> None:
    async def scenario() -> None:
        pool.start()
        (first,) = pool.pids
        decoding = asyncio.ensure_future(pool.check(slow_jpeg(), ImageLimits(max_decode_seconds=600)))
        await asyncio.to_thread(wait_for, lambda: pool.busy == 1, what="the decode to start")
        decoding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await decoding
        await asyncio.to_thread(wait_for, lambda: not alive(first), what="the decoding child to be killed")
        # The one place is free again (else this would wait for the 600 s decode).
        assert (await pool.decode(photo_png(64), ImageLimits())).size == (64, 64)
        assert first not in pool.pids

    asyncio.run(scenario())


def test_a_child_killed_while_idle_is_replaced_without_blaming_the_next_image(pool: DecodePool) -> None:
    pool.start()
    (idle,) = pool.pids
    os.kill(idle, signal.SIGKILL)  # the OOM killer's way
    wait_for(lambda: not alive_child(idle), what="the idle child to die")
    assert pool.decode_blocking(png_bytes(), ImageLimits()).size == (64, 48)
    assert idle not in pool.pids


def test_a_decoding_child_runs_on_one_thread(pool: DecodePool) -> None:
    """One image at a time: no thread pool per core (OpenBLAS's, through numpy) idles in each child."""
    assert pool.decode_blocking(photo_png(64), ImageLimits()).size == (64, 64)
    (child,) = pool.pids
    assert psutil.Process(child).num_threads() == 1


def test_a_decoder_that_crashes_its_process_is_corrupt_image(pool: DecodePool) -> None:
    async def scenario() -> None:
        decoding = asyncio.ensure_future(pool.check(slow_jpeg(), ImageLimits(max_decode_seconds=600)))
        await asyncio.to_thread(wait_for, lambda: pool.busy == 1, what="the decode to start")
        (child,) = pool.pids
        os.kill(child, signal.SIGSEGV)  # as a decoder bug on crafted bytes would end it
        with pytest.raises(InvalidInput) as refused:
            await decoding
        assert refused.value.reason == "corrupt_image"
        assert (await pool.decode(photo_png(64), ImageLimits())).size == (64, 64)

    asyncio.run(scenario())


def test_a_decode_that_keeps_computing_is_never_cut_short_by_wall_time() -> None:
    # A stall window far shorter than the decode: a child that keeps using the CPU is stopped only by
    # its CPU limit, so the verdict is the image's, however loaded the machine (a wall-clock deadline
    # once turned decode_too_slow into transient_error under load).
    pool = DecodePool(1, stall_seconds=0.2)
    try:
        with pytest.raises(InvalidInput) as refused:
            pool.decode_blocking(slow_jpeg(), ImageLimits(max_decode_seconds=1))
        assert refused.value.reason == "decode_too_slow"
    finally:
        pool.close()


def test_a_decoder_that_stops_using_the_cpu_is_killed_as_transient_and_frees_its_place() -> None:
    pool = DecodePool(1, stall_seconds=1)

    async def scenario() -> None:
        decoding = asyncio.ensure_future(pool.check(slow_jpeg(), ImageLimits(max_decode_seconds=600)))
        await asyncio.to_thread(wait_for, lambda: pool.busy == 1, what="the decode to start")
        (child,) = pool.pids
        os.kill(child, signal.SIGSTOP)  # a hung decoder, or a machine that gives it no CPU at all
        with pytest.raises(TransientError) as stalled:
            await decoding
        assert "used no CPU time for 1 s" in stalled.value.message
        assert not alive_child(child)
        assert (await pool.decode(photo_png(64), ImageLimits())).size == (64, 64)

    try:
        asyncio.run(scenario())
    finally:
        pool.close()


def test_a_decoder_killed_from_outside_is_transient_not_the_images_fault(pool: DecodePool) -> None:
    async def scenario() -> None:
        decoding = asyncio.ensure_future(pool.check(slow_jpeg(), ImageLimits(max_decode_seconds=600)))
        await asyncio.to_thread(wait_for, lambda: pool.busy == 1, what="the decode to start")
        (child,) = pool.pids
        os.kill(child, signal.SIGKILL)  # the out-of-memory killer's way
        # Before: corrupt_image, a request failed for good for a machine's lack of memory.
        with pytest.raises(TransientError, match="killed from outside"):
            await decoding
        assert (await pool.decode(photo_png(64), ImageLimits())).size == (64, 64)

    asyncio.run(scenario())


@pytest.mark.service  # starts Python in a subprocess
def test_a_process_that_decoded_ends_its_decoding_children_when_it_exits() -> None:
    script = (
        "import io\n"
        "from PIL import Image\n"
        "from processor.core.decoding import shared_pool\n"
        "from processor.domain.images import ImageLimits\n"
        "data = io.BytesIO()\n"
        "Image.new('RGB', (40, 40)).save(data, format='PNG')\n"
        "print(shared_pool().decode_blocking(data.getvalue(), ImageLimits()).size)\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    ended = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script],
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == "(40, 40)"
    # Before: "ResourceWarning: subprocess ... is still running" and its unclosed pipes, at every exit.
    assert "ResourceWarning" not in ended.stderr, ended.stderr


def test_the_worker_fails_a_request_whose_input_decodes_too_slowly(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(max_decode_seconds=1)
    user = make_user()
    slow = harness.insert(user, [harness.upload(user, "slow.jpg", slow_jpeg(), "image/jpeg")])
    good = harness.insert(user, [harness.upload(user, "good.png", png_bytes())])
    row = harness.wait_status(slow, "failed", "succeeded")
    assert (row["status"], row["error_code"], row["attempts"]) == ("failed", "decode_too_slow", 1)
    assert harness.wait_status(good, "succeeded", "failed")["status"] == "succeeded"


def test_rest_refuses_an_upload_that_decodes_too_slowly(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID]
) -> None:
    harness = start_processor(rest=True, max_decode_seconds=1)
    token = harness.storage.token(make_user())
    response = httpx.post(
        f"{harness.served.url}/v1/edits",
        json={"prompt": "make it blue", "image": base64.b64encode(slow_jpeg()).decode()},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "decode_too_slow"


def test_mcp_refuses_an_image_that_decodes_too_slowly(
    database_url: str, storage_server: StorageServer, make_user: Callable[[], uuid.UUID]
) -> None:
    # The stdio server (in process): over streamable HTTP the MCP SDK caps a request at 4 MiB,
    # smaller than the slow file; validation is the same UserActions either way.
    from mcp.client import Client

    from processor.adapters.postgres.changes import PostgresRowChanges
    from processor.adapters.postgres.requests import EditRequests
    from processor.core.user_actions import UserActions
    from processor.entrypoints.auth import TokenVerifier
    from processor.entrypoints.mcp_tools import create_mcp_server
    from tests.test_mcp_tools import text_of

    server = create_mcp_server(
        UserActions(
            EditRequests(database_url),
            storage_server.adapter(),
            ONE_SECOND,
            PostgresRowChanges(database_url),
        ),
        TokenVerifier(jwt_secret=storage_server.jwt_secret),
        stdio_token=storage_server.token(make_user()),
        open_resources=True,
    )
    image = base64.b64encode(slow_jpeg()).decode()

    async def main() -> Any:
        async with Client(server) as client:
            return await client.call_tool("edit_image", {"prompt": "x", "image_base64": image})

    result = asyncio.run(main())
    assert result.is_error and "decode_too_slow: decoding the image took more than 1 s" in text_of(result)


def test_runpod_returns_decode_too_slow(tiny_editor: Any) -> None:
    from processor.composition import build_runpod_handler
    from processor.settings import load_settings

    handler = build_runpod_handler(
        load_settings(max_decode_seconds=1), tiny_editor, report=lambda job, update: None
    )
    image = base64.b64encode(slow_jpeg()).decode()
    output = asyncio.run(handler({"id": "job-1", "input": {"prompt": "x", "image": image}}))
    assert output["error_code"] == "decode_too_slow"


def test_the_cli_refuses_an_image_that_decodes_too_slowly(tmp_path: Path) -> None:
    from processor.cli import app

    slow = tmp_path / "slow.jpg"
    slow.write_bytes(slow_jpeg())
    result = CliRunner().invoke(
        app,
        ["edit", "--image", str(slow), "--prompt", "x", "--out", str(tmp_path / "out.png")],
        env={"MAX_DECODE_SECONDS": "1"},
    )
    assert result.exit_code == 2
    assert "decode_too_slow" in result.output and "Traceback" not in result.output
