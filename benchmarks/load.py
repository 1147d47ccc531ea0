"""Load: a burst of requests drained by several worker processes, checked for exactly-once.

    python benchmarks/load.py [--requests 2000] [--workers 4] [--malformed 0.1] [--steps 2]

Runs the real stack on this machine: a scratch PostgreSQL database with the migrations,
the Storage-compatible server in its own process, and ``--workers`` processor processes
(``edit-processor serve``: HTTP app + worker, woken by LISTEN/NOTIFY and the sweep) on the
tiny model at its smallest size (64×64, 2 steps). All requests are inserted in one
statement, as a burst. Two runs: all inputs good, then ``--malformed`` of them bad (zero
bytes, truncated PNG, a text file, an animated PNG).

Checks (the benchmark exits non-zero when one fails): every good request ``succeeded``
and every bad one ``failed`` with its reason code; one attempt each; exactly one output
object per success and none for failures.

Prints: throughput; overhead per job (claim to complete minus the model's own time, as
recorded in ``result.timings.total``); claim latency, the time a worker that just finished
a job takes to hold its next one (``finished_at`` of one job to ``started_at`` of the
same worker's next, under a full queue); the p50/p95/p99 of each.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg
from PIL import Image
from psycopg.rows import dict_row
from scratch import ScratchDatabases

from processor.adapters.diffusers.tiny_model import save_tiny_model

SERVICE_KEY = "sb_secret_benchmark-key-0123456789"
JWT_SECRET = "benchmark-jwt-secret-at-least-32-characters"
WEBHOOK_SECRET = "benchmark-webhook-secret"


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _animated_png() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (64, 64), (80 * i, 0, 0)) for i in range(3)]
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


MALFORMED: dict[str, tuple[bytes, str]] = {
    # object name -> (bytes, the reason code the request must fail with)
    "zero-bytes.png": (b"", "empty_image"),
    "truncated.png": (_png((64, 64), (200, 30, 30))[:60], "truncated_image"),
    "text.png": (b"this is not an image, only its name says so\n" * 4, "unknown_format"),
    "animated.png": (_animated_png(), "animated_image"),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(check: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(what)


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p95 {cuts[94] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"


class Stack:
    """A scratch database, the Storage server and N processor processes."""

    def __init__(self, workers: int, workdir: Path, scratch: ScratchDatabases) -> None:
        self.dsn = scratch.migrated("load")
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            self._start_all(workers, workdir)
        except BaseException:
            self.close()  # a process that would not come up: stop the others before the database goes
            raise

    def _start_all(self, workers: int, workdir: Path) -> None:
        storage_port = _free_port()
        self.storage_url = f"http://127.0.0.1:{storage_port}"
        env = {
            **os.environ,
            "DATABASE_URL": self.dsn,
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            "SUPABASE_JWT_SECRET": JWT_SECRET,
        }
        self._start(["storage-server", "--root", str(workdir / "objects"), "--port", str(storage_port)], env)
        _wait_for(
            lambda: (
                httpx.get(
                    f"{self.storage_url}/storage/v1/bucket",
                    headers={"Authorization": f"Bearer {SERVICE_KEY}"},
                ).status_code
                == 200
            ),
            "the Storage server",
        )
        model = save_tiny_model(workdir / "tiny")
        self.worker_urls = []
        for index in range(workers):
            port = _free_port()
            self.worker_urls.append(f"http://127.0.0.1:{port}")
            self._start(
                ["serve"],
                {
                    **env,
                    "SUPABASE_URL": self.storage_url,
                    "WEBHOOK_SECRET": WEBHOOK_SECRET,
                    "MODEL_ID": str(model),
                    "DEVICE": "cpu",
                    "WORKER_ID": f"load-{index}",
                    "PORT": str(port),
                    "LOG_LEVEL": "warning",
                    "HF_HUB_OFFLINE": "1",
                    # Several processes share two cores: one thread each avoids oversubscription.
                    "OMP_NUM_THREADS": "1",
                },
            )
        for url in self.worker_urls:
            _wait_for(lambda url=url: httpx.get(f"{url}/readyz").status_code == 200, f"{url} ready")
        self.db = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)

    def _start(self, command: list[str], env: dict[str, str]) -> None:
        self.processes.append(subprocess.Popen([sys.executable, "-m", "processor", *command], env=env))

    def upload(self, path: str, data: bytes, content_type: str) -> None:
        httpx.post(
            f"{self.storage_url}/storage/v1/object/edit-inputs/{path}",
            headers={"Authorization": f"Bearer {SERVICE_KEY}", "x-upsert": "true"},
            files={"file": (path.rsplit("/", 1)[-1], data, content_type)},
        ).raise_for_status()

    def close(self) -> None:
        db = getattr(self, "db", None)  # not there when a process did not come up
        if db is not None:
            db.close()
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def run(stack: Stack, requests: int, malformed: float, steps: int, label: str) -> bool:
    """One burst; prints its figures and returns whether every check held."""
    user = stack.db.execute("insert into auth.users (email) values (%s) returning id", (f"{label}@x.test",))
    user_id = str(user.fetchone()["id"])  # type: ignore[index]
    good = [f"{user_id}/good-{i}.png" for i in range(8)]
    for index, path in enumerate(good):
        stack.upload(path, _png((64, 64), (30 * index, 120, 200)), "image/png")
    for name, (data, _) in MALFORMED.items():
        stack.upload(f"{user_id}/{name}", data, "image/png")
    bad_count = round(requests * malformed)
    rng = random.Random(7)
    plan = [f"{user_id}/{name}" for name in rng.choices(list(MALFORMED), k=bad_count)]
    plan += rng.choices(good, k=requests - bad_count)
    rng.shuffle(plan)

    began = time.time()
    stack.db.execute(
        "insert into edit_requests (user_id, prompt, input_paths, num_inference_steps, seed) "
        "select %s, 'make it blue', array[path], %s, ordinality "
        "from unnest(%s::text[]) with ordinality as plan(path, ordinality)",
        (user_id, steps, plan),
    )
    deadline = time.monotonic() + 3600
    while True:
        pending = stack.db.execute(
            "select count(*) as n from edit_requests where user_id = %s "
            "and status not in ('succeeded', 'failed', 'canceled')",
            (user_id,),
        ).fetchone()
        if pending is not None and pending["n"] == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the burst did not drain")
        time.sleep(0.2)
    rows = stack.db.execute(
        "select r.*, (select count(*) from storage.objects o "
        "             where o.bucket_id = r.output_bucket and o.name = r.output_path) as outputs "
        "from edit_requests r where user_id = %s",
        (user_id,),
    ).fetchall()
    wall = max(r["finished_at"] for r in rows).timestamp() - began
    outputs_in_bucket = stack.db.execute(
        "select count(*) as n from storage.objects where bucket_id = 'edit-outputs' and name like %s",
        (f"{user_id}/%",),
    ).fetchone()

    expected_reason = {f"{user_id}/{name}": reason for name, (_, reason) in MALFORMED.items()}
    problems: list[str] = []
    statuses = Counter(r["status"] for r in rows)
    for row in rows:
        path = row["input_paths"][0]
        if path in expected_reason:
            if row["status"] != "failed" or row["error_code"] != expected_reason[path]:
                problems.append(f"{row['id']} ({path}): {row['status']} {row['error_code']}")
        elif row["status"] != "succeeded" or row["outputs"] != 1:
            problems.append(f"{row['id']}: {row['status']} with {row['outputs']} outputs ({row['error']})")
        if row["attempts"] != 1:
            problems.append(f"{row['id']}: {row['attempts']} attempts")
    succeeded = statuses["succeeded"]
    if outputs_in_bucket is None or outputs_in_bucket["n"] != succeeded:
        problems.append(f"{outputs_in_bucket} output objects for {succeeded} successes")

    done = [r for r in rows if r["status"] == "succeeded"]
    overhead = [
        (r["finished_at"] - r["started_at"]).total_seconds() - r["result"]["timings"]["total"] for r in done
    ]
    model = [r["result"]["timings"]["total"] for r in done]
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_worker[row["claimed_by"]].append(row)
    claim_gaps = []
    for jobs in by_worker.values():
        jobs.sort(key=lambda r: r["started_at"])
        claim_gaps += [
            (later["started_at"] - earlier["finished_at"]).total_seconds()
            for earlier, later in itertools.pairwise(jobs)
        ]
    failures = Counter(r["error_code"] for r in rows if r["status"] == "failed")

    print(
        f"\n== {label}: {requests} requests, {bad_count} malformed, {len(stack.worker_urls)} worker processes"
    )
    print(f"  outcome: {dict(statuses)}; failure reasons: {dict(failures) or 'none'}")
    print(f"  drained in {wall:.1f} s: {requests / wall:.1f} requests/s ({succeeded / wall:.1f} edits/s)")
    print(f"  model time per edit:      {percentiles(model)}")
    print(f"  overhead per job:         {percentiles(overhead)}")
    print(f"  claim latency (next job): {percentiles(claim_gaps)}")
    print(f"  jobs per worker: {sorted(len(jobs) for jobs in by_worker.values())}")
    print(f"  exactly once: {'yes' if not problems else 'NO'}")
    for problem in problems[:20]:
        print(f"    {problem}")
    return not problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--malformed", type=float, default=0.1, help="share of bad inputs in the second run")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with ScratchDatabases() as scratch:
        stack = Stack(args.workers, Path(tempfile.mkdtemp(prefix="qep-load-")), scratch)
        try:
            held = run(stack, args.requests, 0.0, args.steps, "all good")
            held = run(stack, args.requests, args.malformed, args.steps, "with malformed") and held
        finally:
            stack.close()
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    main()
