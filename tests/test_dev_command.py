"""`edit-processor dev` runs the whole product locally, shows every way in, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psycopg
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from tests.conftest import ADMIN_DSN

SCRATCH = re.compile(r"Scratch database\s+(qep_dev_[0-9a-f]{8})")


def dev_command(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "processor",
        "dev",
        "--out",
        str(tmp_path / "edited.png"),
        "--steps",
        "3",
        "--workdir",
        str(tmp_path / ".dev"),
        *extra,
    ]


def dev_env() -> dict[str, str]:
    env = {**os.environ, "TEST_ADMIN_DATABASE_URL": ADMIN_DSN, "HF_HUB_OFFLINE": "1"}
    env.pop("MODEL_ID", None)
    return env


def database_exists(name: str) -> bool:
    with psycopg.connect(ADMIN_DSN) as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


@pytest.mark.slow
def test_dev_edits_a_sample_and_drops_its_database(tmp_path: Path) -> None:
    done = subprocess.run(dev_command(tmp_path), env=dev_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stderr
    assert Image.open(tmp_path / "edited.png").format == "PNG"
    # Only what this run made: other runs on the machine may hold databases of their own.
    made = SCRATCH.search(done.stderr)
    assert made is not None, done.stderr
    assert not database_exists(made.group(1))


class Lines:
    """The lines a process writes to stderr, readable with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stderr is not None
        stream = process.stderr
        threading.Thread(target=lambda: [self._queue.put(line) for line in stream], daemon=True).start()

    def until(self, pattern: str, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.seen)}")


@pytest.fixture
def kept_running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    process = subprocess.Popen(
        dev_command(tmp_path, "--keep-running"),
        env=dev_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, Lines(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def list_mcp_tools(url: str, token: str) -> list[str]:
    async def main() -> list[str]:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            return [tool.name for tool in (await client.list_tools()).tools]

    return asyncio.run(main())


def exported(line: str) -> dict[str, Any]:
    words = shlex.split(line)
    assert words[0] == "export", line
    return dict(word.split("=", 1) for word in words[1:])


@pytest.mark.slow
def test_dev_keep_running_prints_every_way_in_ready_to_paste_and_sigterm_cleans_up(
    kept_running: tuple[subprocess.Popen[str], Lines],
) -> None:
    process, lines = kept_running
    name = SCRATCH.search(lines.until(r"Scratch database"))
    assert name is not None
    request_id = lines.until(r"Submitted ").split()[1].rstrip(":")
    token = exported(lines.until(r"^export TOKEN="))["TOKEN"]
    env = exported(lines.until(r"^export DATABASE_URL="))
    assert {"DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "WEBHOOK_SECRET"} <= env.keys()
    rest = lines.until(r"^curl -s -H .* -F prompt=")
    mcp = lines.until(r"^npx @modelcontextprotocol/inspector --cli ")
    lines.until(r"X-Webhook-Secret")
    lines.until(r"^edit-processor runpod --test_input ")

    # Each command is one line, pasteable as printed: the URLs in it answer with the printed token.
    url = re.search(r"(http://127\.0\.0\.1:\d+)/v1/edits", rest)
    assert url is not None, rest
    view = httpx.get(f"{url.group(1)}/v1/edits/{request_id}", headers={"Authorization": f"Bearer {token}"})
    assert view.status_code == 200 and view.json()["status"] == "succeeded", view.text
    mcp_url = shlex.split(mcp)[3]
    assert "edit_image" in list_mcp_tools(mcp_url, token)

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, "".join(lines.seen)
    assert not database_exists(name.group(1))
