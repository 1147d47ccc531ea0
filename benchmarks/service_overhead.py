"""The service's own cost per job at the sizes users send: everything but the GPU's work, stage by stage.

    python benchmarks/service_overhead.py [--sequential 12] [--burst 20] [--formats png,jpeg] [--json PATH]

Runs the real stack on this machine: a scratch PostgreSQL database with the migrations, the Storage
stand-in in its own process, and the processor (HTTP app + worker) in this one, woken by webhooks as
pg_net sends them (LISTEN and the sweep off, so only the webhook counts). The engine is the real
diffusers pipeline on the tiny model at the real model's sizes with its GPU work simulated at zero
seconds (``simulated_gpu.py``): 1024² photo-like inputs (``photos.py``), PNG and JPEG, edited on the
``fast`` preset into 1 MP outputs.

- sequential: one request at a time on an idle worker, per input format: webhook-to-claim latency and
  every stage of each job, median [min-max] over the jobs:
  download, decode, preprocess (inside the engine: diffusers' resize and preprocessing, the Qwen2-VL
  processor), the engine call (simulated device work at 0 s plus the real tiny text encoder),
  postprocess (the output tensor to a picture), encode (the worker's PNG), upload, each database call
  (claim, heartbeats, complete, preview), and the preview clean-up;
- burst: ``--burst`` requests at once, one webhook each: jobs/s and overhead per job;
- encode at each level: the sequential run's outputs encoded again as PNG (levels 1, 3, 6, 9), JPEG
  and WebP, as ``processor.domain.images.encode_image`` does: time and size.

Stage times come from the worker's own ``edit_processor_stage_seconds`` (its change over each job, one
job at a time; the engine's ``preprocessing`` before its lock and ``postprocessing`` after it among
them) and from timers around the adapters' calls, installed here; nothing in ``processor/`` changes. Service overhead per job = claim-to-complete minus
the engine call: download, decode, encode, upload, heartbeats and the SQL calls.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
import simulated_gpu
from photos import encoded, photo
from PIL import Image
from psycopg.rows import dict_row
from scratch import ScratchDatabases
from stack import SERVICE_KEY, StorageServer

from processor.adapters.diffusers.engine import DiffusersEditor
from processor.adapters.diffusers.loras import LoraSource
from processor.adapters.postgres.queue import PostgresJobQueue
from processor.adapters.supabase_storage import SupabaseObjectStorage
from processor.composition import worker_config
from processor.core.service import ProcessorService
from processor.devtools.serving import serve_in_thread
from processor.entrypoints.http_app import create_app
from processor.settings import load_settings

WEBHOOK_SECRET = "benchmark-webhook-secret"
INPUTS = 6
QUEUE_CALLS = ("claim", "heartbeat", "complete", "preview", "fail", "release")
STORAGE_CALLS = ("download", "upload", "delete_many")
STAGES = ("download", "decode", "edit", "encode", "upload", "total")
ENCODINGS: dict[str, dict[str, Any]] = {
    "png level 1": {"format": "PNG", "compress_level": 1},
    "png level 3": {"format": "PNG", "compress_level": 3},
    "png level 6 (Pillow's default)": {"format": "PNG", "compress_level": 6},
    "png level 9": {"format": "PNG", "compress_level": 9},
    "jpeg q90": {"format": "JPEG", "quality": 90, "subsampling": 0},
    "jpeg q95": {"format": "JPEG", "quality": 95, "subsampling": 0},
    "webp q90": {"format": "WEBP", "quality": 90, "method": 4},
}


class Probe:
    """Per-job costs: the worker's stage histogram's change, and timers around calls."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self._calls: list[tuple[str, float]] = []
        self._before: dict[str, float] = {}

    def wrap_async(self, target: Any, prefix: str, names: tuple[str, ...]) -> None:
        for name in names:
            method = getattr(target, name, None)
            if method is None:
                continue

            @functools.wraps(method)
            async def timed(
                *args: Any, _method: Any = method, _name: str = f"{prefix}{name}", **kwargs: Any
            ) -> Any:
                started = time.perf_counter()
                try:
                    return await _method(*args, **kwargs)
                finally:
                    self._calls.append((_name, time.perf_counter() - started))

            setattr(target, name, timed)

    def _stage_sums(self, suffix: str = "_sum") -> dict[str, float]:
        for metric in self._registry.collect():
            if metric.name == "edit_processor_stage_seconds":
                return {s.labels["stage"]: s.value for s in metric.samples if s.name.endswith(suffix)}
        return {}

    def jobs_ended(self) -> float:
        """Jobs the worker has seen to their end (stage ``total`` is recorded last, after the clean-up)."""
        return self._stage_sums("_count").get("total", 0.0)

    def wait_for_end(self, ended_before: float) -> None:
        deadline = time.monotonic() + 60
        while self.jobs_ended() <= ended_before:
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not finish the job")
            time.sleep(0.002)

    def begin(self) -> None:
        self._calls.clear()
        self._before = self._stage_sums()

    def end(self) -> dict[str, float]:
        after = self._stage_sums()
        costs = {f"stage {k}": v - self._before.get(k, 0.0) for k, v in after.items()}
        for name, seconds in list(self._calls):
            costs[name] = costs.get(name, 0.0) + seconds
        return costs


