"""Live previews (docs/previews.md): the SQL fence, the diffusers projection, the core's uploader
(off the step path, nothing after the end), and both engines' previews landing on the row."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
import torch
from PIL import Image

from processor.adapters.comfyui.editor import ComfyUIEditor, parse_preview_frame
from processor.adapters.diffusers.previews import fit_projection, fitting_images, project, unpack
from processor.devtools.serving import serve_in_thread
from processor.domain import rules
from processor.domain.ports.editor import (
    Editor,
    EditorWrapper,
    EditResult,
    Preview,
    PreviewSink,
    ProgressCallback,
)
from processor.domain.request import EditParams
from processor.domain.rules import OUTPUT_EXTENSIONS, OutputFormat
from processor.observability.metrics import Metrics
from processor.testing import (
    InMemoryJobQueue,
    InMemoryObjectStorage,
    StandInEditor,
    eventually,
    fast_config,
    running_worker,
)
from tests.comfyui_server import ComfyState, create_comfyui_app
from tests.conftest import DEADLINE, GatedEditor, Harness, acting_as, picture, png_bytes, wait_for

if TYPE_CHECKING:
    from processor.adapters.diffusers.engine import DiffusersEditor

Row = dict[str, Any]


# --- SQL: who may write a preview, and who may read it ---------------------------------------------
def claim(db: psycopg.Connection[Row], request_id: uuid.UUID, worker: str) -> None:
    row = db.execute("select id from claim_edit_request(%s, 60, %s)", (worker, request_id)).fetchone()
    assert row is not None and row["id"] == request_id


def preview(db: psycopg.Connection[Row], request_id: uuid.UUID, worker: str, step: int) -> bool:
    row = db.execute(
        "select preview_edit_request(%s, %s, %s, %s) as done",
        (request_id, worker, f"{request_id}.preview.webp", step),
    ).fetchone()
    return bool(row and row["done"])


def test_only_the_lease_holder_writes_previews_steps_go_up_and_none_after_the_end(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    assert not preview(db, request_id, "w1", 1)  # queued: nobody holds it
    claim(db, request_id, "w1")
    assert preview(db, request_id, "w1", 2)
    assert not preview(db, request_id, "w2", 3)  # not the lease holder
    assert not preview(db, request_id, "w1", 2) and not preview(db, request_id, "w1", 1)  # steps only go up
    assert preview(db, request_id, "w1", 5)
    done = db.execute("select complete_edit_request(%s, 'w1', 'out.png') as ok", (request_id,)).fetchone()
    assert done and done["ok"]
    assert not preview(db, request_id, "w1", 6)  # the job has ended: no stale preview
    row = db.execute(
        "select preview_path, preview_step, status from edit_requests where id = %s", (request_id,)
    ).fetchone()
    assert row == {"preview_path": None, "preview_step": None, "status": "succeeded"}  # stale once final


def test_a_new_attempt_starts_its_previews_afresh(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    claim(db, request_id, "w1")
    assert preview(db, request_id, "w1", 8)
    db.execute("select fail_edit_request(%s, 'w1', 'gone', true, 'transient_error')", (request_id,))
    db.execute("update edit_requests set next_attempt_at = null where id = %s", (request_id,))
    claim(db, request_id, "w2")
    row = db.execute(
        "select preview_path, preview_step from edit_requests where id = %s", (request_id,)
    ).fetchone()
    assert row == {"preview_path": None, "preview_step": None}
    assert preview(db, request_id, "w2", 1)


def test_the_step_bound_is_the_rules_and_path_and_step_come_together(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID]
) -> None:
    request_id = add_request()
    claim(db, request_id, "w1")
    assert preview(db, request_id, "w1", rules.MAX_STEPS)
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute(
            "update edit_requests set preview_step = %s where id = %s", (rules.MAX_STEPS + 1, request_id)
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        db.execute("update edit_requests set preview_path = null where id = %s", (request_id,))
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        preview(db, request_id, "w1", 0)


def test_hostile_users_cannot_write_previews_and_owners_alone_read_them(
    db: psycopg.Connection[Row], add_request: Callable[..., uuid.UUID], make_user: Callable[[], uuid.UUID]
) -> None:
    owner, other = make_user(), make_user()
    request_id = add_request(user_id=owner, input_paths=[f"{owner}/in.png"])
    claim(db, request_id, "w1")
    for role, user in (("authenticated", owner), ("authenticated", other), ("anon", None)):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, role, user) as conn:
            conn.execute("select preview_edit_request(%s, 'w1', 'x.webp', 99)", (request_id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(db, role, user) as conn:
            conn.execute(
                "update edit_requests set preview_step = 99, preview_path = 'x' where id = %s", (request_id,)
            )
    assert preview(db, request_id, "w1", 3)
    with acting_as(db, "authenticated", owner) as conn:
        mine = conn.execute("select preview_path, preview_step from edit_requests").fetchall()
    with acting_as(db, "authenticated", other) as conn:
        theirs = conn.execute("select preview_path, preview_step from edit_requests").fetchall()
    assert mine == [{"preview_path": f"{request_id}.preview.webp", "preview_step": 3}] and theirs == []


# --- The diffusers engine: projection, previews per K steps, nothing after the end -------------------
def test_unpack_inverts_the_pipelines_packing(tiny_editor: DiffusersEditor) -> None:
    pipe = tiny_editor.pipeline
    latents = torch.randn(1, 4, 6, 10)  # (batch, z, h, w) at latent resolution: a 80×48 image
    packed = pipe._pack_latents(latents, 1, 4, 6, 10)
    assert torch.equal(unpack(packed, 48, 80, pipe.vae_scale_factor), latents[0])


def test_the_projection_is_fitted_from_the_vae_and_explains_its_colours(tiny_editor: DiffusersEditor) -> None:
    pipe = tiny_editor.pipeline
    weights = tiny_editor.preview_projection()
    assert weights.shape == (pipe.vae.config.z_dim + 1, 3)
    assert tiny_editor.preview_projection() is weights  # cached on the editor
    images = fitting_images()
    with torch.inference_mode():
        encoded = pipe.vae.encode((images * 2 - 1).unsqueeze(2)).latent_dist.mode()[:, :, 0]
    assert torch.allclose(fit_projection(pipe), weights)  # deterministic
    target = torch.nn.functional.avg_pool2d(images, 8).permute(0, 2, 3, 1)
    predicted = torch.stack([project(latent, weights) for latent in encoded]).float() / 255
    residual = ((predicted - target) ** 2).mean()
    baseline = ((target - target.mean(dim=(0, 1, 2))) ** 2).mean()
    # Better than the best constant colour. (The tiny VAE's random weights keep little colour in 4
    # channels, so the bar is low here; least squares cannot do worse than its own mean.)
    assert residual < 0.95 * baseline


def edit_with_previews(
    editor: Editor, every: int, steps: int = 6, deliver: Callable[[Preview], None] | None = None
) -> tuple[EditResult, list[Preview]]:
    got: list[Preview] = []
    sink = PreviewSink(every, deliver or got.append)
    params = EditParams(prompt="make it blue", num_inference_steps=steps, seed=3, width=96, height=64)
    return editor.edit([picture()], params, previews=sink), got


def test_diffusers_previews_every_k_steps_are_small_webps_of_increasing_steps(
    tiny_editor: DiffusersEditor,
) -> None:
    delivered: list[Preview] = []
    arrived = threading.Condition()

    def slow_enough(preview: Preview) -> None:
        with arrived:
            delivered.append(preview)
            arrived.notify_all()

    result, _ = edit_with_previews(tiny_editor, 2, steps=8, deliver=slow_enough)
    steps = [p.step for p in delivered]
    assert steps and steps == sorted(set(steps)) and set(steps) <= {2, 4, 6}  # every 2nd, never the last
    for item in delivered:
        with Image.open(io.BytesIO(item.data)) as image:
            assert image.format == "WEBP" and image.size == (96 // 8, 64 // 8) == (item.width, item.height)
        assert item.content_type == "image/webp" and item.total == 8
    assert result.image.size == (96, 64)
    assert not [t for t in threading.enumerate() if t.name == "diffusers-previews"]  # joined: nothing later


def test_no_previews_when_k_is_zero_or_no_sink(tiny_editor: DiffusersEditor) -> None:
    _, got = edit_with_previews(tiny_editor, 0)
    assert got == []
    plain = tiny_editor.edit(
        [picture()], EditParams(prompt="make it blue", num_inference_steps=2, seed=3, width=96, height=64)
    )
    with_sink, _ = edit_with_previews(tiny_editor, 1, steps=2)
    assert plain.image.tobytes() == with_sink.image.tobytes()  # previews never change the result


def test_a_stuck_sink_does_not_hold_the_steps(tiny_editor: DiffusersEditor) -> None:
    in_deliver, last_step = threading.Event(), threading.Event()
    delivered: list[int] = []

    def stuck(preview: Preview) -> None:
        delivered.append(preview.step)
        in_deliver.set()
        assert last_step.wait(DEADLINE)

    def progress(step: int, total: int) -> None:
        if step == 2:
            assert in_deliver.wait(DEADLINE)  # the preview of step 1 is now stuck in the sink
        if step == total:
            last_step.set()  # every step ran while it was stuck

    params = EditParams(prompt="make it blue", num_inference_steps=8, seed=3, width=96, height=64)
    result = tiny_editor.edit([picture()], params, on_progress=progress, previews=PreviewSink(1, stuck))
    assert result.image.size == (96, 64) and delivered[0] == 1 and len(delivered) <= 2


def test_a_failing_sink_never_fails_the_edit(tiny_editor: DiffusersEditor) -> None:
    def broken(preview: Preview) -> None:
        raise RuntimeError("sink is broken")

    result, _ = edit_with_previews(tiny_editor, 1, deliver=broken)
    assert result.image.size == (96, 64)


# --- The core: uploads off the step path, the latest only, nothing after the end -------------------
class HeldPreviewUploads(InMemoryObjectStorage):
    """Storage whose preview uploads hang until released (a stalled Storage); others go through."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.finished = 0
        self.release = asyncio.Event()

    async def upload(self, bucket: str, path: str, data: bytes, *, content_type: str) -> None:
        if ".preview." in path:
            self.started += 1
            await self.release.wait()
            self.finished += 1
        await super().upload(bucket, path, data, content_type=content_type)


