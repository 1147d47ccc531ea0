"""Retention (issue 14 part 3): finished requests' inputs and outputs and orphan uploads are deleted
through the Storage API (the stand-in, real SQL and triggers), bounded per run; live requests'
inputs never; rows keep their history and say what expired; failures lose nothing."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import dict_row

from processor.adapters.postgres.retention import PostgresRetentionStore
from processor.composition import build_service, retention_policy
from processor.core.retention import Retention, RetentionReport
from processor.domain import rules
from processor.domain.ports.retention import RetentionPolicy
from processor.observability.metrics import Metrics
from processor.settings import load_settings
from tests.conftest import DEADLINE, StorageServer, acting_as, wait_for

Row = dict[str, Any]
IN, OUT = rules.INPUT_BUCKET, rules.OUTPUT_BUCKET
LIVE = tuple(s for s in rules.STATUSES if s not in rules.TERMINAL)
OLD = timedelta(days=60)  # older than every default age


@dataclass
class World:
    db: psycopg.Connection[Row]
    server: StorageServer
    user: uuid.UUID
    url: str

    def put(self, bucket: str, name: str, *, age: timedelta = OLD) -> None:
        """An object as Storage would hold it, last written ``age`` ago (rows only: the stand-in deletes rows)."""
        self.db.execute(
            "insert into storage.objects (bucket_id, name, created_at, updated_at) values (%s, %s, now() - %s, now() - %s) "
            "on conflict (bucket_id, name) do update set updated_at = excluded.updated_at",
            (bucket, name, age, age),
        )

    def exists(self, bucket: str, name: str) -> bool:
        row = self.db.execute(
            "select count(*) as n from storage.objects where bucket_id = %s and name = %s", (bucket, name)
        ).fetchone()
        return bool(row and row["n"])

    def request(self, status: str, paths: list[str], *, finished_ago: timedelta = OLD) -> uuid.UUID:
        """A request brought to ``status`` through the state machine's own functions."""
        request_id = uuid.uuid4()
        present = status != "awaiting_image"
        for path in paths if present else paths[:-1]:
            if not self.exists(IN, path):
                self.put(IN, path)
        self.db.execute(
            "insert into edit_requests (id, user_id, prompt, input_paths) values (%s, %s, 'make it blue', %s)",
            (request_id, self.user, paths),
        )
        if status in ("processing", "succeeded", "failed"):
            claimed = self.db.execute(
                "select id from claim_edit_request('w', 60, %s)", (request_id,)
            ).fetchone()
            assert claimed is not None
        if status == "succeeded":
            self.put(OUT, f"{self.user}/{request_id}.png")
            self.db.execute(
                "select complete_edit_request(%s, 'w', %s, '{}')",
                (request_id, f"{self.user}/{request_id}.png"),
            )
        elif status == "failed":
            self.db.execute(
                "select fail_edit_request(%s, 'w', 'bad', false, 'unknown_format')", (request_id,)
            )
        elif status == "canceled":
            self.db.execute("select cancel_edit_request(%s)", (request_id,))
        row = self.row(request_id)
        assert row["status"] == status, row
        if status in rules.TERMINAL:
            self.db.execute(
                "update edit_requests set finished_at = now() - %s where id = %s", (finished_ago, request_id)
            )
        return request_id

    def row(self, request_id: uuid.UUID) -> Row:
        row = self.db.execute("select * from edit_requests where id = %s", (request_id,)).fetchone()
        assert row is not None
        return row

    def run(
        self,
        policy: RetentionPolicy | None = None,
        *,
        worker: str = "retention-test",
        timeout: float = 60.0,
        run_seconds: float = rules.DEFAULT_RETENTION_RUN_SECONDS,
    ) -> RetentionReport:
        async def main() -> RetentionReport:
            storage = self.server.adapter(attempts=2, timeout=timeout)
            retention = Retention(
                PostgresRetentionStore(self.db.info.dsn),
                storage,
                policy or RetentionPolicy(),
                worker_id=worker,
                interval_seconds=3600,
                run_seconds=run_seconds,
                metrics=Metrics(),
            )
            await storage.open()
            await retention.open()
            try:
                return await retention.run_once()
            finally:
                await retention.close()
                await storage.close()

        return asyncio.run(main())


