"""What one webhook claim costs as one endpoint's backlog grows.

    python benchmarks/webhook_claims.py [--endpoints 1000] [--backlogs 1000,100000]

On a scratch database: ``--endpoints`` users with an endpoint and one pending delivery each, and one of
them with a backlog of N more (older) pending deliveries. Printed: the milliseconds of
``claim_edit_webhook_deliveries(limit 4)`` (median and max of 20, the claimed ones put back in between),
with the claim of 20261206003400 (it walks the endpoints with pending deliveries: one probe per endpoint,
whatever its backlog) and with the one before it (oldest due first), and each time over the smallest
backlog's. Needs PostgreSQL as TEST_ADMIN_DATABASE_URL (default local).
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

FAIR_DELIVERY_MIGRATION = "20261206003400_webhook_fair_delivery.sql"


def _claims_ms(scratch: ScratchDatabases, *, before: bool, endpoints: int, backlog: int) -> list[float]:
    migrations = [m for m in localdb.migration_files() if not before or m.name < FAIR_DELIVERY_MIGRATION]
    label = f"claims_{uuid.uuid4().hex[:8]}"
    dsn = scratch.migrated(label, migrations)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("update edit_webhook_settings set allowed_ports = '{443}'")
            conn.execute("insert into edit_webhook_allowed_hosts (host) values ('hooks.example.com')")
            conn.execute(
                "insert into auth.users (id) select gen_random_uuid() from generate_series(1, %s)",
                (endpoints,),
            )
            # Rows as the trigger and the state machine leave them, without running them N times.
            conn.execute(
                "insert into edit_webhook_endpoints (user_id, url, secret) "
                "select id, 'https://hooks.example.com/' || id, 'whsec_x' from auth.users"
            )
            conn.execute(
                "insert into edit_requests (user_id, prompt, input_paths, status, finished_at) "
                "select id, 'x', array[id::text || '/a.png'], 'canceled', now() from auth.users"
            )
            big = conn.execute(
                "select e.id as endpoint, e.user_id as owner, r.id as request from edit_webhook_endpoints e "
                "join edit_requests r on r.user_id = e.user_id limit 1"
            ).fetchone()
            assert big is not None
            conn.execute(
                "insert into edit_webhook_deliveries (endpoint_id, request_id, user_id, event, payload, next_attempt_at) "
                "select %s, %s, %s, 'canceled', '{}', now() - interval '1 hour' + i * interval '1 ms' "
                "from generate_series(1, %s) i",
                (big[0], big[2], big[1], backlog),
            )
            conn.execute(
                "insert into edit_webhook_deliveries (endpoint_id, request_id, user_id, event, payload) "
                "select e.id, r.id, e.user_id, 'canceled', '{}' from edit_webhook_endpoints e "
                "join edit_requests r on r.user_id = e.user_id"
            )
            conn.execute("vacuum analyze edit_webhook_deliveries")
            times = []
            for _ in range(20):
                started = time.perf_counter()
                conn.execute("select id from claim_edit_webhook_deliveries('bench', 4, 60)").fetchall()
                times.append((time.perf_counter() - started) * 1000)
                conn.execute(
                    "update edit_webhook_deliveries set status = 'pending', claimed_by = null, claimed_until = null, "
                    "attempts = 0 where status = 'delivering'"
                )
            return times
    finally:
        scratch.drop(label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--backlogs", default="1000,100000")
    args = parser.parse_args(argv)
    backlogs = [int(size) for size in args.backlogs.split(",") if size]
    report: dict[str, Any] = {"endpoints": args.endpoints}
    with ScratchDatabases() as scratch:
        for before in (False, True):
            _measure(scratch, report, before=before, endpoints=args.endpoints, backlogs=backlogs)
    print(json.dumps(report, indent=2))
    return 0


def _measure(
    scratch: ScratchDatabases, report: dict[str, Any], *, before: bool, endpoints: int, backlogs: list[int]
) -> None:
    label = "before" if before else "now"
    measured = {}
    for backlog in backlogs:
        times = _claims_ms(scratch, before=before, endpoints=endpoints, backlog=backlog)
        measured[backlog] = {
            "median_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1),
        }
    smallest = measured[min(measured)]["median_ms"]
    for values in measured.values():
        values["over_smallest"] = round(values["median_ms"] / smallest, 1)
    report[label] = {str(backlog): values for backlog, values in measured.items()}


if __name__ == "__main__":
    raise SystemExit(main())
