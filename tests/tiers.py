"""The suite's tiers: each test is in exactly one, the heaviest thing it needs.

    unit       no database, no server, no process but the image decoders: in-memory adapters,
               ASGI apps called in-process, pure functions
    database   + PostgreSQL (a database cloned per test, or a private embedded server)
    service    + processes and HTTP servers (the Storage stand-in, a fake ComfyUI, a running
               processor, worker processes, the CLI in a subprocess)
    model      + torch (the tiny model, built once per session)
    benchmark  a script of benchmarks/, run small (whatever it needs)

A tier may use what the tiers above it use. A test's tier is the heaviest of: what its fixtures
say (``@tiers.needs("service")`` under ``@pytest.fixture``; ``database_url`` says ``database``,
``storage_server`` ``service``, ``tiny_model_dir`` ``model``), ``model`` when its module imports
torch, diffusers or the diffusers adapter at the top, and its own marker
(``@pytest.mark.service``) where neither shows what it does. A marker lighter than the fixtures, or
two different ones, fail collection, so every test carries exactly one tier marker and
``pytest -m unit`` selects the unit tests and nothing else. ``conftest.py`` assigns the tiers at
collection and holds each unit and database test to its tier while it runs (``TierBoundary``).
"""

from __future__ import annotations

import ast
import functools
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

F = TypeVar("F", bound=Callable[..., Any])

TIERS = ("unit", "database", "service", "model", "benchmark")

# A module that imports one of these at its top needs torch for every test in it.
MODEL_IMPORTS = ("torch", "diffusers", "transformers", "processor.adapters.diffusers")

# Processes a unit test may start: the image decoders every worker, the CLI and RunPod use
# (``processor.core.decoding``, started on first use and kept by the process) are part of the unit.
UNIT_PROCESSES = ("processor.core.decoding",)


class TierError(Exception):
    """A test whose tier is ambiguous or lighter than what it uses."""


def needs(tier: str) -> Callable[[F], F]:
    """Put every test that uses the fixture below in ``tier`` (or a heavier one)::

    @pytest.fixture
    @tiers.needs("service")
    def comfy() -> Iterator[Comfy]: ...
    """
    assert tier in TIERS, tier

    def mark(function: F) -> F:
        function.tier = tier  # type: ignore[attr-defined]
        return function

    return mark


def _rank(tier: str) -> int:
    return TIERS.index(tier)


@functools.cache
def _imports_the_model(path: str) -> bool:
    """Whether the module at ``path`` imports torch, diffusers or the diffusers adapter at its top
    (``if TYPE_CHECKING`` blocks are not run, so not counted)."""
    tree = ast.parse(Path(path).read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == m or name.startswith(m + ".") for name in names for m in MODEL_IMPORTS):
            return True
    return False


def derived_tier(fixture_tiers: Iterable[str], module_path: str | None) -> str:
    """The heaviest tier among a test's fixtures and its module's imports; ``unit`` if none."""
    found = list(fixture_tiers)
    if module_path is not None and _imports_the_model(module_path):
        found.append("model")
    return max(found, key=_rank, default="unit")


def tier_of(nodeid: str, explicit: list[str], fixture_tiers: Iterable[str], module_path: str | None) -> str:
    """The one tier of a test, or ``TierError`` saying what to change."""
    derived = derived_tier(fixture_tiers, module_path)
    if len(set(explicit)) > 1:
        raise TierError(f"{nodeid} is marked {sorted(set(explicit))}: one tier per test")
    if not explicit:
        return derived
    [marked] = set(explicit)
    if _rank(marked) < _rank(derived):
        raise TierError(
            f"{nodeid} is marked {marked} but its fixtures or imports need {derived}: mark it {derived}"
        )
    return marked


def explicit_tiers(item: pytest.Item) -> list[str]:
    return [mark.name for mark in item.iter_markers() if mark.name in TIERS]