@pytest.fixture
def world(
    db: psycopg.Connection[Row],
    database_url: str,
    storage_server: StorageServer,
    make_user: Callable[[], uuid.UUID],
) -> World:
    return World(db, storage_server, make_user(), database_url)


def test_only_expired_finished_objects_go_and_live_inputs_never(world: World) -> None:
    u = world.user
    own = {
        status: world.request(status, [f"{u}/own-{status}.png", f"{u}/own-{status}-2.png"])
        for status in rules.STATUSES
    }
    # Each live status shares an input with an old finished request of every terminal status.
    shared = {}
    for live in LIVE:
        path = f"{u}/shared-{live}.png"
        world.put(IN, path)
        shared[live] = (
            world.request(live, [path, f"{u}/shared-{live}-waiting.png"]),
            [world.request(done, [path]) for done in sorted(rules.TERMINAL)],
        )
    recent = world.request("succeeded", [f"{u}/recent.png"], finished_ago=timedelta(hours=1))
    before = {request_id: world.row(request_id) for request_id in own.values()}

    report = world.run()

    for status, request_id in own.items():
        row = world.row(request_id)
        paths = [f"{u}/own-{status}.png", f"{u}/own-{status}-2.png"]
        if status in rules.TERMINAL:
            assert not any(world.exists(IN, p) for p in paths), status
            assert row["inputs_expired_at"] is not None, status
        else:
            present = paths if status != "awaiting_image" else paths[:1]
            assert all(world.exists(IN, p) for p in present), status
            assert row["inputs_expired_at"] is None, status
        # History is kept: only the expiry columns (and updated_at) changed.
        changed = {k for k in row if row[k] != before[request_id][k]}
        assert changed <= {"inputs_expired_at", "output_expired_at", "updated_at"}, (status, changed)
    succeeded = world.row(own["succeeded"])
    assert (
        succeeded["output_expired_at"] is not None
        and succeeded["output_path"] == f"{u}/{own['succeeded']}.png"
    )
    assert not world.exists(OUT, succeeded["output_path"])
    for live, (live_id, finished) in shared.items():
        assert world.exists(IN, f"{u}/shared-{live}.png"), live
        assert world.row(live_id)["status"] == live
        for request_id in finished:
            assert world.row(request_id)["inputs_expired_at"] is None, live  # not all of its inputs are gone
    assert world.exists(IN, f"{u}/recent.png") and world.exists(OUT, world.row(recent)["output_path"])
    assert world.row(recent)["output_expired_at"] is None and world.row(recent)["inputs_expired_at"] is None
    # Outputs of every old succeeded request go, shared inputs or not.
    assert report.deleted["input"] == 6 and report.deleted["output"] == 1 + len(LIVE) and not report.errors


def test_with_an_output_goes_a_preview_a_crashed_attempt_left_beside_it(world: World) -> None:
    request_id = world.request("succeeded", [f"{world.user}/in.png"])
    output = world.row(request_id)["output_path"]
    leftover = rules.preview_path_beside(output, "webp")
    assert leftover == f"{world.user}/{request_id}.preview.webp"
    world.put(OUT, leftover)  # the row no longer names it: a worker died after uploading it
    report = world.run()
    assert not world.exists(OUT, output) and not world.exists(OUT, leftover)
    assert report.deleted["output"] == 1 and not report.errors  # the leftover is not counted as an output


