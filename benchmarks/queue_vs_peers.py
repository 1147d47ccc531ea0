"""Queue speed next to procrastinate and pgqueuer, on one PostgreSQL, in one run.

    python benchmarks/queue_vs_peers.py [--jobs 2000] [--workers 1,4,8] [--depth 100000] [--users 1000]

Each system gets its own scratch database on the local server (TEST_ADMIN_DATABASE_URL): ours with the
Supabase platform objects and every migration, procrastinate and pgqueuer with their own schemas. All
three are driven the same way, asyncio and psycopg 3, one connection per worker:

* bulk enqueue: ``--jobs`` rows in one statement (ours: one INSERT as an `authenticated` user whose
  inputs are uploaded, limits raised for the run; procrastinate ``batch_defer_jobs_async``; pgqueuer
  ``Queries.enqueue`` with lists);
* cycle: N workers drain ``--jobs`` no-op jobs, each loop one claim and one completion (ours: the raw
  SQL functions, and the real ``PostgresJobQueue`` adapter; procrastinate ``fetch_job`` + ``finish_job``;
  pgqueuer ``dequeue`` (batch 1) + ``log_jobs``); p50 of one claim + complete, and jobs/s; ours
  also with every row watched (as if an API waiter followed each: each claim and completion then
  sends a NOTIFY, and notifying commits take turns server-wide);
* claim at depth (ours only): p50 of one claim with ``--depth`` queued rows from ``--users`` users, next
  to the same with ``--jobs`` rows, for the fair claim and for the schema before it
  (migrations < 20261201000500) in the same run.

Benchmark-only dependencies: procrastinate, pgqueuer (see docs/fair-sharing.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import psycopg
from scratch import ScratchDatabases

from processor.adapters.postgres.queue import PostgresJobQueue
from processor.devtools import localdb

FAIR_MIGRATION = "20261201000500_fair_sharing.sql"

Cycle = Callable[[], Awaitable[bool]]


def p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


async def drain(
    make_worker: Callable[[int], Awaitable[tuple[Cycle, Callable[[], Awaitable[None]]]]], workers: int
) -> tuple[float, float, int]:
    """Run ``workers`` loops of claim + complete until the queue is empty: (p50 ms, jobs/s, jobs)."""
    made = [await make_worker(i) for i in range(workers)]
    latencies: list[float] = []

    async def loop(cycle: Cycle) -> None:
        while True:
            started = time.perf_counter()
            if not await cycle():
                return
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(loop(cycle) for cycle, _ in made))
    wall = time.perf_counter() - began
    for _, close in made:
        await close()
    return p50_ms(latencies), len(latencies) / wall, len(latencies)


# --- ours -------------------------------------------------------------------------------------------


class Ours:
    def __init__(
        self, scratch: ScratchDatabases, migrations: list[Any] | None = None, label: str = "ours"
    ) -> None:
        self.label = label
        self.dsn = scratch.migrated(label, migrations)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.fair = conn.execute("select to_regclass('public.edit_user_limits') is not null").fetchone()[
                0
            ]  # type: ignore[index]
            self.user = conn.execute(
                "insert into auth.users (email) values ('bench@example.test') returning id"
            ).fetchone()[0]  # type: ignore[index]
            if self.fair:
                conn.execute(
                    "insert into edit_user_limits (user_id, max_in_flight, max_requests_per_hour, max_cost_per_hour) "
                    "values (%s, 1000000, 1000000, 1e12)",
                    (self.user,),
                )
        self.batch = 0

    def enqueue(self, jobs: int) -> float:
        """One INSERT of ``jobs`` rows as the `authenticated` user, inputs uploaded first; seconds."""
        self.batch += 1
        folder = f"{self.user}/b{self.batch}-"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "insert into storage.objects (bucket_id, name) select 'edit-inputs', %s || g || '.png' from generate_series(1, %s) g",
                (folder, jobs),
            )
            with conn.transaction():
                conn.execute(
                    "select set_config('request.jwt.claims', %s, true)",
                    (f'{{"sub": "{self.user}", "role": "authenticated"}}',),
                )
                conn.execute("set local role authenticated")
                started = time.perf_counter()
                conn.execute(
                    "insert into edit_requests (prompt, input_paths, num_inference_steps) "
                    "select 'x', array[%s || g || '.png'], 2 from generate_series(1, %s) g",
                    (folder, jobs),
                )
            elapsed = time.perf_counter() - started
            queued = conn.execute("select count(*) from edit_requests where status = 'queued'").fetchone()
            assert queued is not None and queued[0] >= jobs
        return elapsed

    def enqueue_watched(self, jobs: int) -> float:
        """``enqueue``, then a watch on every queued row (the cost of change notifications)."""
        elapsed = self.enqueue(jobs)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "insert into edit_request_watches (request_id, watcher, expires_at) "
                "select id, 'bench', now() + interval '1 hour' from edit_requests where status = 'queued'"
            )
        return elapsed

    def fill(self, rows: int, users: int) -> None:
        """``rows`` queued rows spread over ``users`` users (service_role import), then ANALYZE."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("delete from edit_requests")
            ids = [
                r[0]
                for r in conn.execute(
                    "insert into auth.users (email) select 'u' || g || '-' || gen_random_uuid() || '@x.test' "
                    "from generate_series(1, %s) g returning id",
                    (users,),
                ).fetchall()
            ]
            per_user = rows // users
            # In statements of about 2,000 rows: the schema before fair sharing takes one advisory
            # lock per path, and 20,000 in one transaction exhaust the server's lock table.
            step = max(1, 2000 // per_user)
            for start in range(0, users, step):
                chunk = ids[start : start + step]
                conn.execute(
                    "insert into storage.objects (bucket_id, name) "
                    "select 'edit-inputs', u::text || '/d-' || g || '.png' "
                    "from unnest(%s::uuid[]) u, generate_series(1, %s) g on conflict do nothing",
                    (chunk, per_user),
                )
                conn.execute(
                    "insert into edit_requests (user_id, prompt, input_paths, num_inference_steps) "
                    "select u, 'x', array[u::text || '/d-' || g || '.png'], 2 "
                    "from generate_series(1, %s) g, unnest(%s::uuid[]) u",
                    (per_user, chunk),
                )
            conn.execute("vacuum analyze edit_requests")

    async def claim_p50(self, claims: int) -> float:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            latencies = []
            for _ in range(claims):
                started = time.perf_counter()
                cur = await conn.execute("select id from claim_edit_request('bench', 120)")
                row = await cur.fetchone()
                latencies.append(time.perf_counter() - started)
                assert row is not None
        return p50_ms(latencies)

    async def raw_worker(self, index: int) -> tuple[Cycle, Callable[[], Awaitable[None]]]:
        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        worker = f"raw-{index}"

        async def cycle() -> bool:
            cur = await conn.execute("select id from claim_edit_request(%s, 120)", (worker,))
            row = await cur.fetchone()
            if row is None:
                return False
            await conn.execute("select complete_edit_request(%s, %s, 'out.png', '{}')", (row[0], worker))
            return True

        return cycle, conn.close

    async def adapter_worker(self, index: int) -> tuple[Cycle, Callable[[], Awaitable[None]]]:
        queue = PostgresJobQueue(self.dsn, min_size=1, max_size=2)
        await queue.open()
        worker = f"adapter-{index}"

        async def cycle() -> bool:
            job = await queue.claim(worker, 120)
            if job is None:
                return False
            await queue.complete(job.id, worker, "out.png", {})
            return True

        return cycle, queue.close


# --- procrastinate ----------------------------------------------------------------------------------


class Procrastinate:
    label = "procrastinate"

    def __init__(self, scratch: ScratchDatabases) -> None:
        import procrastinate

        self.procrastinate = procrastinate
        self.dsn = scratch.create(self.label)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(procrastinate.schema.SchemaManager.get_schema())

    def app(self) -> Any:
        return self.procrastinate.App(
            connector=self.procrastinate.PsycopgConnector(conninfo=self.dsn, min_size=1, max_size=2)
        )

    async def enqueue(self, jobs: int) -> float:
        app = self.app()
        async with app.open_async():
            batch = [
                self.procrastinate.jobs.Job(
                    id=None,
                    queue="default",
                    lock=None,
                    queueing_lock=None,
                    task_name="noop",
                    task_kwargs={"i": i},
                )
                for i in range(jobs)
            ]
            started = time.perf_counter()
            await app.job_manager.batch_defer_jobs_async(batch)
            return time.perf_counter() - started

    async def worker(self, index: int) -> tuple[Cycle, Callable[[], Awaitable[None]]]:
        app = self.app()
        await app.open_async()
        manager = app.job_manager
        worker_id = await manager.register_worker()
        succeeded = self.procrastinate.jobs.Status.SUCCEEDED

        async def cycle() -> bool:
            job = await manager.fetch_job(queues=None, worker_id=worker_id)
            if job is None:
                return False
            await manager.finish_job(job, succeeded, delete_job=False)
            return True

        return cycle, app.close_async


# --- pgqueuer ---------------------------------------------------------------------------------------


class PgQueuer:
    label = "pgqueuer"

    def __init__(self, scratch: ScratchDatabases) -> None:
        self.dsn = scratch.create(self.label)

    async def install(self) -> None:
        from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
        from pgqueuer.queries import Queries

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await Queries(PsycopgDriver(conn)).install()

    async def enqueue(self, jobs: int) -> float:
        from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
        from pgqueuer.queries import Queries

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            queries = Queries(PsycopgDriver(conn))
            started = time.perf_counter()
            await queries.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
            return time.perf_counter() - started

    async def worker(self, index: int) -> tuple[Cycle, Callable[[], Awaitable[None]]]:
        from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
        from pgqueuer.ports.repository import EntrypointExecutionParameter
        from pgqueuer.queries import Queries

        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        queries = Queries(PsycopgDriver(conn))
        manager_id = uuid.uuid4()
        entrypoints = {"noop": EntrypointExecutionParameter(concurrency_limit=0)}

        async def cycle() -> bool:
            picked = await queries.dequeue(
                batch_size=1,
                entrypoints=entrypoints,  # type: ignore[arg-type]
                queue_manager_id=manager_id,  # type: ignore[arg-type]
                global_concurrency_limit=None,
                heartbeat_timeout=timedelta(seconds=30),
            )
            if not picked:
                return False
            await queries.log_jobs([(picked[0], "successful", None)])
            return True

        return cycle, conn.close


# --- the run ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, scratch: ScratchDatabases) -> None:
    workers = [int(w) for w in args.workers.split(",") if w]
    before_fair = [p for p in localdb.migration_files() if p.name < FAIR_MIGRATION]
    ours, baseline = Ours(scratch), Ours(scratch, before_fair, label="before")
    proc, pgq = Procrastinate(scratch), PgQueuer(scratch)
    await pgq.install()
    print(f"## bulk enqueue: {args.jobs} jobs in one statement (best of {args.repeat})")
    rates: dict[str, float] = {}
    for label, enqueue in (
        ("ours", lambda: asyncio.to_thread(ours.enqueue, args.jobs)),
        ("ours before fair sharing", lambda: asyncio.to_thread(baseline.enqueue, args.jobs)),
        ("procrastinate", lambda: proc.enqueue(args.jobs)),
        ("pgqueuer", lambda: pgq.enqueue(args.jobs)),
    ):
        best = min([await enqueue() for _ in range(args.repeat)])
        rates[label] = args.jobs / best
    for label, rate in rates.items():
        print(f"{label:28s} {rate:9.0f} rows/s   ours/this {rates['ours'] / rate:5.2f}x")
    # Each queue now holds repeat x jobs: drain them so each cycle run starts from `jobs` rows.
    for make in (
        ours.raw_worker,
        baseline.raw_worker,
        proc.worker,
        pgq.worker,
    ):
        await drain(make, 4)

    print(f"\n## claim + complete: {args.jobs} no-op jobs, p50 per cycle and jobs/s")
    print(
        f"{'workers':>7s} {'system':28s} {'p50 ms':>8s} {'jobs/s':>8s}  {'ours raw vs this (p50, rate)':>30s}"
    )
    for count in workers:
        results: dict[str, tuple[float, float]] = {}
        for label, enqueue, make in (
            ("ours raw SQL", lambda: asyncio.to_thread(ours.enqueue, args.jobs), ours.raw_worker),
            ("ours adapter", lambda: asyncio.to_thread(ours.enqueue, args.jobs), ours.adapter_worker),
            (
                "ours raw, every row watched",
                lambda: asyncio.to_thread(ours.enqueue_watched, args.jobs),
                ours.raw_worker,
            ),
            (
                "ours before fair sharing",
                lambda: asyncio.to_thread(baseline.enqueue, args.jobs),
                baseline.raw_worker,
            ),
            ("procrastinate", lambda: proc.enqueue(args.jobs), proc.worker),
            ("pgqueuer", lambda: pgq.enqueue(args.jobs), pgq.worker),
        ):
            await enqueue()
            p50, rate, done = await drain(make, count)
            assert done == args.jobs, (label, done)
            results[label] = (p50, rate)
        mine_p50, mine_rate = results["ours raw SQL"]
        for label, (p50, rate) in results.items():
            print(
                f"{count:7d} {label:28s} {p50:8.2f} {rate:8.0f}  {p50 / mine_p50:13.2f}x {mine_rate / rate:13.2f}x"
            )

    if args.depth:
        print(
            f"\n## one claim, p50 of {args.claims}: {args.jobs} vs {args.depth} queued rows from {args.users} users"
        )
        for system in (ours, baseline):
            shallow_users = max(1, args.users * args.jobs // args.depth)
            await asyncio.to_thread(system.fill, args.jobs, shallow_users)
            shallow = await system.claim_p50(args.claims)
            await asyncio.to_thread(system.fill, args.depth, args.users)
            deep = await system.claim_p50(args.claims)
            name = "ours (fair claim)" if system is ours else "before fair sharing (FIFO)"
            print(
                f"{name:28s} {args.jobs:>7d} rows: {shallow:6.2f} ms   {args.depth:>7d} rows: {deep:6.2f} ms   deep/shallow {deep / shallow:4.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--depth", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=200)
    logging.getLogger("procrastinate").setLevel(logging.ERROR)  # its note about where App is built
    args = parser.parse_args()
    with ScratchDatabases() as scratch:
        asyncio.run(run(args, scratch))


if __name__ == "__main__":
    main()
