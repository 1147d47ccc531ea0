"""`edit-processor dev` runs the whole product locally, shows every way in, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import json
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
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jwt
import psycopg
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from processor.devtools.dev import sample_image
from tests.conftest import ADMIN_DSN, DEADLINE

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


# A JWT (access tokens, Storage's signed-URL tokens) or a credential in a query string.
SECRET_SHAPES = re.compile(
    r"eyJ[\w-]{4,}\.[\w-]{4,}\.|[?&](?:token|apikey|key)=(?!\[redacted\])|sb_secret_\w"
)


@pytest.mark.model  # the command builds and runs the tiny model in its own process
def test_dev_edits_a_sample_and_drops_its_database(tmp_path: Path) -> None:
    done = subprocess.run(dev_command(tmp_path), env=dev_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stderr
    assert Image.open(tmp_path / "edited.png").format == "PNG"
    # Only what this run made: other runs on the machine may hold databases of their own.
    made = SCRATCH.search(done.stderr)
    assert made is not None, done.stderr
    assert not database_exists(made.group(1))


@pytest.mark.model  # the command builds and runs the tiny model in its own process
def test_dev_says_what_it_does_and_logs_no_secret_and_no_health_poll(tmp_path: Path) -> None:
    # One sample edit printed 209 lines: a Rich-formatted INFO line per HTTP request (~35 of them
    # `GET /readyz 503` while the model loaded) and the output's signed URL with its token.
    done = subprocess.run(dev_command(tmp_path), env=dev_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    # Rich wraps long lines: a token cut in two must be found too.
    assert SECRET_SHAPES.search(re.sub(r"\s+", "", output)) is None, output
    assert re.search(r"GET \S*/readyz", output) is None and "HTTP Request" not in output, output
    assert "Webhooks" in output and "127.0.0.1" in output  # the banner says loopback receivers work
    assert len(output.splitlines()) < 25, output


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


@contextmanager
def receiver() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    """An HTTP server on 127.0.0.1 that answers 204 and queues what it was sent."""
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.put({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()


def exported(line: str) -> dict[str, Any]:
    words = shlex.split(line)
    assert words[0] == "export", line
    return dict(word.split("=", 1) for word in words[1:])


@pytest.mark.model  # the command builds and runs the tiny model in its own process
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
    page = re.search(r"(http://127\.0\.0\.1:\d+/try/)", lines.until(r"^# In a browser: "))
    sign_in = shlex.split(lines.until(r"^curl -s .*/auth/v1/token\?grant_type=password"))
    rest = lines.until(r"^curl -s -H .* -F prompt=")
    stream_token = lines.until(r"^curl -s -X POST -H .*/stream-token$")
    mcp = lines.until(r"^npx -y @modelcontextprotocol/inspector@\d+\.\d+\.\d+ --cli ")
    lines.until(r"X-Webhook-Secret")
    lines.until(r"^edit-processor runpod --test_input ")

    # Each command is one line, pasteable as printed: the URLs in it answer with the printed token.
    url = re.search(r"(http://127\.0\.0\.1:\d+)/v1/edits", rest)
    assert url is not None, rest
    view = httpx.get(f"{url.group(1)}/v1/edits/{request_id}", headers={"Authorization": f"Bearer {token}"})
    assert view.status_code == 200 and view.json()["status"] == "succeeded", view.text
    # The try page is up, and its user signs in as the printed line does, as against Supabase Auth;
    # the sample edit is that user's.
    assert page is not None and httpx.get(page.group(1)).status_code == 200
    signed_in = httpx.post(
        f"{env['SUPABASE_URL']}/auth/v1/token?grant_type=password",
        headers={"apikey": env["SUPABASE_ANON_KEY"]},
        json=json.loads(sign_in[sign_in.index("-d") + 1]),
    )
    assert signed_in.status_code == 200, signed_in.text
    access = signed_in.json()["access_token"]
    mine = httpx.get(f"{url.group(1)}/v1/edits/{request_id}", headers={"Authorization": f"Bearer {access}"})
    assert mine.status_code == 200, mine.text
    minted = httpx.post(
        shlex.split(stream_token)[-1].replace("<id>", request_id),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert minted.status_code == 200, minted.text
    with httpx.stream(
        "GET", minted.json()["events_url"], timeout=60
    ) as events:  # no header: the URL opens it
        assert events.status_code == 200 and any(
            line.startswith("event: done") for line in events.iter_lines()
        )
    mcp_url = shlex.split(mcp)[4]
    assert "edit_image" in list_mcp_tools(mcp_url, token)

    # A completion webhook reaches a receiver on this machine as dev starts (no flags, no SQL).
    with receiver() as (hook_url, received):
        user = jwt.decode(token, options={"verify_signature": False})["sub"]
        with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
            row = conn.execute(
                "insert into edit_webhook_endpoints (user_id, url) values (%s, %s) returning id",
                (user, hook_url),
            ).fetchone()
        assert row is not None
        submitted = httpx.post(
            f"{url.group(1)}/v1/edits",
            json={
                "prompt": "make it blue",
                "image": base64.b64encode(sample_image()).decode(),
                "num_inference_steps": 2,
                "webhook_endpoint_id": str(row[0]),
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        assert submitted.status_code == 202, submitted.text
        delivery = received.get(timeout=180)
        assert delivery["headers"]["webhook-id"]
        assert json.loads(delivery["body"])["data"]["id"] == submitted.json()["id"]

    process.send_signal(signal.SIGTERM)
    assert process.wait(DEADLINE) == 0, "".join(lines.seen)
    assert not database_exists(name.group(1))