def test_with_an_output_goes_one_an_attempt_left_in_another_format(world: World) -> None:
    # An attempt encoded under another OUTPUT_FORMAT, uploaded, then lost its lease; the next one
    # finished the request in PNG. Nothing names the first one's object.
    request_id = world.request("succeeded", [f"{world.user}/in.png"])
    output = world.row(request_id)["output_path"]
    leftovers = rules.output_names_beside(output)
    assert leftovers == [f"{world.user}/{request_id}.webp", f"{world.user}/{request_id}.jpg"]
    for name in leftovers:
        world.put(OUT, name)
    report = world.run()
    assert not any(world.exists(OUT, name) for name in [output, *leftovers])
    assert report.deleted["output"] == 1 and not report.errors


def test_a_path_a_recently_finished_request_names_is_kept(world: World) -> None:
    path = f"{world.user}/reused.png"
    old = world.request("failed", [path])
    world.request("canceled", [path], finished_ago=timedelta(hours=2))
    world.run()
    assert world.exists(IN, path) and world.row(old)["inputs_expired_at"] is None
    world.run(RetentionPolicy(input_age=timedelta(hours=1)))
    assert not world.exists(IN, path) and world.row(old)["inputs_expired_at"] is not None


def test_orphans_go_after_the_grace_only(world: World) -> None:
    u = world.user
    world.put(IN, f"{u}/orphan-old.png", age=timedelta(hours=30))
    world.put(IN, f"{u}/orphan-new.png", age=timedelta(hours=2))
    world.put(OUT, f"{u}/not-an-input-bucket.png", age=OLD)
    # Re-uploaded after the only request naming it finished: that version is nobody's input.
    rewritten = world.request("succeeded", [f"{u}/rewritten.png"], finished_ago=timedelta(days=3))
    world.put(IN, f"{u}/rewritten.png", age=timedelta(hours=30))
    keep_inputs = RetentionPolicy(input_age=None, output_age=None)

    report = world.run(keep_inputs)

    assert not world.exists(IN, f"{u}/orphan-old.png") and not world.exists(IN, f"{u}/rewritten.png")
    assert world.exists(IN, f"{u}/orphan-new.png") and world.exists(OUT, f"{u}/not-an-input-bucket.png")
    assert report.deleted["orphan"] == 2
    assert world.row(rewritten)["output_expired_at"] is None  # outputs are kept forever here
    assert world.run(RetentionPolicy(input_age=None, output_age=None, orphan_grace=None)).candidates == 0


def test_a_storage_outage_loses_nothing_and_the_next_run_retries(world: World) -> None:
    request_id = world.request("succeeded", [f"{world.user}/in.png"])
    world.server.faults.fail_next(4, 503, method="DELETE")  # every attempt of both buckets' deletes

    failed = world.run()

    assert failed.errors and failed.failed["input"] == 1 and failed.failed["output"] == 1
    row = world.row(request_id)
    assert world.exists(IN, f"{world.user}/in.png") and world.exists(OUT, row["output_path"])
    assert row["inputs_expired_at"] is None and row["output_expired_at"] is None

    retried = world.run()

    assert not retried.errors and retried.deleted["input"] == 1 and retried.deleted["output"] == 1
    row = world.row(request_id)
    assert row["inputs_expired_at"] is not None and row["output_expired_at"] is not None


def test_a_delete_whose_answer_was_lost_is_marked_by_what_storage_no_longer_holds(world: World) -> None:
    # Storage deletes, but the answer comes after the client's timeout; the retry finds nothing
    # to delete. The row is marked all the same: marks come from storage.objects, not answers.
    request_id = world.request("failed", [f"{world.user}/late.png"])
    world.server.faults.delay_answer_next(1, 3.0, method="DELETE")
    report = world.run(RetentionPolicy(output_age=None, orphan_grace=None), timeout=1.0)
    assert not world.exists(IN, f"{world.user}/late.png")
    assert report.kept["input"] == 1 and not report.errors
    assert world.row(request_id)["inputs_expired_at"] is not None


