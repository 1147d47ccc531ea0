"""Queue speed next to procrastinate and pgqueuer, on one PostgreSQL: rounds, median and spread.

    python benchmarks/queue_vs_peers.py [--jobs 2000] [--workers 1,4,8] [--rounds 5]
        [--synchronous-commit off] [--depth 100000] [--users 1000] [--json PATH]

Each system gets its own scratch database on the local server (TEST_ADMIN_DATABASE_URL): ours with the
Supabase platform objects and every migration (and once more with the migrations before fair sharing,
< 20261201000500), procrastinate and pgqueuer with their own schemas. All are driven the same way,
asyncio and psycopg 3 in this process, one connection per worker:

* bulk enqueue: ``--jobs`` rows in one statement (ours: one INSERT as an `authenticated` user whose
  inputs are uploaded, limits raised for the run; procrastinate ``batch_defer_jobs_async``; pgqueuer
  ``Queries.enqueue`` with lists);
* cycle: N workers drain those ``--jobs`` no-op jobs, each loop one claim and one completion (ours:
  the raw SQL functions, the real ``PostgresJobQueue`` adapter, and the raw SQL with every row watched,
  as if an API waiter followed each; procrastinate ``fetch_job`` + ``finish_job``; pgqueuer
  ``dequeue`` (batch 1) + ``log_jobs``): jobs/s and the p50 of one claim + complete;
* claim at depth (ours only, once, after the rounds): p50 of one claim with ``--depth`` queued rows
  from ``--users`` users, next to the same with ``--jobs`` rows, fair claim and FIFO before it.

The method (why: docs/decisions/0052-queue-benchmark-method.md):

* ``--rounds`` rounds; in each, every system is measured at every worker count, in an order that
  rotates from round to round, so none always runs first, last, or next to the same neighbour;
* every measurement starts from the same state: the system's tables emptied (TRUNCATE), one bulk
  enqueue (a sample of the enqueue rate), ANALYZE of the filled tables, then the drain. Without the
  ANALYZE a peer's plans depend on when autovacuum last looked (procrastinate's server CPU per job
  was 8x higher on tables vacuumed while empty);
* pinned in the scratch databases: ``synchronous_commit`` (default ``off``: the queues' own cost,
  not the shared disk's flush latency; ``on`` measures with a flush per commit), autovacuum off on
  the measured tables (the explicit ANALYZE replaces it), pools of exactly one connection per worker;
* reported per row: the median over rounds with the spread [min-max], and the ratios to
  procrastinate and pgqueuer computed within each round (neighbours in time) before taking their
  median; the CPU this process (client), the measured database's backends (server) and everything
  else on the machine (other: other people's work, the server's background writers) used per job;
  the checkpoints that ran during the measurements.

Benchmark-only dependencies: procrastinate, pgqueuer (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from scratch import ScratchDatabases

from processor.adapters.postgres.queue import PostgresJobQueue
from processor.devtools import localdb

FAIR_MIGRATION = "20261201000500_fair_sharing.sql"

Cycle = Callable[[], Awaitable[bool]]
Close = Callable[[], Awaitable[None]]
MakeWorker = Callable[[int], Awaitable[tuple[Cycle, Close]]]


# --- CPU accounting ------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_seconds() -> float | None:
    """Seconds of CPU every core spent not idle since boot (/proc/stat), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / _TICK


