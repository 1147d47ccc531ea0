"""Pieces of a local stack for the end-to-end benchmarks: the Storage stand-in in its own process, and
a TCP proxy that delays PostgreSQL's traffic, so that both can stand for a remote Supabase.

Latency means the same on both: ``seconds`` added to every request (Storage: the stand-in waits that
long before answering each HTTP request) and to every round trip (PostgreSQL: half of it each way).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
from psycopg.conninfo import conninfo_to_dict

SERVICE_KEY = "sb_secret_benchmark-key-0123456789"
JWT_SECRET = "benchmark-jwt-secret-at-least-32-characters"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: object, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


class StorageServer:
    """``edit-processor storage-server`` in its own process (as Supabase Storage runs beside, not in,
    the processor), writing ``storage.objects`` in ``database_url`` directly."""

    def __init__(self, database_url: str, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="qep-bench-objects-"))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {SERVICE_KEY}"}
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "processor",
                "storage-server",
                "--root",
                str(self.root),
                "--port",
                str(port),
            ],
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
                "SUPABASE_JWT_SECRET": JWT_SECRET,
                "LOG_LEVEL": "warning",
            },
        )
        try:
            wait_until(
                lambda: httpx.get(f"{self.url}/storage/v1/bucket", headers=self.headers).status_code == 200,
                "the Storage server",
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> StorageServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def upload(self, bucket: str, path: str, data: bytes, content_type: str) -> None:
        httpx.post(
            f"{self.url}/storage/v1/object/{bucket}/{path}",
            headers={**self.headers, "x-upsert": "true"},
            files={"file": (path.rsplit("/", 1)[-1], data, content_type)},
            timeout=60,
        ).raise_for_status()

    def download(self, bucket: str, path: str) -> bytes:
        response = httpx.get(
            f"{self.url}/storage/v1/object/{bucket}/{path}", headers=self.headers, timeout=60
        )
        response.raise_for_status()
        return response.content

    def set_latency(self, seconds: float) -> None:
        httpx.post(f"{self.url}/__faults", headers=self.headers, json={"latency": seconds}).raise_for_status()


class LatencyProxy:
    """A TCP proxy in front of PostgreSQL that holds every chunk ``latency / 2`` in each direction,
    in order; ``url`` is ``database_url`` through it. Runs its own event loop in a thread."""

    def __init__(self, database_url: str) -> None:
        params = conninfo_to_dict(database_url)
        host = str(params.get("host") or "127.0.0.1")
        port = int(params.get("port") or 5432)
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._upstream = (host, port)
        self.latency = 0.0
        self.port = free_port()
        self.url = _through(database_url, self.port)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the latency proxy did not start")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sink.write(data)
                await sink.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await source.read(65536):
                chunks.put_nowait((time.monotonic() + self.latency / 2, data))
        except ConnectionError:
            pass
        finally:
            chunks.put_nowait((0.0, b""))
            with contextlib.suppress(Exception):
                await delivering
            with contextlib.suppress(Exception):
                sink.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _through(database_url: str, port: int) -> str:
    """``database_url`` pointed at the proxy on 127.0.0.1:``port`` (same database, user and options)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(database_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
    user = parts.username or "postgres"
    password = f":{parts.password}" if parts.password else ""
    return urlunsplit(parts._replace(netloc=f"{user}{password}@127.0.0.1:{port}", query=urlencode(query)))