def fixture_tiers(item: pytest.Item) -> list[str]:
    """The tiers the fixtures of ``item`` (all of them, the ones they use included) say they need."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    found = []
    for definitions in info.name2fixturedefs.values():
        tier = getattr(definitions[-1].func, "tier", None)
        if tier is not None:
            found.append(tier)
    return found


def assign(items: list[pytest.Item]) -> None:
    """Give every collected test exactly one tier marker (collection fails on a conflict)."""
    errors = []
    for item in items:
        module = getattr(item, "module", None)
        path = getattr(module, "__file__", None)
        explicit = explicit_tiers(item)
        try:
            tier = tier_of(item.nodeid, explicit, fixture_tiers(item), path)
        except TierError as error:
            errors.append(str(error))
            continue
        if not explicit:
            item.add_marker(getattr(pytest.mark, tier))
        item.stash[TIER] = tier
    if errors:
        raise pytest.UsageError("tests/tiers.py:\n  " + "\n  ".join(errors))


TIER = pytest.StashKey[str]()


# --- Holding a test to its tier's boundary -----------------------------------------------------------
class TierBoundary:
    """While a unit test runs, connecting to PostgreSQL, opening or serving a socket, or starting a
    process fails; while a database test runs, the last three do (libpq's connections do not go
    through Python's sockets). The message names the tier to mark the test with. Patched
    process-wide, so a thread the test starts is held too."""

    def __init__(self) -> None:
        self.tier: str | None = None
        self.lock = threading.Lock()

    def check(self, what: str, needs: str) -> None:
        tier = self.tier
        if tier is not None and _rank(tier) < _rank(needs):
            raise TierError(f"a {tier} test {what}: mark it {needs} (tests/tiers.py)")

    @contextmanager
    def lifted(self) -> Iterator[None]:
        """For what the session sets up on a test's first use (the PostgreSQL server it may start)."""
        tier, self.tier = self.tier, None
        try:
            yield
        finally:
            self.tier = tier

    @contextmanager
    def holding(self, tier: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        if tier not in ("unit", "database"):
            yield
            return
        boundary = self
        connect, listen = socket.socket.connect, socket.socket.listen
        popen_init, process_start = subprocess.Popen.__init__, BaseProcess.start
        pg_connect, pg_async_connect = psycopg.Connection.connect, psycopg.AsyncConnection.connect

        def guarded_connect(sock: socket.socket, address: Any) -> None:
            boundary.check(f"connected to {address!r}", "service")
            connect(sock, address)

        def guarded_listen(sock: socket.socket, *args: Any) -> None:
            boundary.check("listened on a socket", "service")
            listen(sock, *args)

        def guarded_popen(process: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
            command = args[0] if args else kwargs.get("args")
            if not (isinstance(command, list) and any(str(part) in UNIT_PROCESSES for part in command)):
                boundary.check(f"started a process {command!r}", "service")
            popen_init(process, *args, **kwargs)

        def guarded_start(process: BaseProcess) -> None:
            boundary.check("started a process", "service")
            process_start(process)

        def guarded_pg(cls: Any, *args: Any, **kwargs: Any) -> Any:
            boundary.check("connected to PostgreSQL", "database")
            return pg_connect.__func__(cls, *args, **kwargs)  # type: ignore[attr-defined]

        async def guarded_pg_async(cls: Any, *args: Any, **kwargs: Any) -> Any:
            boundary.check("connected to PostgreSQL", "database")
            return await pg_async_connect.__func__(cls, *args, **kwargs)  # type: ignore[attr-defined]

        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket.socket, "listen", guarded_listen)
        monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
        monkeypatch.setattr(BaseProcess, "start", guarded_start)
        monkeypatch.setattr(psycopg.Connection, "connect", classmethod(guarded_pg))
        monkeypatch.setattr(psycopg, "connect", psycopg.Connection.connect)  # bound at import
        monkeypatch.setattr(psycopg.AsyncConnection, "connect", classmethod(guarded_pg_async))
        self.tier = tier
        try:
            yield
        finally:
            self.tier = None