def counter(metrics: Metrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("edit_processor_previews_total", {"outcome": outcome}) or 0.0


async def scenario_previews_reach_the_row_with_increasing_steps(fmt: OutputFormat) -> None:
    storage = InMemoryObjectStorage()
    queue = InMemoryJobQueue(storage=storage)
    storage.put("edit-inputs", "u/in.png", png_bytes())
    editor = StandInEditor(step_seconds=0.01, size=128)
    request_id = queue.enqueue("make it blue", ["u/in.png"], num_inference_steps=12, output_format=fmt)
    seen: list[tuple[int | None, str | None, bytes | None]] = []

    def watch() -> bool:
        row = queue.row(request_id)
        if row.preview_path is not None:
            stored = storage.get("edit-outputs", row.preview_path)
            seen.append((row.preview_step, row.preview_path, stored.data if stored else None))
        return row.status == "succeeded"

    async with running_worker(queue, storage, editor, fast_config(preview_every_steps=3)):
        await eventually(watch, what="success", timeout=DEADLINE)
    steps = [call.args["step"] for call in queue.calls_to("preview", request_id)]
    assert steps and steps == sorted(set(steps)) and set(steps) <= {3, 6, 9}
    step, path, data = next(item for item in reversed(seen) if item[2] is not None)
    assert step in steps and path == f"_no_user/{request_id}.preview.webp"
    assert Image.open(io.BytesIO(data)).size == (16, 16)
    # Once the request is final its preview is stale: the row stops pointing at it, the object goes.
    row = queue.row(request_id)
    assert row.preview_path is None and row.preview_step is None
    assert storage.get("edit-outputs", path) is None
    # The preview's name is the same whatever the output's format, and its clean-up leaves the output
    # (`{id}.webp` beside `{id}.preview.webp`).
    assert queue.row(request_id).output_path == f"_no_user/{request_id}.{OUTPUT_EXTENSIONS[fmt]}"
    assert storage.get("edit-outputs", f"_no_user/{request_id}.{OUTPUT_EXTENSIONS[fmt]}") is not None


@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_previews_reach_the_row_with_increasing_steps(fmt: OutputFormat) -> None:
    asyncio.run(
        asyncio.wait_for(scenario_previews_reach_the_row_with_increasing_steps(fmt), timeout=DEADLINE)
    )


async def scenario_previews_are_off_with_k_zero() -> None:
    storage = InMemoryObjectStorage()
    queue = InMemoryJobQueue(storage=storage)
    storage.put("edit-inputs", "u/in.png", png_bytes())
    request_id = queue.enqueue("make it blue", ["u/in.png"], num_inference_steps=6)
    async with running_worker(queue, storage, StandInEditor(), fast_config(preview_every_steps=0)):
        await eventually(
            lambda: queue.row(request_id).status == "succeeded", what="success", timeout=DEADLINE
        )
    assert queue.calls_to("preview") == [] and queue.row(request_id).preview_path is None
    assert not [call for call in storage.calls if ".preview." in call[2]]


def test_previews_are_off_with_k_zero() -> None:
    asyncio.run(asyncio.wait_for(scenario_previews_are_off_with_k_zero(), timeout=DEADLINE))


class EditorBeforePreviews:
    """A user's own Editor written before live previews: its ``edit`` knows no ``previews``."""

    def __init__(self) -> None:
        self._inner = StandInEditor()

    def load(self) -> None:
        self._inner.load()

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> EditResult:
        return self._inner.edit(images, params, on_progress=on_progress, cancel=cancel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def scenario_an_editor_without_previews_still_edits_with_previews_on() -> None:
    storage = InMemoryObjectStorage()
    queue = InMemoryJobQueue(storage=storage)
    storage.put("edit-inputs", "u/in.png", png_bytes())
    request_id = queue.enqueue("make it blue", ["u/in.png"], num_inference_steps=6)
    editor: Any = EditorBeforePreviews()
    async with running_worker(queue, storage, editor, fast_config(preview_every_steps=1)):
        await eventually(
            lambda: queue.row(request_id).status in ("succeeded", "failed"), what="the end", timeout=DEADLINE
        )
    assert queue.row(request_id).status == "succeeded"
    assert queue.calls_to("preview") == []


def test_an_editor_without_previews_still_edits_with_previews_on() -> None:
    asyncio.run(
        asyncio.wait_for(scenario_an_editor_without_previews_still_edits_with_previews_on(), timeout=DEADLINE)
    )


async def scenario_a_stalled_storage_costs_previews_not_steps_and_nothing_is_written_after_the_end(
    tiny_editor: DiffusersEditor,
) -> None:
    storage = HeldPreviewUploads()
    queue = InMemoryJobQueue(storage=storage)
    storage.put("edit-inputs", "u/in.png", png_bytes())
    metrics = Metrics()
    request_id = queue.enqueue("make it blue", ["u/in.png"], num_inference_steps=16, width=96, height=64)
    config = fast_config(preview_every_steps=1, preview_interval_seconds=0)
    async with running_worker(queue, storage, tiny_editor, config, metrics=metrics):
        # Every step ran and the job finished while the first preview upload still hung.
        await eventually(
            lambda: queue.row(request_id).status == "succeeded", what="success", timeout=DEADLINE
        )
        assert storage.started == 1 and storage.finished == 0
    row = queue.row(request_id)
    assert row.progress == 1 and row.preview_step is None  # the hung upload was abandoned at the end
    assert storage.finished == 0 and queue.calls_to("preview") == []
    # Offered previews beyond the hung one were superseded by newer ones, not queued behind it.
    assert counter(metrics, "superseded") >= 1 and counter(metrics, "written") == 0


def test_a_stalled_storage_costs_previews_not_steps_and_nothing_is_written_after_the_end(
    tiny_editor: DiffusersEditor,
) -> None:
    asyncio.run(
        asyncio.wait_for(
            scenario_a_stalled_storage_costs_previews_not_steps_and_nothing_is_written_after_the_end(
                tiny_editor
            ),
            timeout=DEADLINE,
        )
    )


class LateEditor(EditorWrapper):
    """A misbehaving editor that keeps the sink and delivers after its edit returned."""

    def __init__(self) -> None:
        super().__init__(StandInEditor())
        self.sink: PreviewSink | None = None

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
    ) -> EditResult:
        self.sink = previews
        return super().edit(images, params, on_progress=on_progress, cancel=cancel)


async def scenario_a_preview_delivered_after_the_edit_is_dropped() -> None:
    storage = InMemoryObjectStorage()
    queue = InMemoryJobQueue(storage=storage)
    storage.put("edit-inputs", "u/in.png", png_bytes())
    metrics = Metrics()
    editor = LateEditor()
    request_id = queue.enqueue("make it blue", ["u/in.png"], num_inference_steps=4)
    async with running_worker(queue, storage, editor, fast_config(preview_every_steps=1), metrics=metrics):
        await eventually(
            lambda: queue.row(request_id).status == "succeeded", what="success", timeout=DEADLINE
        )
        assert editor.sink is not None
        editor.sink.deliver(Preview(3, 4, b"RIFF....WEBP", "image/webp", 1, 1))
    assert counter(metrics, "late") == 1 and queue.row(request_id).preview_step is None
    assert queue.calls_to("preview") == []


def test_a_preview_delivered_after_the_edit_is_dropped() -> None:
    asyncio.run(asyncio.wait_for(scenario_a_preview_delivered_after_the_edit_is_dropped(), timeout=DEADLINE))


# --- Both engines through the real worker, Postgres and the Storage server -------------------------
def owner_reads(harness: Harness, user: uuid.UUID, row: Row) -> Image.Image:
    response = httpx.get(
        f"{harness.storage.url}/storage/v1/object/authenticated/{row['output_bucket']}/{row['preview_path']}",
        headers={"Authorization": f"Bearer {harness.storage.token(user)}"},
    )
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_diffusers_previews_land_on_the_row_while_the_edit_runs(
    start_processor: Callable[..., Harness], make_user: Callable[[], uuid.UUID], tiny_editor: DiffusersEditor
) -> None:
    gated = GatedEditor(tiny_editor, pause_at=5)
    harness = start_processor(editor=gated, preview_every_steps=2, preview_interval_seconds=0)
    user, stranger = make_user(), make_user()
    path = harness.upload(user, "a.png", png_bytes())
    request_id = harness.insert(user, [path], num_inference_steps=8, width=96, height=64)
    try:
        # Held after step 5: the preview of step 4 is the newest and reaches the row.
        row = wait_for(lambda: (r := harness.row(request_id))["preview_step"] == 4 and r, what="a preview")
        assert row["status"] == "processing" and row["preview_path"] == f"{user}/{request_id}.preview.webp"
        image = owner_reads(harness, user, row)
        assert image.format == "WEBP" and image.size == (12, 8)
        denied = httpx.get(
            f"{harness.storage.url}/storage/v1/object/authenticated/edit-outputs/{row['preview_path']}",
            headers={"Authorization": f"Bearer {harness.storage.token(stranger)}"},
        )
        assert denied.status_code in (400, 403, 404)
    finally:
        gated.release.set()
    done = harness.wait_status(request_id, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["preview_step"] is None and done["preview_path"] is None
    # The stale preview object goes too (deleted after the row is final: poll for it).
    wait_for(
        lambda: (
            harness.db.execute(
                "select 1 from storage.objects where bucket_id = 'edit-outputs' and name = %s",
                (row["preview_path"],),
            ).fetchone()
            is None
        ),
        what="the preview object to be deleted",
    )
    ran = harness.db.execute(
        "select preview_edit_request(%s, %s, 'late.webp', 7) as ok",
        (request_id, harness.settings.worker_id),
    ).fetchone()
    assert ran == {"ok": False}  # the worker itself could not write one now
    with acting_as(harness.db, "authenticated", user) as conn:
        seen = conn.execute("select preview_path, preview_step from edit_requests").fetchone()
    assert seen == {"preview_path": None, "preview_step": None}


@pytest.fixture
def comfy() -> Iterator[tuple[ComfyState, str]]:
    state = ComfyState()
    served = serve_in_thread(create_comfyui_app(state))
    try:
        yield state, served.url
    finally:
        served.stop()


@pytest.mark.parametrize("metadata", [False, True], ids=["preview_image", "preview_image_with_metadata"])
def test_comfyui_previews_from_the_stand_in_land_on_the_row(
    comfy: tuple[ComfyState, str],
    start_processor: Callable[..., Harness],
    make_user: Callable[[], uuid.UUID],
    metadata: bool,
) -> None:
    state, url = comfy
    state.faults.previews = True
    state.faults.preview_metadata = metadata
    state.faults.step_seconds = 0.05
    editor = ComfyUIEditor(url, timeout=5)
    harness = start_processor(editor=editor, preview_every_steps=3, preview_interval_seconds=0)
    user = make_user()
    request_id = harness.insert(
        user, [harness.upload(user, "a.png", png_bytes())], num_inference_steps=12, width=128, height=96
    )
    row = wait_for(lambda: (r := harness.row(request_id))["preview_step"] and r, what="a preview")
    assert row["status"] == "processing" and row["preview_step"] in (3, 6, 9)
    assert row["preview_path"] == f"{user}/{request_id}.preview.jpg"
    image = owner_reads(harness, user, row)
    assert image.format == "JPEG" and image.size == (16, 12)
    done = harness.wait_status(request_id, "succeeded", "failed")
    assert done["status"] == "succeeded" and done["preview_path"] is None


def test_comfyui_frames_are_parsed_as_comfyui_sends_them() -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, format="JPEG")
    legacy = struct.pack(">II", 1, 1) + jpeg.getvalue()
    meta = json.dumps({"prompt_id": "p", "node_id": "3", "image_type": "image/jpeg"}).encode()
    tagged = struct.pack(">II", 4, len(meta)) + meta + jpeg.getvalue()
    assert parse_preview_frame(legacy) == (jpeg.getvalue(), "image/jpeg", {})
    parsed = parse_preview_frame(tagged)
    assert parsed is not None and parsed[0] == jpeg.getvalue() and parsed[2]["prompt_id"] == "p"
    for bad in (
        b"",
        struct.pack(">I", 1),
        struct.pack(">II", 3, 0) + b"text",
        struct.pack(">II", 4, 99) + b"{",
    ):
        assert parse_preview_frame(bad) is None


def test_the_default_is_the_rules() -> None:
    from processor.settings import Settings

    assert Settings().preview_every_steps == rules.DEFAULT_PREVIEW_EVERY_STEPS
    assert Settings().preview_interval_seconds == rules.DEFAULT_PREVIEW_INTERVAL_SECONDS
