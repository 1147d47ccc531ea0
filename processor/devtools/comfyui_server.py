"""A ComfyUI-API-compatible test server: the routes and websocket messages the ComfyUI engine uses.

Shapes follow ComfyUI's own source (``comfyanonymous/ComfyUI``): routes and the
``{"type", "data"}`` / binary-frame encodings from ``server.py``; the message sequence
(``execution_start``, ``execution_cached``, ``executing``, ``progress``, ``executed``,
``execution_success``, final ``executing`` with ``node: null``; ``execution_error``,
``execution_interrupted``) and the ``/prompt`` validation errors from ``execution.py``.
Prompts run one at a time from a queue in a thread, "sampling" for ``steps`` steps and
saving a real PNG: the first input tinted, at the workflow's latent size. It never stands
in for ComfyUI in production.

``ComfyFaults`` injects what the tests need: slow steps, a node error or an out-of-memory
error on the next prompt, the server going down mid-run, and another client's prompt.
"""

from __future__ import annotations

import asyncio
import io
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
from PIL import Image, ImageOps

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
}
# Output nodes and the folder their images go to (``nodes.py``: SaveImage → output, PreviewImage → temp).
OUTPUT_NODES: dict[str, str] = {"SaveImage": "output", "PreviewImage": "temp"}
SAMPLERS = frozenset({"KSampler"})
_PREVIEW_IMAGE = 1


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

    def folder(self, kind: str) -> dict[str, bytes]:
        """The files of a folder type as ``/view`` and output nodes name it (anything else: the inputs)."""
        return {"output": self.outputs, "temp": self.temp}.get(kind, self.inputs)

    # Called from the runner thread: hand the message to the client's socket task.
    def send(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        self._put(client_id, {"type": kind, "data": data})

    def send_bytes(self, client_id: str | None, payload: bytes) -> None:
        self._put(client_id, payload)

    def _put(self, client_id: str | None, message: Any) -> None:
        queue = self.sockets.get(client_id or "")
        if queue is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(queue.put_nowait, message)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": len(self.pending) + (1 if self.running else 0)}}

    def enqueue(self, workflow: dict[str, Any], client_id: str | None) -> _Prompt:
        with self.lock:
            prompt = _Prompt(str(uuid.uuid4()), self.number, workflow, client_id)
            self.number += 1
            self.pending.append(prompt)
            self.lock.notify_all()
        return prompt


def validate(workflow: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``None`` when valid, else ComfyUI's ``(error, node_errors)`` (``execution.validate_prompt``)."""
    if not isinstance(workflow, dict):
        return {"type": "invalid_prompt", "message": "Invalid prompt", "details": "", "extra_info": {}}, {}
    for node_id, node in workflow.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if class_type not in NODE_INPUTS:
            message = f"Cannot execute because node {class_type} does not exist."
            return {
                "type": "invalid_prompt",
                "message": message,
                "details": f"Node ID '#{node_id}'",
                "extra_info": {},
            }, {}
    node_errors: dict[str, Any] = {}
    for node_id, node in workflow.items():
        missing = [name for name in NODE_INPUTS[node["class_type"]] if name not in node.get("inputs", {})]
        links = [
            value
            for value in node.get("inputs", {}).values()
            if isinstance(value, list) and value and str(value[0]) not in workflow
        ]
        errors = [
            {
                "type": "required_input_missing",
                "message": "Required input is missing",
                "details": name,
                "extra_info": {"input_name": name},
            }
            for name in missing
        ] + [
            {
                "type": "bad_linked_input",
                "message": "Bad linked input",
                "details": str(link),
                "extra_info": {},
            }
            for link in links
        ]
        if errors:
            node_errors[node_id] = {
                "errors": errors,
                "dependent_outputs": [],
                "class_type": node["class_type"],
            }
    if node_errors:
        error = {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        }
        return error, node_errors
    return None


def _run(state: ComfyState, prompt: _Prompt) -> None:
    """Execute one prompt, sending what ComfyUI sends (``execution.py``)."""
    workflow, client, pid = prompt.workflow, prompt.client_id, prompt.prompt_id
    faults = state.faults
    state.send(client, "execution_start", {"prompt_id": pid, "timestamp": int(time.time() * 1000)})
    loaders = [node_id for node_id, node in workflow.items() if node["class_type"].endswith("Loader")]
    state.send(
        client, "execution_cached", {"nodes": loaders, "prompt_id": pid, "timestamp": int(time.time() * 1000)}
    )
    sampler_id = next(node_id for node_id, node in workflow.items() if node["class_type"] in SAMPLERS)
    sampler = workflow[sampler_id]["inputs"]
    for node_id, node in workflow.items():
        if node_id in loaders:
            continue
        state.send(client, "executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
        if node_id != sampler_id:
            continue
        steps = int(sampler["steps"])
        for step in range(1, steps + 1):
            time.sleep(faults.step_seconds)
            if faults.down_at_step == step:
                faults.down_at_step = None
                faults.down = True
                raise ServerDown
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
                state.history[pid] = _history(prompt, {}, "error")
                return
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
                state.history[pid] = _history(prompt, {}, "error")
                return
            state.send(client, "progress", {"value": step, "max": steps, "prompt_id": pid, "node": node_id})
            # A preview frame, as latent previews are sent: event type, image type (1 = JPEG), bytes.
            state.send_bytes(client, struct.pack(">II", _PREVIEW_IMAGE, 1) + b"\xff\xd8\xff\xe0preview")
    outputs = _save_outputs(state, workflow)
    for node_id, output in outputs.items():
        state.send(
            client, "executed", {"node": node_id, "display_node": node_id, "output": output, "prompt_id": pid}
        )
    state.send(client, "execution_success", {"prompt_id": pid, "timestamp": int(time.time() * 1000)})
    state.send(client, "executing", {"node": None, "prompt_id": pid})
    state.history[pid] = _history(prompt, outputs, "success")


def _save_outputs(state: ComfyState, workflow: dict[str, Any]) -> dict[str, Any]:
    """Every output node's image, in its folder, as ``/history`` lists them by node."""
    first = next(node["inputs"]["image"] for node in workflow.values() if node["class_type"] == "LoadImage")
    latent = next(node["inputs"] for node in workflow.values() if node["class_type"] == "EmptySD3LatentImage")
    with Image.open(io.BytesIO(state.inputs[first])) as image:
        result = ImageOps.colorize(image.convert("L"), black="navy", white="skyblue")
        result = result.resize((int(latent["width"]), int(latent["height"])))
    buffer = io.BytesIO()
    result.save(buffer, format="PNG")
    outputs: dict[str, Any] = {}
    for node_id, node in workflow.items():
        folder = OUTPUT_NODES.get(node["class_type"])
        if folder is None:
            continue
        files = state.folder(folder)
        prefix = (
            node["inputs"].get("filename_prefix", "ComfyUI") if folder == "output" else "ComfyUI_temp_qwen"
        )
        filename = f"{prefix}_{len(files) + 1:05d}_.png"
        files[filename] = buffer.getvalue()
        outputs[node_id] = {"images": [{"filename": filename, "subfolder": "", "type": folder}]}
    return outputs


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
        try:
            _run(state, state.running)
        except ServerDown:
            # Going down loses the running prompt and every connection, as a crash would.
            for client_id in list(state.sockets):
                state._put(client_id, None)
        finally:
            with state.lock:
                if state.running is not None:
                    state.finished.append(state.running.prompt_id)
                state.running = None


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
        try:
            while True:
                message = await queue.get()
                if message is None:
                    await socket.close(code=1011)
                    return
                if isinstance(message, bytes):
                    await socket.send_bytes(message)
                else:
                    await socket.send_json(message)
        except WebSocketDisconnect:
            pass
        finally:
            state.sockets.pop(sid, None)

    @app.post("/upload/image")
    async def upload_image(request: Request) -> Response:
        form = await request.form()
        image = form.get("image")
        if image is None or isinstance(image, str) or not image.filename:
            return Response(status_code=400)
        subfolder = str(form.get("subfolder") or "")
        name = f"{subfolder}/{image.filename}" if subfolder else image.filename
        state.inputs[name] = await image.read()
        return JSONResponse(
            {"name": image.filename, "subfolder": subfolder, "type": str(form.get("type") or "input")}
        )

    @app.post("/prompt")
    async def post_prompt(request: Request) -> JSONResponse:
        body = await request.json()
        if "prompt" not in body:
            return JSONResponse(
                {
                    "error": {
                        "type": "no_prompt",
                        "message": "No prompt provided",
                        "details": "",
                        "extra_info": {},
                    },
                    "node_errors": {},
                },
                status_code=400,
            )
        problem = validate(body["prompt"])
        if problem is not None:
            return JSONResponse({"error": problem[0], "node_errors": problem[1]}, status_code=400)
        missing = [
            node["inputs"]["image"]
            for node in body["prompt"].values()
            if node["class_type"] == "LoadImage" and node["inputs"]["image"] not in state.inputs
        ]
        if missing:
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            }
            return JSONResponse(
                {
                    "error": error,
                    "node_errors": {
                        "LoadImage": {
                            "errors": [
                                {
                                    "type": "value_not_in_list",
                                    "message": "Value not in list",
                                    "details": f"image: '{missing[0]}' not in list",
                                    "extra_info": {},
                                }
                            ],
                            "dependent_outputs": [],
                            "class_type": "LoadImage",
                        }
                    },
                },
                status_code=400,
            )
        prompt = state.enqueue(body["prompt"], body.get("client_id"))
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
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "other"}},
    }
    return state.enqueue(workflow, "someone-else").prompt_id