def test_a_retried_request_loses_its_marks_and_expires_again(world: World) -> None:
    path = f"{world.user}/retried.png"
    request_id = world.request("failed", [path])
    world.run()
    assert world.row(request_id)["inputs_expired_at"] is not None
    world.db.execute("select retry_edit_request(%s)", (request_id,))
    assert (world.row(request_id)["status"], world.row(request_id)["inputs_expired_at"]) == (
        "awaiting_image",
        None,
    )
    world.put(IN, path)  # uploaded again: queued, then it fails again, long ago
    world.db.execute("select id from claim_edit_request('w', 60, %s)", (request_id,))
    world.db.execute("select fail_edit_request(%s, 'w', 'bad', false, 'unknown_format')", (request_id,))
    world.db.execute(
        "update edit_requests set finished_at = now() - interval '60 days' where id = %s", (request_id,)
    )
    world.db.execute(
        "update storage.objects set updated_at = now() - interval '61 days' where name = %s", (path,)
    )
    world.run()
    assert not world.exists(IN, path) and world.row(request_id)["inputs_expired_at"] is not None


def test_creations_have_no_inputs_to_expire(world: World) -> None:
    creation = uuid.uuid4()
    world.db.execute(
        "insert into edit_requests (id, user_id, prompt, input_paths, width, height) values (%s, %s, 'a cat', '{}', 64, 64)",
        (creation, world.user),
    )
    world.db.execute("select cancel_edit_request(%s)", (creation,))
    world.db.execute(
        "update edit_requests set finished_at = now() - interval '60 days' where id = %s", (creation,)
    )
    assert world.run().candidates == 0
    assert world.row(creation)["inputs_expired_at"] is None


def test_each_batch_is_bounded_and_a_run_takes_batches_while_work_remains(world: World) -> None:
    """A batch an hour was all a run did: 500 objects an hour, whatever was uploaded. A run now
    takes batch after batch while the last one deleted something (within its time budget)."""
    for index in range(14):
        world.request("canceled", [f"{world.user}/c{index}.png"])
    policy = RetentionPolicy(batch_size=3)
    assert [world.run(policy, run_seconds=0).deleted["input"] for _ in range(2)] == [3, 3]
    report = world.run(policy)
    assert (report.deleted["input"], report.batches) == (8, 3)  # 3 + 3 + 2, then nothing is due
    assert not any(world.exists(IN, f"{world.user}/c{index}.png") for index in range(14))


def test_the_orphan_scan_is_bounded_and_resumes_where_it_stopped(world: World) -> None:
    # 20 x batch objects are looked at per run: with batch 1, a run sees 20, the orphans among them.
    names = [f"{world.user}/o{index:03}.png" for index in range(45)]
    for index, name in enumerate(names):
        world.put(IN, name, age=timedelta(days=2) if index % 10 == 0 else timedelta(minutes=5))
    policy = RetentionPolicy(input_age=None, output_age=None, batch_size=1)
    deleted = [world.run(policy, run_seconds=0).deleted["orphan"] for _ in range(6)]
    assert sum(deleted) == 5 and max(deleted) == 1
    assert [name for index, name in enumerate(names) if world.exists(IN, name)] == [
        name for index, name in enumerate(names) if index % 10
    ]


def test_an_input_named_by_a_request_inserted_after_the_list_is_kept(world: World) -> None:
    """The race: listed as due, then a new request names it, then Storage is asked to delete it."""
    path = f"{world.user}/raced.png"
    old = world.request("succeeded", [path])

    async def listed() -> list[str]:
        store = PostgresRetentionStore(world.db.info.dsn)
        await store.open()
        try:
            return [c.path for c in await store.candidates("w1", RetentionPolicy(output_age=None))]
        finally:
            await store.release("w1")
            await store.close()

    assert asyncio.run(listed()) == [path]
    new = world.request("queued", [path])  # between the list and the delete

    async def delete_and_mark() -> tuple[list[str], int]:
        storage = world.server.adapter()
        store = PostgresRetentionStore(world.db.info.dsn)
        await storage.open()
        await store.open()
        try:
            return await storage.delete_many(IN, [path]), await store.mark_deleted(IN, [path])
        finally:
            await store.close()
            await storage.close()

    assert asyncio.run(delete_and_mark()) == ([], 0)
    assert world.exists(IN, path) and world.row(new)["status"] == "queued"
    assert world.row(old)["inputs_expired_at"] is None


