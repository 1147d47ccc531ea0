"""Scratch databases for the benchmarks, dropped on any exit.

    from scratch import ADMIN, ScratchDatabases

    with ScratchDatabases(ADMIN) as scratch:
        dsn = scratch.migrated("ours")               # platform objects + every migration
        dsn = scratch.migrated("before", migrations)  # + the migrations given
        dsn = scratch.create("peer")                  # empty

Every database of one run is named ``qep_bench_<run>_<label>`` (``<run>``: ``QEP_BENCH_RUN_ID`` or
8 random hex digits), and every way out drops them all, WITH (FORCE), so a connection left open
(a pool, a subprocess) cannot keep one alive:

* leaving the block, normally, by an exception or by Ctrl-C (``KeyboardInterrupt``);
* SIGTERM and SIGHUP, turned into ``SystemExit`` while the block is open, so ``kill`` or a CI
  timeout unwinds through the same ``finally`` clauses (subprocesses stopped first, then the
  databases);
* the rest (SIGKILL, ``os._exit``, a crash): a watchdog process started with the block waits for
  this process's end of a pipe to close and then drops whatever carries the run's prefix,
  databases made by subprocesses with the same prefix included.

The cleanup drops by prefix, not by a list of names, so a database whose CREATE was cut short, or
which a subprocess made, is found too. docs/decisions/0051-benchmark-scratch-databases.md says why.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterable
from importlib.resources.abc import Traversable
from types import FrameType, TracebackType

import psycopg
from psycopg import sql

ADMIN = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFIX = "qep_bench_"
RUN_ID_ENV = "QEP_BENCH_RUN_ID"
_RUN_ID = re.compile(r"^[a-z0-9]{1,24}$")
_LABEL = re.compile(r"^[a-z0-9_]{1,24}$")
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def leftovers(admin_dsn: str, prefix: str) -> list[str]:
    """Databases whose name starts with ``prefix``."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select datname from pg_database where left(datname, length(%s)) = %s order by 1",
            (prefix, prefix),
        ).fetchall()
    return [row[0] for row in rows]


def drop_prefixed(admin_dsn: str, prefix: str) -> list[str]:
    """Drop every database whose name starts with ``prefix`` (cutting its connections); their names."""
    names = leftovers(admin_dsn, prefix)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
    return names


def _raise_system_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


class ScratchDatabases:
    """The scratch databases of one benchmark run (see the module docstring)."""

    def __init__(self, admin_dsn: str = ADMIN, *, run_id: str | None = None, watchdog: bool = True) -> None:
        run_id = run_id or os.environ.get(RUN_ID_ENV) or uuid.uuid4().hex[:8]
        if not _RUN_ID.match(run_id):
            raise ValueError(f"run id {run_id!r}: 1 to 24 lower-case letters and digits")
        self.admin_dsn = admin_dsn
        self.prefix = f"{PREFIX}{run_id}_"
        self._watchdog_wanted = watchdog
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> ScratchDatabases:
        if self._watchdog_wanted:
            self._watchdog = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--watch", self.admin_dsn, self.prefix],
                stdin=subprocess.PIPE,
                # Its own session: a Ctrl-C in the terminal (sent to the whole group) must not stop it
                # before it has done its work.
                start_new_session=True,
            )
        try:
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, _raise_system_exit)
        except ValueError:  # not the main thread: the caller handles signals
            self._previous.clear()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Drop every database of this run; a second Ctrl-C or SIGTERM meanwhile is ignored."""
        held = {}
        try:
            for signum in (signal.SIGINT, *_SIGNALS):
                held[signum] = signal.signal(signum, signal.SIG_IGN)
        except ValueError:
            held.clear()
        try:
            drop_prefixed(self.admin_dsn, self.prefix)
        finally:
            self._stop_watchdog()
            for signum, handler in {**held, **self._previous}.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
            self._previous.clear()

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        assert watchdog.stdin is not None
        watchdog.stdin.close()  # it looks once more (finds nothing) and exits
        try:
            watchdog.wait(30)
        except subprocess.TimeoutExpired:
            watchdog.kill()

    def name(self, label: str) -> str:
        if not _LABEL.match(label):
            raise ValueError(f"label {label!r}: 1 to 24 of a-z, 0-9 and _")
        return self.prefix + label

    def create(self, label: str, *, template: str | None = None) -> str:
        """An empty database (or a copy of ``template``), replacing any of that name; its DSN."""
        from processor.devtools import localdb

        return localdb.create_database(self.admin_dsn, self.name(label), template=template)

    def migrated(self, label: str, migrations: Iterable[Traversable] | None = None) -> str:
        """A database with the Supabase platform objects and ``migrations`` (default: all); its DSN."""
        from processor.devtools import localdb

        dsn = self.create(label)
        scripts = localdb.migration_files() if migrations is None else list(migrations)
        localdb.apply_sql_files(dsn, [localdb.PLATFORM_SQL, *scripts])
        return dsn

    def drop(self, label: str) -> None:
        from processor.devtools import localdb

        localdb.drop_database(self.admin_dsn, self.name(label))


def _watch(admin_dsn: str, prefix: str) -> None:
    """The watchdog: wait for the owner's end of stdin to close, then drop what the run left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()
    dropped = drop_prefixed(admin_dsn, prefix)
    if dropped:
        sys.stderr.write(f"scratch watchdog: dropped {', '.join(dropped)}\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":
        _watch(sys.argv[2], sys.argv[3])
    else:
        sys.stderr.write("usage: python benchmarks/scratch.py --watch ADMIN_DSN PREFIX\n")
        raise SystemExit(2)
