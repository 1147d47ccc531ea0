"""A ComfyUI-API-compatible test server: the routes and websocket messages the ComfyUI engine uses.

Shapes follow ComfyUI's own source (``comfyanonymous/ComfyUI``) and what ComfyUI 0.8.0 was seen
to do when run for real on CPU (issue #15; ``server.py``, ``execution.py``, ``main.py``):

- the message order of a prompt: ``status`` broadcasts as the queue changes,
  ``execution_start``, ``execution_cached``, then per node ``executing`` and ``progress_state``
  (``progress`` from nodes with a progress bar), ``executed`` from output nodes,
  ``execution_success``; only then is the history entry written (``prompt_worker`` calls
  ``task_done`` after ``execute`` returns), and last comes ``executing`` with ``node: null``.
  A client that reads ``/history`` on ``execution_success`` can find nothing yet
  (``ComfyFaults.history_seconds`` widens that window so tests see it every time);
- nodes run in dependency order, only those an output node needs, with or without a sampler;
  model-free nodes (``LoadImage``, ``EmptyImage``, ``ImageInvert``, ``ImageBlur``, ``ImageScale``,
  ``ImageScaleBy``, ``PrimitiveString``) really transform the image; a node class named in
  ``ComfyFaults.node_progress`` reports that many progress steps (as nodes with a ``ProgressBar``
  do), so progress restarts per node as it does on the real server;
- ``/prompt``: a client-chosen ``prompt_id`` is kept; no output node is 400
  ``prompt_no_outputs``; a ``LoadImage`` file that is not there is ``custom_validation_failed``
  keyed by the node id, with ``dependent_outputs``;
- ``/upload/image``: a subfolder outside the input folder is 400; a different file under a
  taken name becomes ``name (1).png`` unless ``overwrite``; the same bytes reuse the name;
- ``/view``: only the ``input``, ``output`` and ``temp`` types, no ``..``;
- no preview frames unless ``ComfyFaults.previews`` is set (ComfyUI sends them only when started
  with ``--preview-method``): then after each sampler step's ``progress``, a JPEG at the latent's
  resolution (an eighth of the side), as a ``PREVIEW_IMAGE`` frame (event 1, image type 1 = JPEG)
  or, with ``preview_metadata``, a ``PREVIEW_IMAGE_WITH_METADATA`` frame (event 4, a 4-byte length,
  JSON naming the prompt and node, the image), as newer servers send;
- a client that leaves is noticed at once (its socket task ends), so servers stop without
  waiting out uvicorn's graceful timeout.

Prompts run one at a time from a queue in a thread. "Sampling" takes ``steps`` steps; the
decoded image is the first input tinted, at the workflow's latent size. It never stands in for
ComfyUI in production.

``ComfyFaults`` injects what the tests need: slow steps, a node error or an out-of-memory
error on the next prompt, the server going down mid-run, a frozen server (its event loop
stops: no answers, no pongs), a late history entry, and another client's prompt.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageFilter, ImageOps

# Node classes the server knows, with their required inputs (a subset of ComfyUI's).
NODE_INPUTS: dict[str, tuple[str, ...]] = {
    "UNETLoader": ("unet_name", "weight_dtype"),
    "CLIPLoader": ("clip_name", "type"),
    "VAELoader": ("vae_name",),
    "ModelSamplingAuraFlow": ("model", "shift"),
    "CFGNorm": ("model", "strength"),
    "LoadImage": ("image",),
    "TextEncodeQwenImageEditPlus": ("clip", "prompt"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "KSampler": (
        "model",
        "seed",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "positive",
        "negative",
        "latent_image",
    ),
    "VAEDecode": ("samples", "vae"),
    "SaveImage": ("images", "filename_prefix"),
    "PreviewImage": ("images",),
    # Model-free nodes (ComfyUI core), for workflows that run without weights.
    "EmptyImage": ("width", "height", "batch_size", "color"),
    "ImageInvert": ("image",),
    "ImageBlur": ("image", "blur_radius", "sigma"),
    "ImageScale": ("image", "upscale_method", "width", "height", "crop"),
    "ImageScaleBy": ("image", "upscale_method", "scale_by"),
    "PrimitiveString": ("value",),
}
# Output nodes and the folder their images go to (``nodes.py``: SaveImage → output, PreviewImage → temp).
OUTPUT_NODES: dict[str, str] = {"SaveImage": "output", "PreviewImage": "temp"}
SAMPLERS = frozenset({"KSampler"})
FOLDER_TYPES = ("input", "output", "temp")
_PREVIEW_IMAGE = 1
_PREVIEW_IMAGE_WITH_METADATA = 4


class ServerDown(Exception):
    """Raised inside a run when the server is made to go down."""


@dataclass
class ComfyFaults:
    """Faults to inject; thread-safe enough for tests (set before the prompt they affect)."""

    step_seconds: float = 0.0
    node_error_next: bool = False
    oom_next: bool = False
    down_at_step: int | None = None
    """Go down (drop sockets, answer 503) when the running prompt reaches this step."""
    down: bool = False
    freeze_at_step: tuple[int, float] | None = None
    """At this step, stop the server's event loop for this many seconds: a frozen process that
    keeps its sockets open but answers nothing, not even websocket pings."""
    history_seconds: float = 0.0
    """Time between ``execution_success`` and the history entry (0 on a fast machine; real)."""
    node_progress: dict[str, int] = field(default_factory=dict)
    """Node classes that report this many progress steps while they run (a ``ProgressBar``)."""
    previews: bool = False
    """Send a latent preview frame after every sampler step (off, as ComfyUI's default)."""
    preview_metadata: bool = False
    """Send previews as ``PREVIEW_IMAGE_WITH_METADATA`` (event 4) instead of ``PREVIEW_IMAGE`` (1)."""
    interrupts: list[dict[str, Any]] = field(default_factory=list)
    """Each ``/interrupt``: the prompt id asked for (or None) and the prompt that was running."""
    deleted: list[str] = field(default_factory=list)


@dataclass
class _Prompt:
    prompt_id: str
    number: int
    workflow: dict[str, Any]
    client_id: str | None
    interrupted: bool = False


class ComfyState:
    """The server's queue, files and history."""

    def __init__(self) -> None:
        self.faults = ComfyFaults()
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[str, bytes] = {}
        self.temp: dict[str, bytes] = {}
        """PreviewImage results: ComfyUI's temp folder, emptied when it starts."""
        self.viewed: list[tuple[str, str]] = []
        """Each ``/view``: the folder type and file name asked for."""
        self.history: dict[str, dict[str, Any]] = {}
        self.pending: list[_Prompt] = []
        self.running: _Prompt | None = None
        self.number = 0
        self.lock = threading.Condition()
        self.sockets: dict[str, asyncio.Queue[Any]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.finished: list[str] = []
        self.sent: list[tuple[str, str]] = []
        """Every JSON message sent to a client, as ``(type, prompt_id or "")``, in order."""

    def folder(self, kind: str) -> dict[str, bytes]:
        """The files of a folder type as ``/view`` and output nodes name it."""
        return {"output": self.outputs, "temp": self.temp, "input": self.inputs}[kind]

    # Called from the runner thread: hand the message to the client's socket task. As in
    # ``PromptServer.send_sync``, a message without a client goes to every client.
    def send(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        self.sent.append((kind, str(data.get("prompt_id") or "")))
        self._put(client_id, {"type": kind, "data": data})

    def send_bytes(self, client_id: str | None, payload: bytes) -> None:
        self._put(client_id, payload)

    def _put(self, client_id: str | None, message: Any) -> None:
        if self.loop is None:
            return
        targets = list(self.sockets.values()) if client_id is None else [self.sockets.get(client_id)]
        for queue in targets:
            if queue is not None:
                self.loop.call_soon_threadsafe(queue.put_nowait, message)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.pending) + (1 if self.running else 0)}}

    def broadcast_status(self) -> None:
        """``status`` to every client whenever the queue changes (``PromptServer.queue_updated``)."""
        self.send(None, "status", {"status": self.queue_info()})

    def enqueue(
        self, workflow: dict[str, Any], client_id: str | None, prompt_id: str | None = None
    ) -> _Prompt:
        with self.lock:
            prompt = _Prompt(prompt_id or str(uuid.uuid4()), self.number, workflow, client_id)
            self.number += 1
            self.pending.append(prompt)
            self.lock.notify_all()
        self.broadcast_status()
        return prompt


