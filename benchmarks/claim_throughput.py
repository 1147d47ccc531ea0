"""Claim throughput and exactly-once under contention: N claimer connections drain M queued rows.

    python benchmarks/claim_throughput.py [--rows 2000] [--claimers 8]

Builds a scratch database (platform bootstrap + migrations) on the local server, prints the
figures, and drops it. Needs PostgreSQL reachable as TEST_ADMIN_DATABASE_URL (default local).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

import psycopg
from scratch import ScratchDatabases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--claimers", type=int, default=8)
    args = parser.parse_args()

    with ScratchDatabases() as scratch:
        dsn = scratch.migrated("claims")
        with psycopg.connect(dsn, autocommit=True) as conn:
            user = conn.execute(
                "insert into auth.users (email) values ('bench@example.test') returning id"
            ).fetchone()
            assert user is not None
            conn.execute(
                "insert into storage.objects (bucket_id, name) select 'edit-inputs', %s || '/' || g || '.png' "
                "from generate_series(1, %s) g",
                (str(user[0]), args.rows),
            )
            conn.execute(
                "insert into edit_requests (user_id, prompt, input_paths) "
                "select %s, 'x', array[%s || '/' || g || '.png'] from generate_series(1, %s) g",
                (user[0], str(user[0]), args.rows),
            )
        latencies: list[float] = []
        claimed: list[uuid.UUID] = []
        lock = threading.Lock()
        barrier = threading.Barrier(args.claimers)

        def claimer(worker: str) -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                barrier.wait()
                while True:
                    started = time.perf_counter()
                    row = conn.execute("select id from claim_edit_request(%s, 120)", (worker,)).fetchone()
                    elapsed = time.perf_counter() - started
                    if row is None:
                        return
                    with lock:
                        latencies.append(elapsed)
                        claimed.append(row[0])

        threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(args.claimers)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        quantiles = statistics.quantiles(latencies, n=100)
        print(
            f"rows {args.rows}, claimers {args.claimers}, wall {wall:.2f} s, {len(claimed) / wall:.0f} claims/s"
        )
        print(
            f"claimed {len(claimed)}, distinct {len(set(claimed))} (exactly once: {len(claimed) == len(set(claimed)) == args.rows})"
        )
        print(
            f"claim latency ms: p50 {quantiles[49] * 1000:.2f}, p95 {quantiles[94] * 1000:.2f}, p99 {quantiles[98] * 1000:.2f}"
        )


if __name__ == "__main__":
    main()
