"""Every field of a request, at a value other than its default, arrives unchanged at ``Editor.edit``
through each way in and each queue adapter.

The request is derived from the declaration (``domain/request.py``: each field's example), never
listed here: a field added to ``EditParams`` is in it at once, and this test fails until every way
in (a row inserted as the user, REST JSON and multipart, the MCP tool, RunPod's direct input and
``edit_request_id``, the CLI, batches through SQL, REST and MCP) and both queue adapters carry it.
``RequestOptions`` (stored on the row, never given to the editor) are checked on the row.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from processor import composition
from processor.adapters.postgres.requests import request_columns
from processor.cli import app as cli_app
from processor.composition import build_runpod_handler
from processor.domain.ports.editor import Editor, EditorWrapper, EditResult, PreviewSink, ProgressCallback
from processor.domain.request import (
    OPTION_FIELDS,
    PARAM_FIELDS,
    DeclaredField,
    EditParams,
    RequestOptions,
    example_params,
)
from processor.domain.rules import OUTPUT_EXTENSIONS
from processor.domain.speed import LoraChoice
from processor.settings import load_settings
from processor.testing import (
    InMemoryJobQueue,
    InMemoryObjectStorage,
    StandInEditor,
    eventually,
    running_worker,
)
from tests.conftest import DEADLINE, Harness, acting_as, png_bytes, wait_for
from tests.embedded import parameters_in
from tests.test_mcp_tools import call_over_http, text_of
from tests.test_webhook_ways_in import endpoint_of

Received = dict[str, EditParams]


class RecordingEditor(EditorWrapper):
    """Records the parameters each edit receives, by prompt, then edits without a model."""

    def __init__(self) -> None:
        super().__init__(StandInEditor())
        self.received: Received = {}
        self._lock = threading.Lock()

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
    ) -> EditResult:
        with self._lock:
            self.received[params.prompt] = params
        return super().edit(images, params, on_progress=on_progress, cancel=cancel, previews=previews)


def sent(way: str) -> EditParams:
    """The request a way in sends: every field at its example; the prompt says which way it took."""
    example = example_params()
    return dataclasses.replace(example, prompt=f"{example.prompt} ({way})")


def as_json(value: Any) -> Any:
    """A field's value as a client sends it in JSON (LoRAs as objects, a UUID as text)."""
    if isinstance(value, tuple | list):
        return [as_json(item) for item in value]
    if isinstance(value, LoraChoice):
        return value.as_json()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def as_form(value: Any) -> str:
    """A field's value as a multipart form sends it: text, a list as JSON text."""
    return json.dumps(as_json(value)) if isinstance(value, tuple | list) else str(as_json(value))


def fields_of(request: EditParams | RequestOptions) -> dict[str, Any]:
    declared = PARAM_FIELDS if isinstance(request, EditParams) else OPTION_FIELDS
    return {item.name: getattr(request, item.name) for item in declared}


def differences(received: Mapping[str, EditParams], ways: Sequence[str]) -> dict[str, Any]:
    """Per way, the fields that did not arrive as sent (``missing`` when no edit arrived at all)."""
    found: dict[str, Any] = {}
    for way in ways:
        expected = sent(way)
        got = received.get(expected.prompt)
        if got is None:
            found[way] = "missing"
            continue
        changed = {
            item.name: (getattr(expected, item.name), getattr(got, item.name))
            for item in PARAM_FIELDS
            if getattr(expected, item.name) != getattr(got, item.name)
        }
        if changed:
            found[way] = changed
    return found


# What a valid value of each option is for a given user: an example cannot name the user's own rows.
OPTION_VALUES: dict[str, Callable[[Harness, uuid.UUID], Any]] = {
    "webhook_endpoint_id": endpoint_of,
    "idempotency_key": lambda harness, user: f"key-{uuid.uuid4()}",
}


def options_for(harness: Harness, user: uuid.UUID) -> RequestOptions:
    assert set(OPTION_VALUES) == {item.name for item in OPTION_FIELDS}, "say how to make each option"
    return RequestOptions(**{name: make(harness, user) for name, make in OPTION_VALUES.items()})