def _links(node: dict[str, Any]) -> list[str]:
    return [str(v[0]) for v in node.get("inputs", {}).values() if isinstance(v, list) and len(v) == 2]


def _needed_by(workflow: dict[str, Any], output_id: str) -> set[str]:
    """The nodes an output node depends on, itself included."""
    needed: set[str] = set()
    todo = [output_id]
    while todo:
        node_id = todo.pop()
        if node_id in needed or node_id not in workflow:
            continue
        needed.add(node_id)
        todo.extend(_links(workflow[node_id]))
    return needed


def execution_order(workflow: dict[str, Any]) -> list[str]:
    """The nodes the outputs need, each after its inputs (ComfyUI runs nothing else)."""
    needed = set().union(
        *(_needed_by(workflow, n) for n, node in workflow.items() if node["class_type"] in OUTPUT_NODES)
    )
    order: list[str] = []

    def visit(node_id: str) -> None:
        if node_id in order or node_id not in needed:
            return
        for link in _links(workflow[node_id]):
            visit(link)
        order.append(node_id)

    for node_id in workflow:
        visit(node_id)
    return order


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def validate(workflow: Any, inputs: dict[str, bytes] | None = None) -> tuple[dict[str, Any], Any] | None:
    """``None`` when valid, else ComfyUI's ``(error, node_errors)`` (``execution.validate_prompt``)."""
    if not isinstance(workflow, dict):
        return _error("invalid_prompt", "Invalid prompt"), {}
    for node_id, node in workflow.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if class_type not in NODE_INPUTS:
            message = f"Cannot execute because node {class_type} does not exist."
            return _error("invalid_prompt", message, f"Node ID '#{node_id}'"), {}
    outputs = [node_id for node_id, node in workflow.items() if node["class_type"] in OUTPUT_NODES]
    if not outputs:
        return _error("prompt_no_outputs", "Prompt has no outputs"), []
    node_errors: dict[str, Any] = {}
    for node_id in execution_order(workflow):
        node = workflow[node_id]
        missing = [name for name in NODE_INPUTS[node["class_type"]] if name not in node.get("inputs", {})]
        errors = [
            {
                **_error("required_input_missing", "Required input is missing", name),
                "extra_info": {"input_name": name},
            }
            for name in missing
        ] + [
            _error("bad_linked_input", "Bad linked input", link)
            for link in _links(node)
            if link not in workflow
        ]
        image = node.get("inputs", {}).get("image")
        if (
            node["class_type"] == "LoadImage"
            and isinstance(image, str)
            and inputs is not None
            and image not in inputs
        ):
            # LoadImage.VALIDATE_INPUTS: the file must be in the input folder.
            errors.append(
                _error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    f"image - Invalid image file: {image}",
                )
            )
        if errors:
            node_errors[node_id] = {
                "errors": errors,
                "dependent_outputs": [out for out in outputs if node_id in _needed_by(workflow, out)],
                "class_type": node["class_type"],
            }
    if node_errors:
        return _error("prompt_outputs_failed_validation", "Prompt outputs failed validation"), node_errors
    return None


