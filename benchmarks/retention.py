"""Retention's cost in the database: the candidate list, and what its insert guard adds to inserts.

    python benchmarks/retention.py [--rows 20000] [--inserts 1000] [--scaling 1000,10000,100000]
                                   [--orphans 20000]

On a scratch database: ``--rows`` finished requests (one input each, half succeeded with an output)
finished 60 days ago, as many objects, plus ``--rows``/10 orphan uploads. Printed: the milliseconds of
``edit_retention_candidates`` (limit 500, median and max of 5, the lease released in between; all kinds, and
orphans alone, which look at 20 x 500 objects a run), and of
one single-row insert as ``authenticated`` (inputs present, so queued; the median round of
``--inserts``/5) with the schema before this migration and with it.

``--scaling``: the time of one run (``edit_retention_candidates``, limit 500) as the rows one user
makes grow, on a fresh database per size, in the two shapes of issue 22 item 5: N canceled requests
naming one uploaded path a live request also names (``blocked``: the first run decides the path,
later runs skip it), and N due requests with a path each (``due``: a run lists 500 of them). Printed:
the first and the median of the next 5 runs per size (each from the oldest row), and each size's time over the smallest's. The
same is measured with the function as it was before 20261206003000 (``before_``) for the sizes up to
``--before-max`` (it is quadratic: minutes at 10,000). Needs PostgreSQL as TEST_ADMIN_DATABASE_URL
(default local).

``--orphans``: that many orphan uploads past the grace, deleted by one run through the
Storage-compatible stand-in (real HTTP, real SQL, no files), batches of 500: the objects a run
deletes and how long it takes, with one batch a run (``RETENTION_RUN_SECONDS=0``, as before) and with
the default budget.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import psycopg
from scratch import ScratchDatabases

from processor.devtools import localdb
from processor.domain import rules

RETENTION_MIGRATION = "20261201001000_retention.sql"
BOUNDED_RUNS_MIGRATION = "20261206003000_retention_bounded_runs.sql"


def _database(scratch: ScratchDatabases, label: str, with_retention: bool) -> str:
    migrations = [m for m in localdb.migration_files() if with_retention or m.name < RETENTION_MIGRATION]
    return scratch.migrated(label, migrations)


def _inserts(dsn: str, count: int) -> float:
    user = uuid.uuid4()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("insert into auth.users (id) values (%s)", (user,))
        conn.execute(
            "insert into edit_user_limits (user_id, max_in_flight, max_requests_per_hour, max_cost_per_hour) "
            "values (%s, 1000000, 1000000, 1e12)",
            (user,),
        )
        conn.execute(
            "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (f"{user}/in.png",)
        )
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        for _ in range(count):
            with conn.transaction():
                conn.execute(
                    "select set_config('request.jwt.claims', %s, true)",
                    (json.dumps({"sub": str(user), "role": "authenticated"}),),
                )
                conn.execute("set local role authenticated")
                conn.execute(
                    "insert into edit_requests (prompt, input_paths) values ('x', %s)", ([f"{user}/in.png"],)
                )
        return (time.perf_counter() - started) * 1000


def _candidates(dsn: str, rows: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        user = uuid.uuid4()
        conn.execute("insert into auth.users (id) values (%s)", (user,))
        conn.execute(
            "insert into storage.objects (bucket_id, name, created_at, updated_at) "
            "select 'edit-inputs', %s || '/in-' || i || '.png', now() - interval '61 days', now() - interval '61 days' "
            "from generate_series(1, %s) i",
            (str(user), rows),
        )
        conn.execute(
            "insert into storage.objects (bucket_id, name, created_at, updated_at) "
            "select 'edit-inputs', %s || '/orphan-' || i || '.png', now() - interval '2 days', now() - interval '2 days' "
            "from generate_series(1, %s) i",
            (str(user), rows // 10),
        )
        # Finished rows as the state machine leaves them (constraints hold), without running it 20,000 times.
        conn.execute(
            "insert into edit_requests (user_id, prompt, input_paths, status, finished_at, progress, output_path, error) "
            "select %s, 'x', array[%s || '/in-' || i || '.png'], "
            "case when i %% 2 = 0 then 'succeeded' else 'failed' end, now() - interval '60 days', "
            "case when i %% 2 = 0 then 1 else 0 end, "
            "case when i %% 2 = 0 then %s || '/out-' || i || '.png' end, case when i %% 2 = 1 then 'bad' end "
            "from generate_series(1, %s) i",
            (user, str(user), str(user), rows),
        )
        # As autovacuum leaves a table after a bulk load: the GIN pending list merged, statistics fresh.
        conn.execute("vacuum analyze edit_requests")
        conn.execute("vacuum analyze storage.objects")
        medians = {}
        for label, ages in (
            ("all_kinds", "'7 days', '30 days', '24 hours'"),
            ("orphans_only", "null, null, '24 hours'"),
        ):
            times = []
            for _ in range(5):
                started = time.perf_counter()
                found = conn.execute(
                    f"select count(*) from edit_retention_candidates('bench', {ages}, 500)"
                ).fetchone()
                times.append((time.perf_counter() - started) * 1000)
                conn.execute("select edit_retention_release('bench')")
                assert found is not None
            medians[f"candidates_ms_{label}_median"] = round(statistics.median(times), 1)
            medians[f"candidates_ms_{label}_max"] = round(max(times), 1)
        return medians


def _scaled_database(scratch: ScratchDatabases, label: str, *, before: bool) -> str:
    migrations = [m for m in localdb.migration_files() if not before or m.name < BOUNDED_RUNS_MIGRATION]
    return scratch.migrated(label, migrations)


def _load(conn: psycopg.Connection[Any], shape: str, rows: int) -> None:
    user = uuid.uuid4()
    conn.execute("insert into auth.users (id) values (%s)", (user,))
    if shape == "blocked":
        shared = f"{user}/reference.png"
        conn.execute(
            "insert into storage.objects (bucket_id, name, created_at, updated_at) "
            "values ('edit-inputs', %s, now() - interval '61 days', now() - interval '61 days')",
            (shared,),
        )
        conn.execute(
            "insert into edit_requests (user_id, prompt, input_paths, status, finished_at) "
            "select %s, 'x', array[%s], 'canceled', now() - interval '60 days' from generate_series(1, %s)",
            (user, shared, rows),
        )
        conn.execute(
            "insert into edit_requests (user_id, prompt, input_paths) values (%s, 'x', %s)", (user, [shared])
        )
    else:
        conn.execute(
            "insert into storage.objects (bucket_id, name, created_at, updated_at) "
            "select 'edit-inputs', %s || '/in-' || i || '.png', now() - interval '61 days', now() - interval '61 days' "
            "from generate_series(1, %s) i",
            (str(user), rows),
        )
        conn.execute(
            "insert into edit_requests (user_id, prompt, input_paths, status, finished_at) "
            "select %s, 'x', array[%s || '/in-' || i || '.png'], 'canceled', now() - interval '60 days' "
            "from generate_series(1, %s) i",
            (user, str(user), rows),
        )
    conn.execute("vacuum analyze edit_requests")
    conn.execute("vacuum analyze storage.objects")


def _run_ms(conn: psycopg.Connection[Any], *, before: bool) -> float:
    """One run from the oldest due row (the resume point reset: every run measured is alike; a
    path found blocked stays remembered)."""
    if not before:
        conn.execute(
            "update edit_retention_state set inputs_from_at = null, inputs_from_id = null, "
            "outputs_from_at = null, outputs_from_id = null"
        )
    started = time.perf_counter()
    conn.execute(
        "select count(*) from edit_retention_candidates('bench', '7 days', null, null, 500)"
    ).fetchone()
    elapsed = (time.perf_counter() - started) * 1000
    conn.execute("select edit_retention_release('bench')")
    return elapsed


def _scaling(scratch: ScratchDatabases, sizes: list[int], before_max: int) -> dict[str, Any]:
    """Per shape and size: the first run and the median of the next 5 (ms), and the ratios."""
    report: dict[str, Any] = {}
    for before in (False, True):
        for shape in ("blocked", "due"):
            key = f"{'before_' if before else ''}{shape}"
            times: dict[int, dict[str, float]] = {}
            for rows in sizes:
                if before and rows > before_max:
                    continue
                label = f"{shape}_{rows}"
                dsn = _scaled_database(scratch, label, before=before)
                try:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        _load(conn, shape, rows)
                        first = _run_ms(conn, before=before)
                        later = [_run_ms(conn, before=before) for _ in range(5)]
                    times[rows] = {
                        "first_ms": round(first, 1),
                        "later_median_ms": round(statistics.median(later), 1),
                    }
                finally:
                    scratch.drop(label)  # one at a time: 100,000 rows each
            if not times:
                continue
            smallest = min(times)
            for measured in times.values():
                measured["first_over_smallest"] = round(measured["first_ms"] / times[smallest]["first_ms"], 1)
                measured["later_over_smallest"] = round(
                    measured["later_median_ms"] / times[smallest]["later_median_ms"], 1
                )
            report[key] = {str(rows): measured for rows, measured in times.items()}
    return report


def _orphan_run(scratch: ScratchDatabases, orphans: int, run_seconds: float) -> dict[str, Any]:
    import asyncio
    import tempfile
    from pathlib import Path

    from processor.adapters.postgres.retention import PostgresRetentionStore
    from processor.adapters.supabase_storage import SupabaseObjectStorage
    from processor.core.retention import Retention
    from processor.devtools.serving import serve_in_thread
    from processor.devtools.storage_server import StorageConfig, create_storage_app
    from processor.domain.ports.retention import RetentionPolicy

    dsn = _scaled_database(scratch, "orphans", before=False)
    key = "sb_secret_bench-service-key-0123456789"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into storage.objects (bucket_id, name, created_at, updated_at) "
                "select 'edit-inputs', 'u/orphan-' || i || '.png', now() - interval '2 days', now() - interval '2 days' "
                "from generate_series(1, %s) i",
                (orphans,),
            )
            conn.execute("vacuum analyze storage.objects")
        with tempfile.TemporaryDirectory() as folder:
            config = StorageConfig(dsn, Path(folder), key, "bench-jwt-secret-at-least-32-characters-long")
            served = serve_in_thread(create_storage_app(config))
            try:

                async def run() -> tuple[int, int, float]:
                    storage = SupabaseObjectStorage(served.url, key)
                    retention = Retention(
                        PostgresRetentionStore(dsn),
                        storage,
                        RetentionPolicy(input_age=None, output_age=None),
                        worker_id="bench",
                        interval_seconds=3600,
                        run_seconds=run_seconds,
                    )
                    await storage.open()
                    await retention.open()
                    try:
                        started = time.perf_counter()
                        report = await retention.run_once()
                        return report.deleted["orphan"], report.batches, time.perf_counter() - started
                    finally:
                        await retention.close()
                        await storage.close()

                deleted, batches, seconds = asyncio.run(run())
            finally:
                served.stop()
    finally:
        scratch.drop("orphans")
    return {
        "run_seconds_budget": run_seconds,
        "deleted": deleted,
        "batches": batches,
        "seconds": round(seconds, 2),
        "objects_per_second": round(deleted / seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--inserts", type=int, default=1000)
    parser.add_argument(
        "--scaling", default="1000,10000,100000", help="row counts, comma-separated ('' skips)"
    )
    parser.add_argument("--before-max", type=int, default=4000)
    parser.add_argument("--orphans", type=int, default=20000)
    parser.add_argument("--skip-inserts", action="store_true", help="only the scaling and orphan runs")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.scaling.split(",") if size]
    with ScratchDatabases() as scratch:
        orphan_runs = (
            [
                _orphan_run(scratch, args.orphans, 0),
                _orphan_run(scratch, args.orphans, rules.DEFAULT_RETENTION_RUN_SECONDS),
            ]
            if args.orphans
            else []
        )
        if args.skip_inserts:
            scaling = _scaling(scratch, sizes, args.before_max)
            print(json.dumps({"scaling": scaling, "orphans": orphan_runs}, indent=2))
            return 0
        before, after = _database(scratch, "before", False), _database(scratch, "after", True)
        # Inserts first, on equally empty databases, in alternating rounds (the machine's load
        # varies more than what is measured); then the candidates on the filled one.
        rounds: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(5):
            rounds["before"].append(_inserts(before, args.inserts // 5))
            rounds["after"].append(_inserts(after, args.inserts // 5))
        report: dict[str, Any] = {
            "inserts": args.inserts,
            "insert_ms_before": round(statistics.median(rounds["before"]) / (args.inserts // 5), 3),
            "insert_ms_with_retention": round(statistics.median(rounds["after"]) / (args.inserts // 5), 3),
            "rows": args.rows,
            **_candidates(after, args.rows),
        }
        if sizes:
            report["scaling"] = _scaling(scratch, sizes, args.before_max)
        report["orphans"] = orphan_runs
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