def _process_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes (the server's backends, when the server is local)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return total


@dataclass
class Monitor:
    """Server-wide counters read through the admin database (never through a measured one)."""

    admin: str
    conn: psycopg.Connection[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.conn = psycopg.connect(self.admin, autocommit=True)

    def backends(self, dbname: str) -> list[int]:
        rows = self.conn.execute(
            "select pid from pg_stat_activity where datname = %s and backend_type = 'client backend'",
            (dbname,),
        ).fetchall()
        return [row[0] for row in rows]

    async def wait_for_backends(self, dbname: str, count: int) -> list[int]:
        deadline = time.monotonic() + 30
        while len(pids := self.backends(dbname)) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return pids

    def checkpoints(self) -> int:
        row = self.conn.execute("select checkpoints_timed + checkpoints_req from pg_stat_bgwriter").fetchone()
        return int(row[0]) if row else 0

    def settings(self) -> dict[str, str]:
        names = [
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_level",
            "shared_buffers",
            "autovacuum",
            "checkpoint_timeout",
            "max_wal_size",
        ]
        rows = self.conn.execute("select name, setting from pg_settings where name = any(%s)", (names,))
        return dict(rows.fetchall())


@dataclass
class Sample:
    """One measurement: a drain (or an enqueue) of ``jobs`` in ``wall`` seconds, and its CPU."""

    jobs: int
    wall: float
    p50_ms: float = float("nan")
    client_cpu: float | None = None
    server_cpu: float | None = None
    machine_cpu: float | None = None
    checkpoints: int = 0

    @property
    def rate(self) -> float:
        return self.jobs / self.wall

    def per_job_ms(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1000 / self.jobs

    @property
    def other_cpu_share(self) -> float | None:
        """Share of the machine's cores that neither this process nor the measured backends used."""
        if None in (self.client_cpu, self.server_cpu, self.machine_cpu):
            return None
        other = self.machine_cpu - self.client_cpu - self.server_cpu  # type: ignore[operator]
        return max(0.0, other) / (self.wall * (os.cpu_count() or 1))


async def drain(monitor: Monitor, dbname: str, make_worker: MakeWorker, workers: int) -> Sample:
    """``workers`` loops of claim + complete until the queue is empty, measured from the first claim."""
    made = [await make_worker(i) for i in range(workers)]
    latencies: list[float] = []

    async def loop(cycle: Cycle) -> None:
        while True:
            started = time.perf_counter()
            if not await cycle():
                return
            latencies.append(time.perf_counter() - started)

    try:
        backends = await monitor.wait_for_backends(dbname, workers)
        checkpoints = monitor.checkpoints()
        machine, server, client = _machine_busy_seconds(), _process_seconds(backends), time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(loop(cycle) for cycle, _ in made))
        wall = time.perf_counter() - began
        client_after, server_after, machine_after = (
            time.process_time(),
            _process_seconds(backends),
            _machine_busy_seconds(),
        )
    finally:
        for _, close in made:
            await close()
    return Sample(
        jobs=len(latencies),
        wall=wall,
        p50_ms=statistics.median(latencies) * 1000 if latencies else float("nan"),
        client_cpu=client_after - client,
        server_cpu=None if server is None or server_after is None else server_after - server,
        machine_cpu=None if machine is None or machine_after is None else machine_after - machine,
        checkpoints=monitor.checkpoints() - checkpoints,
    )


# --- the systems ---------------------------------------------------------------------------------------


class System:
    """A queue in its scratch database: put it back to the same state, enqueue, make workers."""

    label: str
    dsn: str
    measured_tables: tuple[str, ...] = ()

    @property
    def dbname(self) -> str:
        return self.dsn.rsplit("/", 1)[-1].split("?", 1)[0]

    def pin(self, synchronous_commit: str) -> None:
        """Settings every measurement of this database runs with (see the module docstring)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("alter database {} set synchronous_commit = {}").format(
                    sql.Identifier(self.dbname), sql.Literal(synchronous_commit)
                )
            )
            for table in self.measured_tables:
                conn.execute(
                    sql.SQL("alter table {} set (autovacuum_enabled = false)").format(
                        sql.Identifier(*table.split("."))
                    )
                )

    def _tables(self) -> list[sql.Composable]:
        return [sql.Identifier(*table.split(".")) for table in self.measured_tables]

    def reset(self) -> None:
        """Empty the measured tables: every measurement starts here."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("truncate {} restart identity cascade").format(sql.SQL(", ").join(self._tables()))
            )

    def analyze(self) -> None:
        """Statistics of the filled queue, as autovacuum would leave them (not left to its timing)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("analyze {}").format(sql.SQL(", ").join(self._tables())))


class Ours(System):
    def __init__(
        self, scratch: ScratchDatabases, migrations: list[Any] | None = None, label: str = "ours"
    ) -> None:
        self.label = label
        self.dsn = scratch.migrated(label, migrations)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            self.fair = bool(
                conn.execute("select to_regclass('public.edit_user_limits') is not null").fetchone()[0]  # type: ignore[index]
            )
            self.user = conn.execute(
                "insert into auth.users (email) values ('bench@example.test') returning id"
            ).fetchone()[0]  # type: ignore[index]
            if self.fair:
                conn.execute(
                    "insert into edit_user_limits (user_id, max_in_flight, max_requests_per_hour, max_cost_per_hour) "
                    "values (%s, 1000000, 1000000, 1e12)",
                    (self.user,),
                )
            present = conn.execute(
                "select t from unnest(%s::text[]) t where to_regclass(t) is not null",
                (
                    [
                        "public.edit_user_usage",
                        "public.edit_request_watches",
                        "public.edit_webhook_deliveries",
                    ],
                ),
            ).fetchall()
        self.measured_tables = ("public.edit_requests", "storage.objects", *(row[0] for row in present))
        self.batch = 0

    def enqueue(self, jobs: int, watched: bool = False) -> Sample:
        """One INSERT of ``jobs`` rows as the `authenticated` user, inputs uploaded first; with
        ``watched``, a watch on every row afterwards (not timed: the cost shows in the cycle)."""
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
            assert queued is not None and queued[0] == jobs, (queued, jobs)
            if watched:
                conn.execute(
                    "insert into edit_request_watches (request_id, watcher, expires_at) "
                    "select id, 'bench', now() + interval '1 hour' from edit_requests where status = 'queued'"
                )
        return Sample(jobs=jobs, wall=elapsed)

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
        return statistics.median(latencies) * 1000

    async def raw_worker(self, index: int) -> tuple[Cycle, Close]:
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

    async def adapter_worker(self, index: int) -> tuple[Cycle, Close]:
        queue = PostgresJobQueue(self.dsn, min_size=1, max_size=1)
        await queue.open()
        worker = f"adapter-{index}"

        async def cycle() -> bool:
            job = await queue.claim(worker, 120)
            if job is None:
                return False
            await queue.complete(job.id, worker, "out.png", {})
            return True

        return cycle, queue.close


class Procrastinate(System):
    label = "procrastinate"

    def __init__(self, scratch: ScratchDatabases) -> None:
        import procrastinate

        self.procrastinate = procrastinate
        self.dsn = scratch.create(self.label)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(procrastinate.schema.SchemaManager.get_schema())
        self.measured_tables = (
            "public.procrastinate_jobs",
            "public.procrastinate_events",
            "public.procrastinate_workers",
            "public.procrastinate_periodic_defers",
        )

    def app(self) -> Any:
        return self.procrastinate.App(
            connector=self.procrastinate.PsycopgConnector(conninfo=self.dsn, min_size=1, max_size=1)
        )

    async def enqueue(self, jobs: int) -> Sample:
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
            return Sample(jobs=jobs, wall=time.perf_counter() - started)

    async def worker(self, index: int) -> tuple[Cycle, Close]:
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


class PgQueuer(System):
    label = "pgqueuer"

    def __init__(self, scratch: ScratchDatabases) -> None:
        self.dsn = scratch.create(self.label)
        self.measured_tables = (
            "public.pgqueuer",
            "public.pgqueuer_log",
            "public.pgqueuer_statistics",
            "public.pgqueuer_schedules",
        )

    async def install(self) -> None:
        from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
        from pgqueuer.queries import Queries

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            await Queries(PsycopgDriver(conn)).install()

    async def enqueue(self, jobs: int) -> Sample:
        from pgqueuer.adapters.drivers.psycopg import PsycopgDriver
        from pgqueuer.queries import Queries

        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            queries = Queries(PsycopgDriver(conn))
            started = time.perf_counter()
            await queries.enqueue(["noop"] * jobs, [None] * jobs, [0] * jobs)
            return Sample(jobs=jobs, wall=time.perf_counter() - started)

    async def worker(self, index: int) -> tuple[Cycle, Close]:
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


@dataclass(frozen=True)
class Contender:
    """A row of the table: a system, how its jobs are enqueued, and how its workers run them."""

    label: str
    system: System
    enqueue: Callable[[int], Awaitable[Sample]]
    worker: MakeWorker


def contenders(ours: Ours, before: Ours, proc: Procrastinate, pgq: PgQueuer) -> list[Contender]:
    def threaded(function: Callable[[int], Sample]) -> Callable[[int], Awaitable[Sample]]:
        return lambda jobs: asyncio.to_thread(function, jobs)

    return [
        Contender("ours raw SQL", ours, threaded(ours.enqueue), ours.raw_worker),
        Contender("ours adapter", ours, threaded(ours.enqueue), ours.adapter_worker),
        Contender(
            "ours raw, every row watched",
            ours,
            threaded(lambda jobs: ours.enqueue(jobs, watched=True)),
            ours.raw_worker,
        ),
        Contender("ours before fair sharing", before, threaded(before.enqueue), before.raw_worker),
        Contender("procrastinate", proc, proc.enqueue, proc.worker),
        Contender("pgqueuer", pgq, pgq.enqueue, pgq.worker),
    ]


# --- the run -------------------------------------------------------------------------------------------


async def measure(monitor: Monitor, contender: Contender, jobs: int, workers: int) -> tuple[Sample, Sample]:
    """From the same state every time: emptied tables, one bulk enqueue of ``jobs``, ANALYZE, and the
    drain by ``workers``."""
    await asyncio.to_thread(contender.system.reset)
    enqueued = await contender.enqueue(jobs)
    await asyncio.to_thread(contender.system.analyze)
    drained = await drain(monitor, contender.system.dbname, contender.worker, workers)
    assert drained.jobs == jobs, (contender.label, drained.jobs, jobs)
    return enqueued, drained


def rotated(items: list[Contender], by: int) -> list[Contender]:
    by %= len(items)
    return items[by:] + items[:by]


def spread(values: list[float], digits: int = 0) -> str:
    """``median [min-max]``."""
    if not values:
        return "n/a"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def paired_ratios(
    samples: dict[str, list[Sample]], label: str, against: str, rate: Callable[[Sample], float]
) -> list[float]:
    """``label``'s rate over ``against``'s, round by round (the two ran minutes apart at most)."""
    return [rate(mine) / rate(theirs) for mine, theirs in zip(samples[label], samples[against], strict=True)]


def optional(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


@contextmanager
def quiet_procrastinate() -> Iterator[None]:
    logger = logging.getLogger("procrastinate")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its note about where App is built
    try:
        yield
    finally:
        logger.setLevel(level)


def print_header(args: argparse.Namespace, monitor: Monitor) -> dict[str, Any]:
    settings = monitor.settings()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"# PostgreSQL {settings.get('server_version')}: fsync={settings.get('fsync')}, "
        f"server synchronous_commit={settings.get('synchronous_commit')} (scratch databases: "
        f"{args.synchronous_commit}), autovacuum={settings.get('autovacuum')} (off on the measured "
        f"tables), shared_buffers={settings.get('shared_buffers')}, checkpoint_timeout="
        f"{settings.get('checkpoint_timeout')} s, max_wal_size={settings.get('max_wal_size')} MB"
    )
    print(f"# {os.cpu_count()} CPUs, load average at start {load}")
    print(
        f"# {args.rounds} rounds x {len(args.worker_counts)} worker counts x 6 systems, each from "
        f"emptied tables: {args.jobs} jobs enqueued in one statement, ANALYZE, drained; "
        "median [min-max] over rounds"
    )
    return {"server": settings, "cpus": os.cpu_count(), "load_at_start": load}


async def rounds(
    args: argparse.Namespace, monitor: Monitor, everyone: list[Contender]
) -> tuple[dict[str, list[Sample]], dict[int, dict[str, list[Sample]]]]:
    enqueues: dict[str, list[Sample]] = {c.label: [] for c in everyone}
    drains: dict[int, dict[str, list[Sample]]] = {
        w: {c.label: [] for c in everyone} for w in args.worker_counts
    }
    # Warm-up, not counted: first plans, first pages, the connection paths of each library.
    for contender in everyone:
        await measure(monitor, contender, min(args.jobs, 500), max(args.worker_counts))
    for number in range(args.rounds):
        for workers in args.worker_counts:
            for contender in rotated(everyone, number + workers):
                enqueued, drained = await measure(monitor, contender, args.jobs, workers)
                enqueues[contender.label].append(enqueued)
                drains[workers][contender.label].append(drained)
        print(f"# round {number + 1} of {args.rounds} done", flush=True)
    return enqueues, drains


def report_enqueue(args: argparse.Namespace, enqueues: dict[str, list[Sample]]) -> dict[str, Any]:
    # An enqueue does not depend on how the jobs are run: the adapter's and the watched row's
    # enqueue is the raw SQL's (the watches are written after the timed INSERT).
    rows = {
        label: samples
        for label, samples in enqueues.items()
        if not label.startswith(("ours adapter", "ours raw,"))
    }
    print(
        f"\n## bulk enqueue: {args.jobs} rows in one statement, {len(next(iter(rows.values())))} samples each"
    )
    print(f"{'system':28s} {'rows/s':>22s} {'x procrastinate':>20s} {'x pgqueuer':>20s}")
    out = {}
    for label, samples in rows.items():
        rates = [s.rate for s in samples]
        vs_proc = paired_ratios(rows, label, "procrastinate", lambda s: s.rate)
        vs_pgq = paired_ratios(rows, label, "pgqueuer", lambda s: s.rate)
        print(f"{label:28s} {spread(rates):>22s} {spread(vs_proc, 2):>20s} {spread(vs_pgq, 2):>20s}")
        out[label] = {
            "rows_per_second": summary(rates),
            "vs_procrastinate": summary(vs_proc),
            "vs_pgqueuer": summary(vs_pgq),
        }
    return out


def report_cycles(args: argparse.Namespace, drains: dict[int, dict[str, list[Sample]]]) -> dict[str, Any]:
    print(f"\n## claim + complete: {args.jobs} no-op jobs; jobs/s, p50 ms of one cycle, ratios of jobs/s")
    print(
        f"{'workers':>7s} {'system':28s} {'jobs/s':>17s} {'p50 ms':>17s} {'x procrastinate':>17s} "
        f"{'x pgqueuer':>17s} {'server ms/job':>19s} {'client':>6s} {'other':>5s} {'ckpt':>4s}"
    )
    out: dict[str, Any] = {}
    for workers, by_label in drains.items():
        out[str(workers)] = {}
        for label, samples in by_label.items():
            rates = [s.rate for s in samples]
            p50s = [s.p50_ms for s in samples]
            vs_proc = paired_ratios(by_label, label, "procrastinate", lambda s: s.rate)
            vs_pgq = paired_ratios(by_label, label, "pgqueuer", lambda s: s.rate)
            client = optional([s.per_job_ms(s.client_cpu) for s in samples])
            server = optional([s.per_job_ms(s.server_cpu) for s in samples])
            other = optional([s.other_cpu_share for s in samples])
            checkpoints = sum(s.checkpoints for s in samples)
            print(
                f"{workers:7d} {label:28s} {spread(rates):>17s} {spread(p50s, 2):>17s} "
                f"{spread(vs_proc, 2):>17s} {spread(vs_pgq, 2):>17s} {spread(server, 2):>19s} "
                f"{statistics.median(client) if client else float('nan'):6.2f} "
                f"{100 * statistics.median(other) if other else float('nan'):4.0f}% {checkpoints:4d}"
            )
            out[str(workers)][label] = {
                "jobs_per_second": summary(rates),
                "p50_ms": summary(p50s),
                "vs_procrastinate": summary(vs_proc),
                "vs_pgqueuer": summary(vs_pgq),
                "client_cpu_ms_per_job": summary(client) if client else None,
                "server_cpu_ms_per_job": summary(server) if server else None,
                "other_cpu_share": summary(other) if other else None,
                "checkpoints_during": checkpoints,
                "samples": [
                    {"jobs_per_second": s.rate, "p50_ms": s.p50_ms, "checkpoints": s.checkpoints}
                    for s in samples
                ],
            }
    print(
        "server ms/job: CPU of the measured database's backends per job; client: CPU ms per job of this "
        "process (median); other: share of the machine's cores used by anything else (median); ckpt: "
        "checkpoints during that row's drains"
    )
    return out


QUIET_OTHER_SHARE = 0.10
"""Above this median share of the cores used by other processes, the run is not one to publish."""


def warn_if_loaded(drains: dict[int, dict[str, list[Sample]]]) -> bool:
    shares = optional(
        [s.other_cpu_share for by_label in drains.values() for ss in by_label.values() for s in ss]
    )
    if not shares or statistics.median(shares) <= QUIET_OTHER_SHARE:
        return True
    print(
        f"# LOADED MACHINE: other processes used {100 * statistics.median(shares):.0f}% of the cores "
        f"(median over the drains; quiet means <= {100 * QUIET_OTHER_SHARE:.0f}%): not figures to publish"
    )
    return False


async def claim_at_depth(args: argparse.Namespace, ours: Ours, before: Ours) -> dict[str, Any]:
    print(
        f"\n## one claim, p50 of {args.claims}: {args.jobs} vs {args.depth} queued rows from {args.users} users"
    )
    out = {}
    for system in (ours, before):
        shallow_users = max(1, args.users * args.jobs // args.depth)
        await asyncio.to_thread(system.fill, args.jobs, shallow_users)
        shallow = await system.claim_p50(args.claims)
        await asyncio.to_thread(system.fill, args.depth, args.users)
        deep = await system.claim_p50(args.claims)
        name = "ours (fair claim)" if system is ours else "before fair sharing (FIFO)"
        print(
            f"{name:28s} {args.jobs:>7d} rows: {shallow:6.2f} ms   {args.depth:>7d} rows: {deep:6.2f} ms   "
            f"deep/shallow {deep / shallow:4.2f}x"
        )
        out[name] = {"shallow_ms": shallow, "deep_ms": deep}
    return out


async def run(args: argparse.Namespace, scratch: ScratchDatabases) -> dict[str, Any]:
    before_fair = [p for p in localdb.migration_files() if p.name < FAIR_MIGRATION]
    ours, before = Ours(scratch), Ours(scratch, before_fair, label="before")
    proc, pgq = Procrastinate(scratch), PgQueuer(scratch)
    await pgq.install()
    for system in (ours, before, proc, pgq):
        system.pin(args.synchronous_commit)
    monitor = Monitor(scratch.admin_dsn)
    try:
        report: dict[str, Any] = {
            "jobs": args.jobs,
            "rounds": args.rounds,
            "synchronous_commit": args.synchronous_commit,
        }
        report.update(print_header(args, monitor))
        everyone = contenders(ours, before, proc, pgq)
        if args.worker_counts and args.rounds:
            enqueues, drains = await rounds(args, monitor, everyone)
            report["bulk_enqueue"] = report_enqueue(args, enqueues)
            report["cycle"] = report_cycles(args, drains)
            report["quiet"] = warn_if_loaded(drains)
        if args.depth:
            report["claim_at_depth"] = await claim_at_depth(args, ours, before)
        report["load_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        return report
    finally:
        monitor.conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", default="1,4,8", help="worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synchronous-commit", choices=("off", "on", "local", "remote_write"), default="off")
    parser.add_argument("--depth", type=int, default=100_000, help="0 skips the claim-at-depth part")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write every figure and sample here")
    args = parser.parse_args(argv)
    args.worker_counts = [int(w) for w in args.workers.split(",") if w]
    with quiet_procrastinate(), ScratchDatabases() as scratch:
        report = asyncio.run(run(args, scratch))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