def b64png() -> str:
    return base64.b64encode(png_bytes()).decode()


# --- The ways in that make rows: the worker over PostgreSQL hands each to the editor --------------------


def via_row(harness: Harness, user: uuid.UUID, options: RequestOptions) -> uuid.UUID:
    path = harness.upload(user, f"{uuid.uuid4()}.png", png_bytes())
    columns = {**request_columns(sent("row")), **request_columns(options), "input_paths": [path]}
    with acting_as(harness.db, "authenticated", user) as conn:
        row = conn.execute(
            f"insert into edit_requests ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))}) "
            "returning id",
            tuple(columns.values()),
        ).fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


def via_rest_json(harness: Harness, user: uuid.UUID, options: RequestOptions) -> uuid.UUID:
    body = {**as_json(fields_of(sent("rest_json"))), **as_json(fields_of(options)), "image": b64png()}
    body = {name: as_json(value) for name, value in body.items()}
    response = httpx.post(
        f"{harness.served.url}/v1/edits", json=body, headers=auth(harness, user), timeout=60
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


def via_rest_multipart(harness: Harness, user: uuid.UUID, options: RequestOptions) -> uuid.UUID:
    data = {
        name: as_form(value)
        for name, value in {**fields_of(sent("rest_multipart")), **fields_of(options)}.items()
        if value is not None
    }
    response = httpx.post(
        f"{harness.served.url}/v1/edits",
        data=data,
        files={"image": ("in.png", png_bytes(), "image/png")},
        headers=auth(harness, user),
        timeout=60,
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["id"])


def via_mcp(harness: Harness, user: uuid.UUID, options: RequestOptions) -> uuid.UUID:
    arguments = {
        name: as_json(value) for name, value in {**fields_of(sent("mcp")), **fields_of(options)}.items()
    }
    result = call_over_http(
        harness,
        harness.storage.token(user),
        "edit_image",
        {**arguments, "image_base64": b64png(), "timeout_seconds": 0},
    )
    assert not result.is_error, text_of(result)
    return uuid.UUID(json.loads(text_of(result))["id"])


def auth(harness: Harness, user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer {harness.storage.token(user)}"}


def batch_sql(harness: Harness, user: uuid.UUID) -> None:
    path = harness.upload(user, f"{uuid.uuid4()}.png", png_bytes())
    columns = {**request_columns(sent("batch_sql")), "input_paths": [path]}
    with acting_as(harness.db, "authenticated", user) as conn:
        conn.execute(
            f"insert into edit_batches ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))})",
            tuple(columns.values()),
        )


def batch_rest_json(harness: Harness, user: uuid.UUID) -> None:
    body = {**as_json(fields_of(sent("batch_rest_json"))), "images": [b64png()]}
    body = {name: as_json(value) for name, value in body.items()}
    response = httpx.post(
        f"{harness.served.url}/v1/batches", json=body, headers=auth(harness, user), timeout=60
    )
    assert response.status_code == 202, response.text


def batch_rest_multipart(harness: Harness, user: uuid.UUID) -> None:
    data = {name: as_form(value) for name, value in fields_of(sent("batch_rest_multipart")).items()}
    response = httpx.post(
        f"{harness.served.url}/v1/batches",
        data=data,
        files={"image": ("in.png", png_bytes(), "image/png")},
        headers=auth(harness, user),
        timeout=60,
    )
    assert response.status_code == 202, response.text


def batch_mcp(harness: Harness, user: uuid.UUID) -> None:
    arguments = {name: as_json(value) for name, value in fields_of(sent("batch_mcp")).items()}
    result = call_over_http(
        harness, harness.storage.token(user), "submit_batch", {**arguments, "images_base64": [b64png()]}
    )
    assert not result.is_error, text_of(result)


SINGLE = {"row": via_row, "rest_json": via_rest_json, "rest_multipart": via_rest_multipart, "mcp": via_mcp}
BATCHES = {
    "batch_sql": batch_sql,
    "batch_rest_json": batch_rest_json,
    "batch_rest_multipart": batch_rest_multipart,
    "batch_mcp": batch_mcp,
}


@pytest.fixture
def allowlisted(db: Any) -> None:
    """The LoRAs the examples name, on the database's allowlist (the insert trigger refuses others)."""
    names = {lora.name for item in PARAM_FIELDS if item.spec.kind == "loras" for lora in item.spec.example}
    for name in sorted(names):
        db.execute("insert into edit_loras (name) values (%s)", (name,))


def test_every_field_arrives_through_every_way_that_makes_a_row(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID], allowlisted: None
) -> None:
    editor = RecordingEditor()
    harness = start_processor(rest=True, editor=editor)
    harness.db.execute(
        "update edit_webhook_settings set allow_http = true, allow_private_addresses = true, "
        "allowed_ports = array[443, 80, 9]"  # endpoint_of registers port 9 (discard: never sent to)
    )
    harness.db.execute("insert into edit_webhook_allowed_hosts (host) values ('127.0.0.1')")
    rows: dict[str, tuple[uuid.UUID, RequestOptions]] = {}
    for way, submit in SINGLE.items():
        user = make_user()  # a user per way: one way's requests never count against the next's limits
        options = options_for(harness, user)
        rows[way] = (submit(harness, user, options), options)
    for submit_batch in BATCHES.values():
        submit_batch(harness, make_user())
    ways = [*SINGLE, *BATCHES]
    wait_for(lambda: all(sent(way).prompt in editor.received for way in ways), what="every edit")
    assert differences(editor.received, ways) == {}
    # The options are the row's, as sent.
    for way, (request_id, options) in rows.items():
        row = harness.row(request_id)
        assert {name: row[name] for name in fields_of(options)} == fields_of(options), way
    # And the result is encoded as asked, whichever way the request came.
    done = wait_for(lambda: finished(harness, ways), what="every request to succeed")
    assert done is not None
    assert {way: encoded_as(harness, row) for way, row in done.items()} == dict.fromkeys(
        ways, EXAMPLE_ENCODING
    )


EXAMPLE_ENCODING = (
    example_params().output_format,
    example_params().output_quality,
    f"image/{example_params().output_format}",
)


def finished(harness: Harness, ways: Sequence[str]) -> dict[str, Any] | None:
    """Each way's row (found by its prompt) once every one has succeeded."""
    rows = {
        way: harness.db.execute(
            "select * from edit_requests where prompt = %s", (sent(way).prompt,)
        ).fetchone()
        for way in ways
    }
    return rows if all(row is not None and row["status"] == "succeeded" for row in rows.values()) else None


def encoded_as(harness: Harness, row: Any) -> tuple[Any, ...]:
    """The format and quality the result records, and the content type its object was stored with,
    once the object is checked to be that format (parameters inside, named after its format)."""
    fmt = row["result"]["output_format"]
    stored = harness.output(row)
    assert row["output_path"].endswith(f"/{row['id']}.{OUTPUT_EXTENSIONS[fmt]}")
    assert parameters_in(stored.content, fmt)["prompt"] == row["prompt"]
    return fmt, row["result"].get("output_quality"), stored.headers["content-type"]


# --- RunPod: its direct input, and a row it claims by id ------------------------------------------------


def test_every_field_arrives_through_runpod(
    database_url: str,
    storage_server: Any,
    db: Any,
    make_user: Callable[[], uuid.UUID],
    allowlisted: None,
) -> None:
    editor = RecordingEditor()
    settings = load_settings(
        database_url=database_url,
        supabase_url=storage_server.url,
        supabase_service_role_key=storage_server.service_key,
    )
    handler = build_runpod_handler(settings, editor, report=lambda job, update: None)
    direct = {name: as_json(value) for name, value in fields_of(sent("runpod_direct")).items()}
    output = asyncio.run(handler({"id": "direct", "input": {**direct, "image": b64png()}}))
    assert "error" not in output, output
    assert (output["output_format"], output["output_quality"], output["media_type"]) == EXAMPLE_ENCODING
    assert parameters_in(base64.b64decode(output["image"]), output["output_format"])["seed"] == str(
        output["seed"]
    )

    user = make_user()
    path = f"{user}/in.png"
    httpx.post(
        f"{storage_server.url}/storage/v1/object/edit-inputs/{path}",
        headers={"Authorization": f"Bearer {storage_server.token(user)}"},
        files={"file": ("in.png", png_bytes(), "image/png")},
    ).raise_for_status()
    columns = {**request_columns(sent("runpod_row")), "input_paths": [path]}
    with acting_as(db, "authenticated", user) as conn:
        row = conn.execute(
            f"insert into edit_requests ({', '.join(columns)}) values ({', '.join(['%s'] * len(columns))}) "
            "returning id",
            tuple(columns.values()),
        ).fetchone()
    assert row is not None
    output = asyncio.run(handler({"id": "row", "input": {"edit_request_id": str(row["id"])}}))
    assert output["status"] == "succeeded", output
    assert differences(editor.received, ["runpod_direct", "runpod_row"]) == {}
    done = db.execute("select output_path, result from edit_requests where id = %s", (row["id"],)).fetchone()
    result = done["result"]
    assert (result["output_format"], result.get("output_quality"), result["media_type"]) == EXAMPLE_ENCODING
    assert done["output_path"] == f"{user}/{row['id']}.{OUTPUT_EXTENSIONS[result['output_format']]}"


# --- The CLI: one option per field -----------------------------------------------------------------------


def cli_arguments(request: EditParams) -> Iterator[str]:
    for item in PARAM_FIELDS:
        value = getattr(request, item.name)
        if value is None:
            continue
        yield from option(item, value)


def option(item: DeclaredField, value: Any) -> Iterator[str]:
    name = item.spec.cli or f"--{item.name.replace('_', '-')}"
    if item.spec.kind == "loras":
        for lora in value:
            yield f"{name}={lora.name}" + ("" if lora.scale is None else f"={lora.scale}")
        return
    yield f"{name}={value}"  # `--option=value`: a value may start with a dash


def test_every_field_arrives_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    editor = RecordingEditor()

    def build_editor(settings: object) -> Editor:
        return editor

    monkeypatch.setattr(composition, "build_editor", build_editor)
    image = tmp_path / "in.png"
    image.write_bytes(png_bytes())
    request = sent("cli")
    assert request.output_format is not None
    out = tmp_path / f"out.{OUTPUT_EXTENSIONS[request.output_format]}"  # a suffix that agrees
    args = ["edit", "--out", str(out), "--image", str(image), *cli_arguments(request)]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, (result.output, result.stderr)
    assert differences(editor.received, ["cli"]) == {}
    metadata = json.loads(result.stdout)
    assert (metadata["output_format"], metadata["output_quality"]) == EXAMPLE_ENCODING[:2]
    assert parameters_in(out.read_bytes(), request.output_format)["prompt"] == request.prompt


# --- The in-memory queue, through the worker -----------------------------------------------------------


def test_every_field_arrives_through_the_in_memory_queue() -> None:
    async def main() -> Received:
        storage = InMemoryObjectStorage()
        queue = InMemoryJobQueue(storage=storage)
        storage.put("edit-inputs", "u/in.png", png_bytes())
        editor = RecordingEditor()
        by_params = queue.enqueue(input_paths=["u/in.png"], params=sent("memory_params"))
        by_fields = queue.enqueue(input_paths=["u/in.png"], **fields_of(sent("memory_fields")))
        async with running_worker(queue, storage, editor):
            await eventually(
                lambda: {queue.row(by_params).status, queue.row(by_fields).status} == {"succeeded"},
                what="both edits",
                timeout=DEADLINE,
            )
        for request_id in (by_params, by_fields):
            row = queue.row(request_id)
            assert row.output_path is not None and row.result is not None
            stored = storage.get("edit-outputs", row.output_path)
            assert stored is not None
            encoding = (row.result["output_format"], row.result.get("output_quality"), stored.content_type)
            assert encoding == EXAMPLE_ENCODING
        return editor.received

    received = asyncio.run(main())
    assert differences(received, ["memory_params", "memory_fields"]) == {}
