"""Fairness under a flood: one user queues 5,000 rows, two others submit one request a second.

    python benchmarks/fairness.py [--flood 5000] [--seconds 20] [--job-seconds 0.1] [--workers 1]

One simulated GPU (``--workers`` claimers, each holding a job ``--job-seconds``, then completing it)
serves three users on a scratch database: the flooder inserts ``--flood`` rows in one INSERT at the
start (as `authenticated`, limits raised for it), and two light users each insert one request every
second for ``--seconds``. Printed: the light users' time to start (started_at - created_at), in seconds
and in jobs' time, for the fair claim and, in the same run, for the schema before it (migrations
< 20261201000500, first in first out). Needs PostgreSQL as TEST_ADMIN_DATABASE_URL (default local).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from typing import Any

import psycopg
from scratch import ScratchDatabases

from processor.devtools import localdb

FAIR_MIGRATION = "20261201000500_fair_sharing.sql"


def as_user(conn: psycopg.Connection[Any], user: uuid.UUID) -> None:
    conn.execute(
        "select set_config('request.jwt.claims', %s, true)",
        (f'{{"sub": "{user}", "role": "authenticated"}}',),
    )
    conn.execute("set local role authenticated")


def run_once(
    scratch: ScratchDatabases, label: str, migrations: list[Any], args: argparse.Namespace
) -> dict[str, Any]:
    dsn = scratch.migrated(label, migrations)
    try:
        flooder, light_a, light_b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "insert into auth.users (id) select unnest(%s::uuid[])", ([flooder, light_a, light_b],)
            )
            fair = conn.execute("select to_regclass('public.edit_user_limits') is not null").fetchone()
            if fair and fair[0]:
                conn.execute(
                    "insert into edit_user_limits (user_id, max_in_flight, max_requests_per_hour, max_cost_per_hour) "
                    "values (%s, 1000000, 1000000, 1e12)",
                    (flooder,),
                )
            conn.execute(
                "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s), ('edit-inputs', %s), "
                "('edit-inputs', %s)",
                (f"{flooder}/in.png", f"{light_a}/in.png", f"{light_b}/in.png"),
            )
            # The flood: one INSERT.
            with conn.transaction():
                as_user(conn, flooder)
                conn.execute(
                    "insert into edit_requests (prompt, input_paths, num_inference_steps) "
                    "select 'flood', array[%s], 100 from generate_series(1, %s)",
                    (f"{flooder}/in.png", args.flood),
                )

        stop = threading.Event()
        served: list[int] = []

        def worker(index: int) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                done = 0
                while not stop.is_set():
                    row = conn.execute(
                        "select id from claim_edit_request(%s, 120)", (f"gpu-{index}",)
                    ).fetchone()
                    if row is None:
                        time.sleep(0.01)
                        continue
                    time.sleep(args.job_seconds)  # the GPU at work
                    conn.execute(
                        "select complete_edit_request(%s, %s, 'out.png', '{}')", (row[0], f"gpu-{index}")
                    )
                    done += 1
                served.append(done)

        def light(user: uuid.UUID) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                deadline = time.monotonic() + args.seconds
                while time.monotonic() < deadline:
                    with conn.transaction():
                        as_user(conn, user)
                        conn.execute(
                            "insert into edit_requests (prompt, input_paths, num_inference_steps) values ('light', %s, 20)",
                            ([f"{user}/in.png"],),
                        )
                    time.sleep(1.0)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.workers)]
        lights = [threading.Thread(target=light, args=(u,)) for u in (light_a, light_b)]
        for thread in threads + lights:
            thread.start()
        for thread in lights:
            thread.join()
        # Let the last light requests start (or give up after a while: FIFO may never reach them).
        settle = time.monotonic() + 5 * args.job_seconds + 2
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < settle:
                waiting = conn.execute(
                    "select count(*) from edit_requests where prompt = 'light' and started_at is null"
                ).fetchone()
                if waiting is not None and waiting[0] == 0:
                    break
                time.sleep(0.05)
            stop.set()
            for thread in threads:
                thread.join()
            rows = conn.execute(
                "select extract(epoch from coalesce(started_at, now()) - created_at), started_at is not null "
                "from edit_requests where prompt = 'light'"
            ).fetchall()
            flood_served = conn.execute(
                "select count(*) from edit_requests where prompt = 'flood' and started_at is not null"
            ).fetchone()
        waits = sorted(float(r[0]) for r in rows)
        return {
            "label": label,
            "light": len(waits),
            "started": sum(1 for r in rows if r[1]),
            "p50": statistics.median(waits),
            "p95": waits[int(0.95 * (len(waits) - 1))],
            "max": waits[-1],
            "flood_served": flood_served[0] if flood_served else 0,
            "jobs": sum(served),
        }
    finally:
        scratch.drop(label)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--flood", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--job-seconds", type=float, default=0.1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    all_migrations = localdb.migration_files()
    before = [p for p in all_migrations if p.name < FAIR_MIGRATION]
    with ScratchDatabases() as scratch:
        results = [run_once(scratch, "fair", all_migrations, args), run_once(scratch, "fifo", before, args)]
    job = args.job_seconds / args.workers
    print(
        f"flood {args.flood} rows, 2 light users x 1 request/s for {args.seconds:.0f} s, "
        f"{args.workers} worker(s) x {args.job_seconds:.2f} s per job"
    )
    print(
        f"{'claim order':28s} {'light':>5s} {'started':>7s} {'p50 s':>7s} {'p95 s':>7s} {'max s':>7s} "
        f"{'p50 jobs':>8s} {'max jobs':>8s} {'flood served':>12s}"
    )
    for r in results:
        name = "fair (this branch)" if r["label"] == "fair" else "FIFO (before fair sharing)"
        print(
            f"{name:28s} {r['light']:5d} {r['started']:7d} {r['p50']:7.2f} {r['p95']:7.2f} {r['max']:7.2f} "
            f"{r['p50'] / job:8.1f} {r['max'] / job:8.1f} {r['flood_served']:12d}"
        )
    fair, fifo = results
    print(f"p50 time to start, FIFO / fair: {fifo['p50'] / fair['p50']:.0f}x")


if __name__ == "__main__":
    main()