def _progress_state(pid: str, node_id: str, value: float, maximum: float, state: str) -> dict[str, Any]:
    entry = {
        "value": value,
        "max": maximum,
        "state": state,
        "node_id": node_id,
        "prompt_id": pid,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
    }
    return {"prompt_id": pid, "nodes": {node_id: entry}}


class _Stop(Exception):
    """The prompt ended early (error or interrupt); its messages are sent."""


def _run(state: ComfyState, prompt: _Prompt) -> None:
    """Execute one prompt, sending what ComfyUI sends (``execution.py``, ``main.py``)."""
    workflow, client, pid = prompt.workflow, prompt.client_id, prompt.prompt_id
    state.send(client, "execution_start", {"prompt_id": pid, "timestamp": int(time.time() * 1000)})
    order = execution_order(workflow)
    loaders = [node_id for node_id in order if workflow[node_id]["class_type"].endswith("Loader")]
    state.send(
        client, "execution_cached", {"nodes": loaders, "prompt_id": pid, "timestamp": int(time.time() * 1000)}
    )
    values: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    try:
        for node_id in order:
            if node_id in loaders:
                continue
            node = workflow[node_id]
            state.send(client, "executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
            state.send(client, "progress_state", _progress_state(pid, node_id, 0, 1, "running"))
            steps = (
                int(node["inputs"]["steps"])
                if node["class_type"] in SAMPLERS
                else state.faults.node_progress.get(node["class_type"], 0)
            )
            for step in range(1, steps + 1):
                _step(state, prompt, node_id, node, step)
                state.send(
                    client, "progress", {"value": step, "max": steps, "prompt_id": pid, "node": node_id}
                )
                state.send(client, "progress_state", _progress_state(pid, node_id, step, steps, "running"))
                if state.faults.previews and node["class_type"] in SAMPLERS:
                    state.send_bytes(client, _preview_frame(state, pid, node_id, node, values, step, steps))
            values[node_id] = _evaluate(state, workflow, node_id, values)
            state.send(client, "progress_state", _progress_state(pid, node_id, 1, 1, "finished"))
            if node["class_type"] in OUTPUT_NODES:
                outputs[node_id] = values[node_id]
                state.send(
                    client,
                    "executed",
                    {"node": node_id, "display_node": node_id, "output": values[node_id], "prompt_id": pid},
                )
    except _Stop:
        state.history[pid] = _history(prompt, {}, "error")
        state.send(client, "executing", {"node": None, "prompt_id": pid})
        return
    state.send(client, "execution_success", {"prompt_id": pid, "timestamp": int(time.time() * 1000)})
    # prompt_worker: execute() has returned; the history entry is written after it, then "executing: null".
    time.sleep(state.faults.history_seconds)
    state.history[pid] = _history(prompt, outputs, "success")
    state.send(client, "executing", {"node": None, "prompt_id": pid})


def _preview_frame(
    state: ComfyState,
    pid: str,
    node_id: str,
    node: dict[str, Any],
    values: dict[str, Any],
    step: int,
    steps: int,
) -> bytes:
    """A latent preview as ComfyUI frames it (``server.py`` ``encode_bytes``): a JPEG at the latent's
    resolution, brightening as the steps go, so each step's picture differs."""
    link = node["inputs"].get("latent_image")
    latent = values.get(link[0]) if isinstance(link, list) else None
    width, height = latent if isinstance(latent, tuple) else (64, 64)
    shade = round(255 * step / steps)
    buffer = io.BytesIO()
    Image.new("RGB", (max(1, width // 8), max(1, height // 8)), (shade, 64, 255 - shade)).save(
        buffer, format="JPEG"
    )
    image = buffer.getvalue()
    if not state.faults.preview_metadata:
        return struct.pack(">II", _PREVIEW_IMAGE, 1) + image
    metadata = json.dumps(
        {
            "node_id": node_id,
            "prompt_id": pid,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
            "image_type": "image/jpeg",
        }
    ).encode()
    return struct.pack(">II", _PREVIEW_IMAGE_WITH_METADATA, len(metadata)) + metadata + image


def _step(state: ComfyState, prompt: _Prompt, node_id: str, node: dict[str, Any], step: int) -> None:
    """One progress step of a running node, with the faults that can strike there."""
    faults, client, pid = state.faults, prompt.client_id, prompt.prompt_id
    time.sleep(faults.step_seconds)
    if faults.down_at_step == step:
        faults.down_at_step = None
        faults.down = True
        raise ServerDown
    if faults.freeze_at_step is not None and faults.freeze_at_step[0] == step:
        seconds = faults.freeze_at_step[1]
        faults.freeze_at_step = None
        assert state.loop is not None
        # The event loop blocks: sockets stay open, nothing is answered, pings go unanswered.
        state.loop.call_soon_threadsafe(time.sleep, seconds)
    if prompt.interrupted:
        state.send(
            client,
            "execution_interrupted",
            {
                "prompt_id": pid,
                "node_id": node_id,
                "node_type": node["class_type"],
                "executed": [],
                "timestamp": 0,
            },
        )
        raise _Stop
    if faults.node_error_next or faults.oom_next:
        oom = faults.oom_next
        faults.node_error_next = faults.oom_next = False
        state.send(
            client,
            "execution_error",
            {
                "prompt_id": pid,
                "node_id": node_id,
                "node_type": node["class_type"],
                "executed": [],
                "exception_message": "Allocation on device"
                if oom
                else "mat1 and mat2 shapes cannot be multiplied",
                "exception_type": "torch.OutOfMemoryError" if oom else "RuntimeError",
                "traceback": ["..."],
                "current_inputs": {},
                "current_outputs": {},
                "timestamp": 0,
            },
        )
        raise _Stop


def _evaluate(state: ComfyState, workflow: dict[str, Any], node_id: str, values: dict[str, Any]) -> Any:
    """What a node produces: an image for image nodes, the file list for output nodes."""
    node = workflow[node_id]
    inputs = node["inputs"]
    kind = node["class_type"]

    def linked(name: str) -> Any:
        value = inputs.get(name)
        return values.get(str(value[0])) if isinstance(value, list) else value

    if kind == "LoadImage":
        with Image.open(io.BytesIO(state.inputs[inputs["image"]])) as image:
            return image.convert("RGB")
    if kind == "EmptyImage":
        color = int(inputs["color"])
        return Image.new(
            "RGB",
            (int(inputs["width"]), int(inputs["height"])),
            (color >> 16 & 255, color >> 8 & 255, color & 255),
        )
    if kind == "ImageInvert":
        return ImageOps.invert(linked("image"))
    if kind == "ImageBlur":
        return linked("image").filter(ImageFilter.GaussianBlur(int(inputs["blur_radius"])))
    if kind == "ImageScale":
        return linked("image").resize((int(inputs["width"]), int(inputs["height"])))
    if kind == "ImageScaleBy":
        image = linked("image")
        factor = float(inputs["scale_by"])
        return image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))))
    if kind == "EmptySD3LatentImage":
        return (int(inputs["width"]), int(inputs["height"]))
    if kind in SAMPLERS:
        return linked("latent_image")
    if kind == "VAEDecode":
        # "Decoding" the latent: the first input image tinted, at the latent's size.
        size = linked("samples")
        first = next(n["inputs"]["image"] for n in workflow.values() if n["class_type"] == "LoadImage")
        with Image.open(io.BytesIO(state.inputs[first])) as image:
            tinted = ImageOps.colorize(image.convert("L"), black="navy", white="skyblue")
        return tinted.resize(size)
    if kind in OUTPUT_NODES:
        folder = OUTPUT_NODES[kind]
        buffer = io.BytesIO()
        linked("images").save(buffer, format="PNG")
        files = state.folder(folder)
        prefix = inputs.get("filename_prefix", "ComfyUI") if folder == "output" else "ComfyUI_temp_qwen"
        filename = f"{prefix}_{len(files) + 1:05d}_.png"
        files[filename] = buffer.getvalue()
        return {"images": [{"filename": filename, "subfolder": "", "type": folder}]}
    return None  # loaders, encoders, model patches: nothing the stand-in needs


