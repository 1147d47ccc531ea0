"""One LoRA allowlist: the processor's ``LORAS``. ``public.edit_loras`` (where the insert trigger checks
a request's LoRAs) is written from it whenever a processor starts, so the two cannot disagree: the
database refuses exactly the LoRAs the processor would not run."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from processor.adapters.postgres.loras import PostgresLoraAllowlist
from processor.composition import build_runpod_handler, lora_descriptions
from processor.core import lora_allowlist
from processor.core.lora_allowlist import publish_allowlist
from processor.core.service import ProcessorService
from processor.domain.errors import TransientError
from processor.domain.ports.loras import AllowlistChange
from processor.domain.reasons import ReasonCode
from processor.domain.rules import SpeedPreset
from processor.settings import load_settings
from processor.testing import InMemoryJobQueue, InMemoryObjectStorage, StandInEditor, eventually, fast_config
from tests.conftest import DEADLINE, StorageServer, acting_as

Db = psycopg.Connection[dict[str, Any]]


def allowed(db: Db) -> dict[str, str]:
    rows = db.execute("select name, description from edit_loras where enabled order by name").fetchall()
    return {str(row["name"]): str(row["description"]) for row in rows}


def insert_naming(db: Db, user: uuid.UUID, lora: str) -> str:
    """A user's insert naming ``lora``: ``accepted``, or the constraint that refused it."""
    try:
        with acting_as(db, "authenticated", user) as conn:
            conn.execute(
                "insert into edit_requests (prompt, input_paths, loras) values ('x', %s, %s)",
                ([f"{user}/in.png"], Jsonb([{"name": lora}])),
            )
    except psycopg.errors.CheckViolation as exc:
        return str(exc.diag.constraint_name)
    return "accepted"


def publish(
    database_url: str, loras: Mapping[str, str], default_speed: SpeedPreset | None = None
) -> AllowlistChange | None:
    return asyncio.run(
        publish_allowlist(
            PostgresLoraAllowlist(database_url), loras, asyncio.Event(), default_speed=default_speed
        )
    )


def test_the_table_becomes_loras_and_says_what_changed(database_url: str, db: Db) -> None:
    db.execute(
        "insert into edit_loras (name, description, enabled) values "
        "('gone', '', true), ('back', 'written by hand', false), ('kept', 'old words', true)"
    )
    change = publish(database_url, {"back": "", "kept": "new words", "fresh": "A new style"})
    assert change == AllowlistChange(added=("back", "fresh"), removed=("gone",))
    # A description LORAS leaves empty keeps the one written by hand.
    assert allowed(db) == {"back": "written by hand", "fresh": "A new style", "kept": "new words"}
    assert (
        publish(database_url, {"back": "", "kept": "new words", "fresh": "A new style"}) == AllowlistChange()
    )
    assert publish(database_url, {}) == AllowlistChange(removed=("back", "fresh", "kept"))
    assert allowed(db) == {}


def test_once_published_the_database_refuses_exactly_what_loras_leaves_out(
    database_url: str, db: Db, make_user: Callable[[], uuid.UUID]
) -> None:
    user = make_user()
    db.execute("insert into edit_loras (name) values ('stale')")  # allowed by hand, not in LORAS
    publish(database_url, {"ink": ""})
    assert insert_naming(db, user, "ink") == "accepted"
    assert insert_naming(db, user, "stale") == "edit_requests_loras_allowed"
    assert insert_naming(db, user, "never") == "edit_requests_loras_allowed"


def test_the_default_speed_follows_speed_so_a_request_without_one_is_charged_what_it_runs(
    database_url: str, db: Db, make_user: Callable[[], uuid.UUID]
) -> None:
    def charge_without_speed() -> float:
        user = make_user()
        with acting_as(db, "authenticated", user) as conn:
            row = conn.execute(
                "insert into edit_requests (prompt, input_paths) values ('x', %s) returning cost",
                ([f"{user}/in.png"],),
            ).fetchone()
        assert row is not None
        return float(row["cost"])

    def speed() -> str | None:
        row = db.execute("select default_speed from edit_queue_settings").fetchone()
        assert row is not None
        return row["default_speed"]

    unknown = charge_without_speed()  # null: the costlier of quality and fast
    assert publish(database_url, {}, "fast") == AllowlistChange(speed_changed=True, speed_before=None)
    assert speed() == "fast" and charge_without_speed() < unknown / 4
    assert publish(database_url, {}, "fast") == AllowlistChange()
    assert publish(database_url, {}, None) == AllowlistChange() and speed() == "fast"  # left alone
    assert publish(database_url, {}, "quality") == AllowlistChange(speed_changed=True, speed_before="fast")
    assert speed() == "quality" and charge_without_speed() == pytest.approx(unknown)


class Flaky:
    """An allowlist whose database does not answer ``faults`` times, then does; or always fails."""

    def __init__(self, faults: int = 0, error: Exception | None = None) -> None:
        self.faults, self.error, self.published = faults, error, asyncio.Event()
        self.calls = 0

    async def publish(self, loras: Mapping[str, str], *, default_speed: str | None = None) -> AllowlistChange:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.calls <= self.faults:
            raise TransientError("database unavailable: refused", reason=ReasonCode.DATABASE_UNAVAILABLE)
        self.published.set()
        return AllowlistChange(added=tuple(loras))


def service_with(allowlist: Flaky) -> ProcessorService:
    return ProcessorService(
        fast_config(),
        queue=InMemoryJobQueue(),
        storage=InMemoryObjectStorage(),
        editor_factory=StandInEditor,
        allowlist=allowlist,
        loras={"ink": ""},
    )


def test_a_starting_processor_publishes_through_outages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lora_allowlist, "RETRY_SECONDS", 0.05)

    async def main() -> None:
        allowlist = Flaky(faults=2)
        service = service_with(allowlist)
        await service.start()
        try:
            await asyncio.wait_for(asyncio.shield(allowlist.published.wait()), timeout=DEADLINE)
        finally:
            await service.stop()
        assert allowlist.calls == 3 and service.setup_error is None

    asyncio.run(main())


def test_a_processor_that_cannot_publish_does_not_go_on() -> None:
    async def main() -> str | None:
        service = service_with(Flaky(error=PermissionError("permission denied for table edit_loras")))
        await service.start()
        try:
            await eventually(lambda: service.state == "setup_failed", what="setup_failed", timeout=DEADLINE)
        finally:
            await service.stop()
        return service.setup_error

    error = asyncio.run(main())
    assert error is not None and "permission denied" in error


def test_runpod_publishes_on_its_first_row_job(
    database_url: str, db: Db, storage_server: StorageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    db.execute("insert into edit_loras (name) values ('stale')")
    monkeypatch.setenv(
        "LORAS", json.dumps({"ink": {"source": "owner/repo/ink.safetensors", "description": "Ink"}})
    )
    settings = load_settings(
        database_url=database_url,
        supabase_url=storage_server.url,
        supabase_service_role_key=storage_server.service_key,
    )
    assert lora_descriptions(settings) == {"ink": "Ink"}
    comfyui = settings.model_copy(update={"edit_engine": "comfyui"})
    assert lora_descriptions(comfyui) == {}  # it runs no request LoRAs: the database allows none
    handler = build_runpod_handler(settings, StandInEditor(), report=lambda job, update: None)
    output = asyncio.run(handler({"id": "row", "input": {"edit_request_id": str(uuid.uuid4())}}))
    assert output["status"] == "not_claimed"
    assert allowed(db) == {"ink": "Ink"}
