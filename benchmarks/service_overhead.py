"""The service's own cost per job, with the tiny model: everything but the model itself.

    python benchmarks/service_overhead.py [--sequential 40] [--burst 100] [--steps 2]

Runs the real stack in one process on this machine: a scratch PostgreSQL database with the
migrations, the Storage-compatible server over HTTP, and the processor (HTTP app + worker),
woken by webhooks as pg_net would send them (LISTEN and sweep off, so only the webhook counts).

- sequential: one request at a time on an idle worker: webhook-to-claim latency (webhook
  POST sent → the row's ``started_at``) and overhead per job;
- burst: all requests inserted at once, one webhook each: throughput and overhead per job.

Overhead per job = claim-to-complete (``finished_at - started_at``) minus the seconds spent
inside ``Editor.edit``: download, decode, encode, upload, heartbeats and the SQL calls.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image
from psycopg.rows import dict_row

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.tiny_model import save_tiny_model
from processor.adapters.postgres.queue import PostgresJobQueue
from processor.adapters.supabase_storage import SupabaseObjectStorage
from processor.composition import worker_config
from processor.core.service import ProcessorService
from processor.devtools import localdb
from processor.devtools.serving import serve_in_thread
from processor.domain.ports.editor import EditResult, PreviewSink, ProgressCallback
from processor.domain.request import EditParams
from processor.entrypoints.http_app import create_app
from processor.settings import load_settings

ADMIN = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVICE_KEY = "sb_secret_benchmark-key-0123456789"
JWT_SECRET = "benchmark-jwt-secret-at-least-32-characters"
WEBHOOK_SECRET = "benchmark-webhook-secret"


class TimedEditor:
    """Records the seconds each edit spends inside the model, by request seed."""

    def __init__(self, inner: DiffusersEditor) -> None:
        self.inner = inner
        self.seconds: dict[int, float] = {}
        self._lock = threading.Lock()

    def describe(self) -> Mapping[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
    ) -> EditResult:
        started = time.perf_counter()
        result = self.inner.edit(images, params, on_progress=on_progress, cancel=cancel, previews=previews)
        with self._lock:
            self.seconds[result.seed] = time.perf_counter() - started
        return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(url: str, key: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p95 {cuts[94] * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=40)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    name = f"qep_bench_{uuid.uuid4().hex[:8]}"
    dsn = localdb.build_migrated_database(ADMIN, name)
    workdir = Path(tempfile.mkdtemp(prefix="qep-bench-"))
    # Storage runs in its own process, as Supabase Storage would: its CPU is not the service's.
    storage_port = _free_port()
    storage_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "processor",
            "storage-server",
            "--root",
            str(workdir / "objects"),
            "--port",
            str(storage_port),
        ],
        env={
            **os.environ,
            "DATABASE_URL": dsn,
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            "SUPABASE_JWT_SECRET": JWT_SECRET,
        },
    )
    storage_url = f"http://127.0.0.1:{storage_port}"
    _wait_until_up(f"{storage_url}/storage/v1/bucket", SERVICE_KEY)
    editor = TimedEditor(DiffusersEditor.load(save_tiny_model(workdir / "tiny"), device="cpu"))
    settings = load_settings(
        database_url=dsn,
        supabase_url=storage_url,
        supabase_service_role_key=SERVICE_KEY,
        webhook_secret=WEBHOOK_SECRET,
        sweep_interval_seconds=3600,
        log_level="warning",
    )
    service = ProcessorService(
        worker_config(settings),
        queue=PostgresJobQueue(dsn),
        storage=SupabaseObjectStorage(storage_url, SERVICE_KEY),
        editor_factory=lambda: editor,
    )
    app = serve_in_thread(create_app(service, webhook_secret=settings.webhook_secret))
    db = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)
    client = httpx.Client()
    try:
        while client.get(f"{app.url}/readyz").status_code != 200:
            time.sleep(0.05)
        user = db.execute(
            "insert into auth.users (email) values ('bench@example.test') returning id"
        ).fetchone()
        assert user is not None
        user_id = user["id"]
        buffer = io.BytesIO()
        Image.new("RGB", (64, 48), (10, 120, 200)).save(buffer, format="PNG")
        path = f"{user_id}/input.png"
        client.post(
            f"{storage_url}/storage/v1/object/edit-inputs/{path}",
            headers={"Authorization": f"Bearer {SERVICE_KEY}"},
            files={"file": ("input.png", buffer.getvalue(), "image/png")},
        ).raise_for_status()

        seed = iter(range(1, 1_000_000))

        def insert() -> uuid.UUID:
            row = db.execute(
                "insert into edit_requests (user_id, prompt, input_paths, num_inference_steps, seed) "
                "values (%s, 'make it blue', %s, %s, %s) returning id",
                (user_id, [path], args.steps, next(seed)),
            ).fetchone()
            assert row is not None
            return uuid.UUID(str(row["id"]))

        def webhook(request_id: uuid.UUID) -> float:
            sent = time.time()
            client.post(
                f"{app.url}/webhooks/edit-requests",
                json={
                    "type": "INSERT",
                    "table": "edit_requests",
                    "schema": "public",
                    "record": {"id": str(request_id)},
                },
                headers={"X-Webhook-Secret": WEBHOOK_SECRET},
            ).raise_for_status()
            return sent

        def wait_done(ids: list[uuid.UUID]) -> list[dict[str, Any]]:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                rows = db.execute(
                    "select id, status, seed, started_at, finished_at from edit_requests where id = any(%s)",
                    (ids,),
                ).fetchall()
                if all(r["status"] in ("succeeded", "failed") for r in rows):
                    return rows
                time.sleep(0.005)
            raise TimeoutError("requests did not finish")

        def overheads(rows: list[dict[str, Any]]) -> list[float]:
            return [
                (r["finished_at"] - r["started_at"]).total_seconds() - editor.seconds[r["seed"]]
                for r in rows
                if r["status"] == "succeeded"
            ]

        # Warm the path once (first HTTP connections, first edit).
        first = insert()
        webhook(first)
        wait_done([first])

        claim_latencies: list[float] = []
        sequential_rows = []
        for _ in range(args.sequential):
            request_id = insert()
            sent = webhook(request_id)
            [row] = wait_done([request_id])
            claim_latencies.append(row["started_at"].timestamp() - sent)
            sequential_rows.append(row)

        burst_ids = [insert() for _ in range(args.burst)]
        began = time.perf_counter()
        for request_id in burst_ids:
            webhook(request_id)
        burst_rows = wait_done(burst_ids)
        burst_wall = time.perf_counter() - began

        edit_seconds = [editor.seconds[r["seed"]] for r in burst_rows]
        print(f"tiny model, {args.steps} steps, CPU; model time per edit: {percentiles(edit_seconds)}")
        print(f"sequential ({args.sequential} requests, idle worker):")
        print(f"  webhook -> claim latency: {percentiles(claim_latencies)}")
        print(f"  service overhead per job: {percentiles(overheads(sequential_rows))}")
        succeeded = sum(r["status"] == "succeeded" for r in burst_rows)
        print(
            f"burst ({args.burst} requests at once): {succeeded} succeeded in {burst_wall:.2f} s, "
            f"{args.burst / burst_wall:.1f} jobs/s"
        )
        print(f"  service overhead per job: {percentiles(overheads(burst_rows))}")
        print("mean seconds per stage, all jobs (from /metrics):")
        for metric in service.metrics.registry.collect():
            if metric.name == "edit_processor_stage_seconds":
                sums = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_sum")}
                counts = {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith("_count")}
                print("  " + ", ".join(f"{k} {1000 * sums[k] / counts[k]:.1f} ms" for k in sums if counts[k]))
    finally:
        client.close()
        db.close()
        app.stop()
        storage_process.terminate()
        storage_process.wait(30)
        localdb.drop_database(ADMIN, name)


if __name__ == "__main__":
    main()