def _history(prompt: _Prompt, outputs: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "prompt": [prompt.number, prompt.prompt_id, prompt.workflow, {"client_id": prompt.client_id}, []],
        "outputs": outputs,
        "status": {"status_str": status, "completed": status == "success", "messages": []},
    }


def _runner(state: ComfyState, stop: threading.Event) -> None:
    while not stop.is_set():
        with state.lock:
            if not state.pending or state.faults.down:
                state.lock.wait(0.05)
                continue
            state.running = state.pending.pop(0)
        state.broadcast_status()
        try:
            _run(state, state.running)
        except ServerDown:
            # Going down loses the running prompt and every connection, as a crash would.
            for client_id in list(state.sockets):
                state._put(client_id, None)
        except Exception as exc:  # a stand-in bug must fail this prompt, never stop the runner
            prompt = state.running
            state.history[prompt.prompt_id] = _history(prompt, {}, "error")
            state.send(
                prompt.client_id,
                "execution_error",
                {"prompt_id": prompt.prompt_id, "node_id": "", "node_type": "", "exception_type": type(exc).__name__,
                 "exception_message": str(exc), "executed": [], "traceback": [], "timestamp": 0},
            )  # fmt: skip
        finally:
            with state.lock:
                if state.running is not None:
                    state.finished.append(state.running.prompt_id)
                state.running = None
            state.broadcast_status()


