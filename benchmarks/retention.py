"""Retention's cost in the database: the candidate list, and what its insert guard adds to inserts.

    python benchmarks/retention.py [--rows 20000] [--inserts 1000]

On a scratch database: ``--rows`` finished requests (one input each, half succeeded with an output)
finished 60 days ago, as many objects, plus ``--rows``/10 orphan uploads. Printed: the milliseconds of
``edit_retention_candidates`` (limit 500, median and max of 5, the lease released in between; all kinds, and
orphans alone, which look at 20 x 500 objects a run), and of
one single-row insert as ``authenticated`` (inputs present, so queued; the median round of
``--inserts``/5) with the schema before this migration and with it. Needs PostgreSQL as TEST_ADMIN_DATABASE_URL (default local).
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

RETENTION_MIGRATION = "20261201001000_retention.sql"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--inserts", type=int, default=1000)
    args = parser.parse_args(argv)
    with ScratchDatabases() as scratch:
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
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