def spread_ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    scaled = [1000 * v for v in values]
    return f"{statistics.median(scaled):8.1f} [{min(scaled):.1f}-{max(scaled):.1f}]"


def summary_ms(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    scaled = [1000 * v for v in values]
    return {"median": statistics.median(scaled), "min": min(scaled), "max": max(scaled), "n": len(scaled)}


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:.1f} ms, p95 {cuts[94] * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"


ROWS: list[tuple[str, Callable[[dict[str, float]], float | None]]] = [
    ("webhook -> claim", lambda c: c.get("webhook->claim")),
    ("download", lambda c: c.get("storage.download")),
    ("decode", lambda c: c.get("stage decode")),
    ("preprocess (engine, before its lock)", lambda c: c.get("stage preprocessing")),
    ("engine call (device simulated at 0 s)", lambda c: c.get("stage edit")),
    ("  of which text encoder (tiny, real)", lambda c: c.get("stage prompt_encoding")),
    ("pixels -> picture (after the lock)", lambda c: c.get("stage postprocessing")),
    ("encode (the worker's PNG)", lambda c: c.get("stage encode")),
    ("upload", lambda c: c.get("storage.upload")),
    ("preview clean-up (Storage delete)", lambda c: c.get("storage.delete_many")),
    ("DB claim", lambda c: c.get("queue.claim")),
    ("DB heartbeats", lambda c: c.get("queue.heartbeat")),
    ("DB preview", lambda c: c.get("queue.preview")),
    ("DB complete", lambda c: c.get("queue.complete")),
    ("claim -> complete", lambda c: c.get("stage total")),
    (
        "service overhead (outside the engine)",
        lambda c: None if "stage total" not in c else c["stage total"] - c.get("stage edit", 0.0),
    ),
    (
        "engine CPU work outside its lock",
        lambda c: c.get("stage preprocessing", 0.0) + c.get("stage postprocessing", 0.0),
    ),
]


def encode_levels(pictures: list[Image.Image]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    print(f"\nencode of the {len(pictures)} distinct outputs (1 MP): ms, median [min-max]; size")
    for label, options in ENCODINGS.items():
        seconds, sizes = [], []
        for picture in pictures:
            buffer = io.BytesIO()
            started = time.perf_counter()
            picture.save(buffer, **options)
            seconds.append(time.perf_counter() - started)
            sizes.append(len(buffer.getvalue()))
        kilobytes = statistics.median(sizes) / 1000
        print(f"  {label:32s} {spread_ms(seconds):>28s}   {kilobytes:7.0f} KB")
        out[label] = {"ms": summary_ms(seconds), "bytes_median": statistics.median(sizes)}
    return out


def run(args: argparse.Namespace, stop: ExitStack) -> dict[str, Any]:  # noqa: C901 - one script, read top-down
    scratch = stop.enter_context(ScratchDatabases())
    dsn = scratch.migrated("overhead")
    workdir = Path(tempfile.mkdtemp(prefix="qep-overhead-"))
    stop.callback(shutil.rmtree, workdir, ignore_errors=True)
    storage = stop.enter_context(StorageServer(dsn, workdir / "objects"))
    simulated_gpu.install(simulated_gpu.DeviceTimes(0.0, 0.0, 0.0), simulated_gpu.DeviceClock(None, None))
    model, lora = simulated_gpu.build_model(workdir)
    editor = DiffusersEditor.load(
        model, device="cpu", speed="fast", lightning={"fast": LoraSource.parse(str(lora))}, warmup=True
    )
    settings = load_settings(
        database_url=dsn,
        supabase_url=storage.url,
        supabase_service_role_key=SERVICE_KEY,
        webhook_secret=WEBHOOK_SECRET,
        sweep_interval_seconds=3600,
        log_level="warning",
    )
    queue = PostgresJobQueue(dsn)
    object_storage = SupabaseObjectStorage(storage.url, SERVICE_KEY)
    service = ProcessorService(
        worker_config(settings), queue=queue, storage=object_storage, editor_factory=lambda: editor
    )
    probe = Probe(service.metrics.registry)
    probe.wrap_async(queue, "queue.", QUEUE_CALLS)
    probe.wrap_async(object_storage, "storage.", STORAGE_CALLS)

    app = serve_in_thread(create_app(service, webhook_secret=settings.webhook_secret))
    stop.callback(app.stop)
    db = stop.enter_context(psycopg.connect(dsn, autocommit=True, row_factory=dict_row))
    client = stop.enter_context(httpx.Client(timeout=60))
    deadline = time.monotonic() + 300
    while client.get(f"{app.url}/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not become ready")
        time.sleep(0.05)
    user = db.execute("insert into auth.users (email) values ('bench@example.test') returning id").fetchone()
    assert user is not None
    user_id = user["id"]
    inputs: dict[str, list[str]] = {}
    for fmt in args.formats:
        extension = "png" if fmt == "png" else "jpg"
        inputs[fmt] = []
        for index in range(INPUTS):
            path = f"{user_id}/photo-{index}.{extension}"
            storage.upload("edit-inputs", path, encoded(photo(index), fmt), f"image/{fmt}")
            inputs[fmt].append(path)
    seeds = iter(range(1, 1_000_000))

    def insert(path: str) -> uuid.UUID:
        row = db.execute(
            "insert into edit_requests (user_id, prompt, input_paths, speed, seed) "
            "values (%s, 'make the sky a warm sunset, keep everything else', %s, 'fast', %s) returning id",
            (user_id, [path], next(seeds)),
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
                "select id, status, error_code, output_path, started_at, finished_at, result "
                "from edit_requests where id = any(%s)",
                (ids,),
            ).fetchall()
            if all(r["status"] in ("succeeded", "failed") for r in rows):
                return rows
            time.sleep(0.005)
        raise TimeoutError("requests did not finish")

    first = insert(inputs[args.formats[0]][0])  # warms the path: first connections, first edit
    ended = probe.jobs_ended()
    webhook(first)
    wait_done([first])
    # Its end too: a job's end wakes the claim loop, which would otherwise claim the next request
    # before its measurement begins.
    probe.wait_for_end(ended)

    report: dict[str, Any] = {"sequential": {}, "formats": args.formats}
    outputs: list[str] = []
    failures: list[str] = []
    per_format: dict[str, list[dict[str, float]]] = defaultdict(list)
    for fmt in args.formats:
        for index in range(args.sequential):
            request_id = insert(inputs[fmt][index % INPUTS])
            ended = probe.jobs_ended()
            probe.begin()
            sent = webhook(request_id)
            [row] = wait_done([request_id])
            probe.wait_for_end(ended)  # the preview clean-up and the last metrics come after the row's end
            costs = probe.end()
            if row["status"] != "succeeded":
                failures.append(f"{fmt}: {row['error_code']}")
                continue
            costs["webhook->claim"] = row["started_at"].timestamp() - sent
            per_format[fmt].append(costs)
            if index < INPUTS and fmt == args.formats[0]:
                outputs.append(row["output_path"])

    print(
        f"tiny model at 1 MP, fast preset, device simulated at 0 s; {args.sequential} sequential jobs per format"
    )
    print(
        f"{'stage, ms per job: median [min-max]':40s}"
        + "".join(f"{fmt.upper() + ' inputs':>30s}" for fmt in args.formats)
    )
    for label, pick in ROWS:
        cells = []
        for fmt in args.formats:
            values = [v for c in per_format[fmt] if (v := pick(c)) is not None]
            cells.append(spread_ms(values))
            report["sequential"].setdefault(fmt, {})[label] = summary_ms(values)
        print(f"{label:40s}" + "".join(f"{cell:>30s}" for cell in cells))

    burst_ids = [insert(inputs[args.formats[0]][i % INPUTS]) for i in range(args.burst)]
    began = time.perf_counter()
    for request_id in burst_ids:
        webhook(request_id)
    burst_rows = wait_done(burst_ids)
    wall = time.perf_counter() - began
    done = [r for r in burst_rows if r["status"] == "succeeded"]
    failures += [f"burst: {r['error_code']}" for r in burst_rows if r["status"] != "succeeded"]
    overheads = [
        (r["finished_at"] - r["started_at"]).total_seconds() - r["result"]["timings"]["total"] for r in done
    ]
    print(
        f"\nburst ({args.burst} {args.formats[0].upper()} requests at once): {len(done)} succeeded in {wall:.1f} s, {args.burst / wall:.2f} jobs/s"
    )
    print(f"  overhead per job (claim to complete minus the engine's own total): {percentiles(overheads)}")
    report["burst"] = {"jobs": args.burst, "succeeded": len(done), "seconds": wall, "overhead_s": overheads}

    pictures = [
        Image.open(io.BytesIO(storage.download("edit-outputs", path))).convert("RGB") for path in outputs
    ]
    report["encode"] = encode_levels(pictures)
    report["failures"] = failures
    if failures:
        print(f"FAILED: {failures}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sequential", type=int, default=12, help="one-at-a-time jobs per input format")
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--formats", default="png,jpeg")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.formats = [f for f in args.formats.split(",") if f]
    if not set(args.formats) <= {"png", "jpeg"} or args.sequential < 1:
        parser.error("--formats: png and/or jpeg; --sequential at least 1")
    with ExitStack() as stop:
        report = run(args, stop)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