def create_comfyui_app(state: ComfyState | None = None) -> FastAPI:  # noqa: C901  one closure per route
    """The app; its ``state`` attribute holds the ``ComfyState`` (faults, files, history)."""
    state = state or ComfyState()
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        runner = threading.Thread(target=_runner, args=(state, stop), daemon=True)
        runner.start()
        yield
        stop.set()
        for queue in list(state.sockets.values()):  # close the sockets still open: shut down now
            queue.put_nowait(None)
        runner.join(5)

    app = FastAPI(lifespan=lifespan)
    app.state.comfy = state

    @app.middleware("http")
    async def down(request: Request, call_next: Any) -> Any:
        if state.faults.down:
            return Response(status_code=503)
        return await call_next(request)

    @app.websocket("/ws")
    async def websocket(socket: WebSocket) -> None:
        if state.faults.down:
            await socket.close(code=1011)
            return
        await socket.accept()
        sid = socket.query_params.get("clientId") or uuid.uuid4().hex
        queue: asyncio.Queue[Any] = asyncio.Queue()
        state.sockets[sid] = queue
        await socket.send_json({"type": "status", "data": {"status": state.queue_info(), "sid": sid}})
        # Read too: that is how a client leaving is noticed (else the task would wait on the
        # queue until uvicorn's graceful shutdown gives up on it).
        leaving = asyncio.ensure_future(socket.receive())
        try:
            while True:
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getting, leaving}, return_when=asyncio.FIRST_COMPLETED)
                if leaving in done:
                    getting.cancel()
                    message = leaving.result()
                    if message.get("type") == "websocket.disconnect":
                        return
                    leaving = asyncio.ensure_future(socket.receive())  # clients' own messages: ignored
                    if getting.cancelled() or not getting.done():
                        continue
                message = getting.result()
                if message is None:
                    await socket.close(code=1011)
                    return
                if isinstance(message, bytes):
                    await socket.send_bytes(message)
                else:
                    await socket.send_json(message)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            leaving.cancel()
            state.sockets.pop(sid, None)

    @app.post("/upload/image")
    async def upload_image(request: Request) -> Response:
        form = await request.form()
        image = form.get("image")
        if image is None or isinstance(image, str) or not image.filename:
            return Response(status_code=400)
        subfolder = str(form.get("subfolder") or "")
        kind = str(form.get("type") or "input")
        # server.py: the resolved path must stay inside the folder, else 400.
        root = "/comfy/" + kind
        if (
            kind not in FOLDER_TYPES
            or os.path.commonpath((root, os.path.abspath(os.path.join(root, subfolder)))) != root
        ):
            return Response(status_code=400)
        files = state.folder(kind)
        data = await image.read()
        filename = image.filename
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
        if not overwrite:
            # A taken name with other bytes becomes "name (1).png"; the same bytes reuse the name.
            stem, dot, ext = filename.rpartition(".")
            stem, ext = (stem, f".{ext}") if dot else (filename, "")
            number = 1
            while (key := f"{subfolder}/{filename}" if subfolder else filename) in files and files[
                key
            ] != data:
                filename = f"{stem} ({number}){ext}"
                number += 1
        files[f"{subfolder}/{filename}" if subfolder else filename] = data
        return JSONResponse({"name": filename, "subfolder": subfolder, "type": kind})

    @app.post("/prompt")
    async def post_prompt(request: Request) -> JSONResponse:
        body = await request.json()
        if "prompt" not in body:
            return JSONResponse(
                {"error": _error("no_prompt", "No prompt provided"), "node_errors": {}}, status_code=400
            )
        problem = validate(body["prompt"], state.inputs)
        if problem is not None:
            return JSONResponse({"error": problem[0], "node_errors": problem[1]}, status_code=400)
        prompt = state.enqueue(body["prompt"], body.get("client_id"), body.get("prompt_id"))
        return JSONResponse({"prompt_id": prompt.prompt_id, "number": prompt.number, "node_errors": {}})

    def entry(prompt: _Prompt) -> list[Any]:
        return [prompt.number, prompt.prompt_id, prompt.workflow, {"client_id": prompt.client_id}, []]

    @app.get("/queue")
    async def get_queue() -> JSONResponse:
        with state.lock:
            running = [entry(state.running)] if state.running else []
            pending = [entry(prompt) for prompt in state.pending]
        return JSONResponse({"queue_running": running, "queue_pending": pending})

    @app.post("/queue")
    async def post_queue(request: Request) -> Response:
        body = await request.json()
        with state.lock:
            if body.get("clear"):
                state.pending.clear()
            for prompt_id in body.get("delete", []):
                state.faults.deleted.append(prompt_id)
                state.pending = [prompt for prompt in state.pending if prompt.prompt_id != prompt_id]
        state.broadcast_status()
        return Response(status_code=200)

    @app.post("/interrupt")
    async def post_interrupt(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        running = state.running
        state.faults.interrupts.append(
            {"prompt_id": wanted, "running": running.prompt_id if running else None}
        )
        # Newer ComfyUI: with a prompt_id, interrupt only if it is the running one; without, whatever runs.
        if running is not None and wanted in (None, running.prompt_id):
            running.interrupted = True
        return Response(status_code=200)

    @app.get("/history/{prompt_id}")
    async def get_history(prompt_id: str) -> JSONResponse:
        return JSONResponse({prompt_id: state.history[prompt_id]} if prompt_id in state.history else {})

    @app.get("/view")
    async def view(filename: str, type: str = "output", subfolder: str = "") -> Response:
        # server.py: unknown folder types and names that climb out are 400.
        if type not in FOLDER_TYPES or ".." in filename or filename.startswith("/") or ".." in subfolder:
            return Response(status_code=400)
        state.viewed.append((type, filename))
        files = state.folder(type)
        name = f"{subfolder}/{filename}" if subfolder else filename
        if name not in files:
            return Response(status_code=404)
        return Response(files[name], media_type="image/png")

    return app


def run_foreign_prompt(state: ComfyState, image_name: str, steps: int) -> str:
    """Queue another client's prompt (a minimal valid workflow on ``image_name``); returns its id."""
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": None,
                "seed": 1,
                "steps": steps,
                "cfg": 1,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": None,
                "negative": None,
                "latent_image": ["2", 0],
            },
        },
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": None}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "other"}},
    }
    return state.enqueue(workflow, "someone-else").prompt_id