def test_an_insert_racing_a_delete_waits_and_then_finds_its_input_gone(world: World) -> None:
    path = f"{world.user}/gone.png"
    world.put(IN, path)
    deleting = psycopg.connect(world.db.info.dsn, row_factory=dict_row)
    try:
        # Storage's delete transaction: the guard trigger takes the path's slot lock.
        deleting.execute("select set_config('storage.allow_delete_query', 'true', true)")
        deleting.execute("delete from storage.objects where bucket_id = %s and name = %s", (IN, path))
        outcome: dict[str, Any] = {}

        def insert() -> None:
            with psycopg.connect(world.db.info.dsn, autocommit=True, row_factory=dict_row) as conn:
                outcome["row"] = conn.execute(
                    "insert into edit_requests (user_id, prompt, input_paths) values (%s, 'x', %s) returning id",
                    (world.user, [path]),
                ).fetchone()

        thread = threading.Thread(target=insert)
        thread.start()
        wait_for(
            lambda: world.db.execute(
                "select 1 from pg_locks where locktype = 'advisory' and not granted"
            ).fetchone(),
            what="the insert waiting for the slot lock",
        )
        deleting.commit()
        thread.join(DEADLINE)
    finally:
        deleting.close()
    assert world.row(outcome["row"]["id"])["status"] == "awaiting_image"


def test_one_worker_at_a_time_holds_the_retention_lease(world: World) -> None:
    world.request("failed", [f"{world.user}/leased.png"])

    async def scenario() -> list[int]:
        store = PostgresRetentionStore(world.db.info.dsn)
        await store.open()
        try:
            first = await store.candidates("w1", RetentionPolicy())
            second = await store.candidates("w2", RetentionPolicy())
            await store.release("w1")
            third = await store.candidates("w2", RetentionPolicy())
            await store.release("w2")
            return [len(first), len(second), len(third)]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [1, 0, 1]


def test_a_hostile_user_cannot_list_mark_or_release(world: World) -> None:
    request_id = world.request("succeeded", [f"{world.user}/mine.png"])
    calls = [
        "select * from edit_retention_candidates('me', '1 hour', '1 hour', '1 hour', 1000)",
        f"select edit_retention_mark('edit-inputs', array['{world.user}/mine.png'])",
        "select edit_retention_release('retention-test')",
        "select * from edit_retention_state",
        "update edit_retention_state set held_by = 'me'",
    ]
    for role in ("authenticated", "anon"):
        for call in calls:
            with pytest.raises(errors.InsufficientPrivilege), acting_as(world.db, role, world.user) as conn:
                conn.execute(call)
    with acting_as(world.db, "authenticated", world.user) as conn:
        row = conn.execute(
            "select inputs_expired_at, output_expired_at from edit_requests where id = %s", (request_id,)
        ).fetchone()
    assert row == {"inputs_expired_at": None, "output_expired_at": None}
    with (
        pytest.raises(errors.InsufficientPrivilege),
        acting_as(world.db, "authenticated", world.user) as conn,
    ):
        conn.execute("update edit_requests set output_expired_at = now() where id = %s", (request_id,))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("'w', null, null, null, 0", "p_limit must be between 1 and 1000"),
        (
            f"'w', null, null, null, {rules.MAX_RETENTION_BATCH_SIZE + 1}",
            "p_limit must be between 1 and 1000",
        ),
        ("'w', '0 hours', null, null, 10", "ages must be positive"),
        (
            f"'w', null, null, '{rules.MIN_ORPHAN_GRACE_HOURS * 60 - 1} minutes', 10",
            "p_orphan_grace must be at least 1 hour",
        ),
        ("'', null, null, null, 10", "p_worker_id is required"),
    ],
)
def test_sql_refuses_what_the_rules_refuse(db: psycopg.Connection[Row], arguments: str, message: str) -> None:
    with pytest.raises(errors.InvalidParameterValue, match=message):
        db.execute(f"select * from edit_retention_candidates({arguments})")


