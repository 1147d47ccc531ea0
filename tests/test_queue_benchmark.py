"""``benchmarks/queue_vs_peers.py`` reports every row as median and spread over its rounds, with
ratios taken within a round. Needs the peers (the ``bench`` extra); skipped without them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("procrastinate")
pytest.importorskip("pgqueuer")

pytestmark = pytest.mark.benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "queue_vs_peers.py"
SYSTEMS = {
    "ours raw SQL",
    "ours adapter",
    "ours raw, every row watched",
    "ours before fair sharing",
    "procrastinate",
    "pgqueuer",
}


def test_every_row_is_a_median_and_spread_over_rotated_rounds(tmp_path: Path) -> None:
    out = tmp_path / "queue.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--jobs",
        "30",
        "--workers",
        "1,2",
        "--rounds",
        "3",
        "--depth",
        "0",
    ]
    done = subprocess.run(
        [*command, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["synchronous_commit"] == "off" and report["rounds"] == 3
    for workers in ("1", "2"):
        rows = report["cycle"][workers]
        assert set(rows) == SYSTEMS
        for label, row in rows.items():
            rate = row["jobs_per_second"]
            assert rate["n"] == 3 and rate["min"] <= rate["median"] <= rate["max"], label
            assert len(row["samples"]) == 3
        assert rows["procrastinate"]["vs_procrastinate"]["median"] == pytest.approx(1.0)
        assert rows["pgqueuer"]["vs_pgqueuer"]["median"] == pytest.approx(1.0)
    # One enqueue sample per measurement of a system: rounds x worker counts.
    enqueue = report["bulk_enqueue"]
    assert set(enqueue) == {"ours raw SQL", "ours before fair sharing", "procrastinate", "pgqueuer"}
    assert all(row["rows_per_second"]["n"] == 6 for row in enqueue.values())
    assert "median [min-max] over rounds" in done.stdout