def test_sql_accepts_the_bounds_themselves(db: psycopg.Connection[Row]) -> None:
    db.execute(
        "select * from edit_retention_candidates('w', '1 second', '1 second', %s, %s)",
        (timedelta(hours=rules.MIN_ORPHAN_GRACE_HOURS), rules.MAX_RETENTION_BATCH_SIZE),
    )
    db.execute("select * from edit_retention_candidates('w', null, null, null, 1)")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retention_batch_size", 0),
        ("retention_batch_size", rules.MAX_RETENTION_BATCH_SIZE + 1),
        ("orphan_grace_hours", rules.MIN_ORPHAN_GRACE_HOURS / 2),
        ("input_retention_hours", -1),
        ("retention_interval_seconds", rules.MIN_RETENTION_INTERVAL_SECONDS - 1),
    ],
)
def test_settings_refuse_the_same_bounds(name: str, value: float) -> None:
    from processor.domain.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=name.upper()):
        load_settings(**{name: value})


def test_zero_keeps_forever_and_the_service_runs_retention_only_when_something_expires() -> None:
    base = {
        "database_url": "postgresql://postgres@127.0.0.1:1/none",
        "supabase_url": "http://127.0.0.1:1",
        "supabase_service_role_key": "key",
    }
    forever = load_settings(**base, input_retention_hours=0, output_retention_hours=0, orphan_grace_hours=0)
    assert retention_policy(forever).keeps_everything
    assert build_service(forever, listen_for_notifications=False)._retention is None
    defaults = load_settings(**base)
    assert retention_policy(defaults) == RetentionPolicy()
    assert build_service(defaults, listen_for_notifications=False)._retention is not None


def test_the_cli_runs_once_and_prints_the_counts(world: World) -> None:
    import json

    from typer.testing import CliRunner

    from processor.cli import app

    world.request("succeeded", [f"{world.user}/cli.png"])
    env = {
        "DATABASE_URL": world.url,
        "SUPABASE_URL": world.server.url,
        "SUPABASE_SERVICE_ROLE_KEY": world.server.service_key,
        "LOG_FORMAT": "console",
        "LOG_LEVEL": "warning",
    }
    done = CliRunner().invoke(app, ["retention", "--once"], env=env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["deleted"] == {"input": 1, "output": 1}

    world.request("failed", [f"{world.user}/cli-2.png"])
    world.server.faults.fail_next(8, 503, method="DELETE")
    failed = CliRunner().invoke(app, ["retention", "--once"], env={**env, "STORAGE_RETRY_ATTEMPTS": "2"})
    assert failed.exit_code == 1 and json.loads(failed.stdout)["failed"] == {"input": 1}

    forever = CliRunner().invoke(
        app,
        ["retention", "--once"],
        env={**env, "INPUT_RETENTION_HOURS": "0", "OUTPUT_RETENTION_HOURS": "0", "ORPHAN_GRACE_HOURS": "0"},
    )
    assert forever.exit_code == 2 and "keeps everything" in forever.output


def test_the_service_sweeps_in_the_background_and_users_see_their_output_expired(world: World) -> None:
    """The processor's own periodic task (built as composition builds it), while the model loads;
    the owner then reads the expiry and gets no output URL for a deleted result."""
    from processor.adapters.postgres.queue import PostgresJobQueue
    from processor.adapters.postgres.requests import EditRequests
    from processor.core.service import ProcessorService
    from processor.core.worker import WorkerConfig
    from processor.domain.images import ImageLimits
    from processor.domain.users import User

    request_id = world.request("succeeded", [f"{world.user}/bg.png"])
    output = world.row(request_id)["output_path"]
    loaded = threading.Event()

    def slow_model() -> Any:
        loaded.wait(DEADLINE)
        raise RuntimeError("no model in this test")

    async def scenario() -> dict[str, Any] | None:
        storage = world.server.adapter()
        metrics = Metrics()
        retention = Retention(
            PostgresRetentionStore(world.url),
            storage,
            RetentionPolicy(),
            worker_id="svc",
            interval_seconds=60,
            metrics=metrics,
        )
        config = WorkerConfig(
            worker_id="svc",
            lease_seconds=30,
            heartbeat_interval_seconds=1,
            progress_interval_seconds=0.5,
            sweep_interval_seconds=5,
            worker_concurrency=1,
            shutdown_grace_seconds=1,
            image_limits=ImageLimits(max_bytes=1 << 20, max_pixels=1 << 22, min_side=8),
        )
        service = ProcessorService(
            config,
            queue=PostgresJobQueue(world.url),
            storage=storage,
            editor_factory=slow_model,
            metrics=metrics,
            retention=retention,
        )
        await service.start()
        try:
            # The run's counts are recorded after its marks: wait for them, not for the object.
            counted = b'edit_processor_retention_objects_total{kind="output",outcome="deleted"} 1.0'
            deadline = asyncio.get_running_loop().time() + 30
            while counted not in metrics.render():
                assert asyncio.get_running_loop().time() < deadline, "retention did not run"
                await asyncio.sleep(0.05)
            assert not world.exists(OUT, output)
        finally:
            loaded.set()
            await service.stop()
        requests = EditRequests(world.url)
        await requests.open()
        try:
            return await requests.get(
                User(world.user, {"role": "authenticated", "sub": str(world.user)}), request_id
            )
        finally:
            await requests.close()

    seen = asyncio.run(scenario())
    assert (
        seen is not None and seen["output_expired_at"] is not None and seen["inputs_expired_at"] is not None
    )
    assert seen["output_path"] == output  # history kept

    from processor.core.user_actions import UserActions

    assert asyncio.run(UserActions.output_url(None, seen)) is None  # type: ignore[arg-type]


# --- What one user can make a run cost (issue 22 item 5) ------------------------------------------------


def finished_rows_naming(world: World, path: str, count: int, *, finished_ago: timedelta = OLD) -> None:
    """``count`` canceled requests naming ``path``, as cancel_edit_batch leaves a batch whose shared
    reference was never uploaded (inserted as finished rows: the constraints hold, the state machine is
    not run ``count`` times)."""
    world.db.execute(
        "insert into edit_requests (user_id, prompt, input_paths, status, finished_at) "
        "select %s, 'x', array[%s], 'canceled', now() - %s from generate_series(1, %s)",
        (world.user, path, finished_ago, count),
    )
    world.db.execute("analyze edit_requests")


def rows_read_by_one_candidates_call(world: World, policy: RetentionPolicy) -> tuple[int, int]:
    """Rows of ``edit_requests`` one ``edit_retention_candidates`` call reads (sequential and index
    fetches: the difference of the backend's own counts around the call), and the candidates it returns."""
    counted = (
        "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as n "
        "from pg_stat_xact_user_tables where relid = 'public.edit_requests'::regclass"
    )
    with world.db.transaction():
        before = world.db.execute(counted).fetchone()
        found = world.db.execute(
            "select count(*) as n from edit_retention_candidates('w', %s, %s, %s, %s)",
            (policy.input_age, policy.output_age, policy.orphan_grace, policy.batch_size),
        ).fetchone()
        after = world.db.execute(counted).fetchone()
    world.db.execute("select edit_retention_release('w')")
    assert before is not None and found is not None and after is not None
    return int(after["n"]) - int(before["n"]), int(found["n"])


@pytest.mark.parametrize("uploaded", [False, True], ids=["never-uploaded", "uploaded"])
def test_rows_naming_one_blocked_path_cost_each_run_reads_linear_in_them(
    world: World, uploaded: bool
) -> None:
    """The stall: N finished rows name one path a live request also names. Each row used to sum up
    all N rows naming the path, a run read N² rows, and every run did it again (11.9 s at 4,000
    rows); now each distinct path is decided once a run (a path Storage does not hold needs no
    decision at all, and a path found blocked is remembered)."""
    shared = f"{world.user}/reference.png"
    if uploaded:
        world.put(IN, shared)
    count = 300
    finished_rows_naming(world, shared, count)
    world.request("queued" if uploaded else "awaiting_image", [shared])  # live: the path is blocked
    policy = RetentionPolicy(output_age=None, orphan_grace=None)

    runs = [rows_read_by_one_candidates_call(world, policy) for _ in range(2)]

    assert [found for _, found in runs] == [0, 0]  # nothing a live request names is due
    assert all(read <= 5 * count for read, _ in runs), f"{runs} rows read for {count} rows naming one path"
    assert world.exists(IN, shared) is uploaded


def test_a_run_looks_at_a_bounded_window_and_the_next_run_carries_on_from_it(world: World) -> None:
    """1,000 due rows, each path blocked by a request that finished an hour ago: a run with batch size
    1 looks at 20 of them (20 x the batch), not all 1,000, and the runs that follow walk on until they
    reach the one row that is due."""
    u = world.user
    count = 1000
    world.db.execute(
        "insert into storage.objects (bucket_id, name, created_at, updated_at) "
        "select 'edit-inputs', %s || '/b' || i || '.png', now() - interval '61 days', now() - interval '61 days' "
        "from generate_series(0, %s - 1) i",
        (str(u), count),
    )
    world.db.execute(
        "insert into edit_requests (user_id, prompt, input_paths, status, finished_at) "
        "select %s, 'x', array[%s || '/b' || i || '.png'], 'canceled', now() - interval '60 days' + i * interval '1 second' "
        "from generate_series(0, %s - 1) i "
        "union all select %s, 'x', array[%s || '/b' || i || '.png'], 'canceled', now() - interval '1 hour' "
        "from generate_series(0, %s - 1) i",
        (u, str(u), count, u, str(u), count),
    )
    world.db.execute("analyze edit_requests")
    due = world.request("failed", [f"{u}/due.png"], finished_ago=timedelta(days=59))
    policy = RetentionPolicy(output_age=None, orphan_grace=None, batch_size=1)

    reads = []
    for _ in range(count // 20 + 2):
        read, found = rows_read_by_one_candidates_call(world, policy)
        reads.append(read)
        if found:
            break
    assert found == 1 and count // 20 <= len(reads) <= count // 20 + 1, reads
    assert max(reads) <= 200, reads
    assert world.row(due)["inputs_expired_at"] is None  # listed, not yet deleted


def test_a_stuck_retention_statement_ends_at_its_timeout_and_the_run_reports_it(world: World) -> None:
    """Whatever makes a call slow (here: another transaction holding the retention state row), the
    retention connection gives up after its statement timeout, and the run ends as failed."""
    from processor.domain.errors import TransientError

    world.request("failed", [f"{world.user}/stuck.png"])
    holder = psycopg.connect(world.db.info.dsn)
    try:
        holder.execute("select * from edit_retention_state for update")

        async def scenario() -> None:
            store = PostgresRetentionStore(world.db.info.dsn, statement_timeout_seconds=0.2)
            await store.open()
            try:
                async with asyncio.timeout(30):
                    with pytest.raises(TransientError, match="statement timeout"):
                        await store.candidates("w", RetentionPolicy())
            finally:
                await store.close()

        asyncio.run(scenario())
    finally:
        holder.close()
    assert world.exists(IN, f"{world.user}/stuck.png")
