"""``ports.Editor`` over a ComfyUI server that already has Qwen-Image-Edit-2509 loaded.

For teams that run ComfyUI with the model's native nodes and do not want a second 20B
model in memory. The flow follows ComfyUI's own API (``comfyanonymous/ComfyUI``):

- ``GET /ws?clientId=…`` (``server.py``, ``websocket_handler``): JSON messages
  ``{"type", "data"}`` (``PromptServer.send_json``) and binary frames that start with a
  4-byte big-endian event type (``encode_bytes``; 1 = ``PREVIEW_IMAGE``, then a 4-byte
  image type, 1 = JPEG, 2 = PNG, and the image; newer servers send 4 =
  ``PREVIEW_IMAGE_WITH_METADATA``: a 4-byte length, that many bytes of JSON metadata with
  ``prompt_id``, ``node_id`` and ``image_type``, then the image). They come only when ComfyUI
  runs with a preview method (``--preview-method auto``, ``latent2rgb`` or ``taesd``), and
  become live previews (docs/previews.md). Execution messages come from ``execution.py``:
  ``execution_start``, ``execution_cached``, ``executing`` (``node: null`` when the prompt
  is done), ``progress`` (``value``, ``max``, ``node``, ``prompt_id``), ``executed``,
  ``execution_success``, ``execution_error`` (``node_id``, ``node_type``,
  ``exception_type``, ``exception_message``) and ``execution_interrupted``. Run for real
  (ComfyUI 0.8.0), ``execution_success`` comes while the prompt is still executing: the
  history entry is written after it (``main.py``, ``prompt_worker``: ``task_done``), and only
  then comes ``executing`` with ``node: null``. We finish on that one.
- ``POST /upload/image`` (multipart ``image``, ``type``, ``subfolder``, ``overwrite``) answers
  ``{"name", "subfolder", "type"}``.
- ``POST /prompt`` ``{"prompt", "client_id"}`` answers ``{"prompt_id", "number",
  "node_errors"}``, or 400 ``{"error": {...}, "node_errors": {...}}`` for a workflow it refuses.
- ``GET /queue`` (``queue_running``/``queue_pending``: lists whose second item is the prompt id),
  ``POST /queue`` ``{"delete": [ids]}``, ``POST /interrupt`` (with ``{"prompt_id"}`` newer
  servers interrupt only when that prompt is the running one; we also check first, so an
  older, global-only server never loses someone else's prompt).
- ``GET /history/{prompt_id}`` (``outputs`` by node: ``images`` of ``{filename, subfolder,
  type}``) and ``GET /view?filename=&subfolder=&type=``.

Workflows are ComfyUI's API format (``{node_id: {"class_type", "inputs"}}``). String values
that are exactly a placeholder are replaced with typed values: ``{{prompt}}``,
``{{negative_prompt}}``, ``{{image1}}``..``{{image3}}`` (uploaded file names), ``{{steps}}``,
``{{cfg}}`` (``true_cfg_scale``), ``{{seed}}``, ``{{width}}`` and ``{{height}}``. With fewer
images than slots, the unused ``LoadImage`` nodes are removed, inputs named ``image1``..
``image3`` that pointed at them are dropped (they are optional on
``TextEncodeQwenImageEditPlus``), and any other node left pointing at a removed node is
removed too.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import struct
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect
from websockets.sync.connection import Connection

from processor.domain.errors import (
    ConfigurationError,
    EditCancelled,
    InvalidInput,
    ModelError,
    TransientError,
    WorkflowError,
)
from processor.domain.params import prepare_edit
from processor.domain.ports.editor import EditResult, Preview, PreviewSink, ProgressCallback
from processor.domain.reasons import ReasonCode
from processor.domain.request import EditParams
from processor.domain.sizing import ModelSizing

log = logging.getLogger(__name__)

PLACEHOLDERS = frozenset(
    {"prompt", "negative_prompt", "image1", "image2", "image3", "steps", "cfg", "seed", "width", "height"}
)
IMAGE_SLOTS = ("image1", "image2", "image3")
SAMPLER_CLASSES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
DEFAULT_WORKFLOW = "qwen_image_edit_2509.json"
_PREVIEW_IMAGE = 1  # server.py BinaryEventTypes.PREVIEW_IMAGE
_PREVIEW_IMAGE_WITH_METADATA = 4  # protocol.py BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA
_PREVIEW_TYPES = {1: "image/jpeg", 2: "image/png"}
_UPLOAD_SUBFOLDER = "qwen-edit-processor"
_HISTORY_GRACE_SECONDS = 5.0


def load_workflow(path: str | Path | None = None) -> dict[str, Any]:
    """The API-format workflow at ``path`` (or the packaged one), checked; ``ConfigurationError`` if unusable."""
    try:
        if path is None:
            text = (
                resources.files("processor.adapters.comfyui.workflows").joinpath(DEFAULT_WORKFLOW).read_text()
            )
        else:
            text = Path(path).read_text()
        workflow = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"cannot read the ComfyUI workflow {path}: {exc}") from exc
    check_workflow(workflow, str(path or DEFAULT_WORKFLOW))
    return dict(workflow)


def check_workflow(workflow: object, name: str) -> None:
    """An API-format workflow with the placeholders the processor fills, and nothing else in braces."""
    if not isinstance(workflow, dict) or not workflow:
        raise ConfigurationError(f"{name}: not an API-format workflow (export it with 'Save (API)')")
    found: set[str] = set()
    for node_id, node in workflow.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            raise ConfigurationError(f"{name}: node {node_id} has no class_type or inputs")
        for value in node["inputs"].values():
            if isinstance(value, str) and value.startswith("{{") and value.endswith("}}"):
                found.add(value[2:-2])
    unknown = found - PLACEHOLDERS
    if unknown:
        raise ConfigurationError(
            f"{name}: unknown placeholders {sorted(unknown)}; known: {sorted(PLACEHOLDERS)}"
        )
    missing = {"prompt", "image1"} - found
    if missing:
        raise ConfigurationError(f"{name}: the workflow needs the placeholders {sorted(missing)}")


def fill_workflow(workflow: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with placeholders replaced; image slots without a value removed (see the module doc)."""
    filled: dict[str, Any] = copy.deepcopy(dict(workflow))
    removed = {
        node_id
        for node_id, node in filled.items()
        for value in node["inputs"].values()
        if isinstance(value, str) and value[2:-2] in IMAGE_SLOTS and values.get(value[2:-2]) is None
    }
    for node_id in removed:
        del filled[node_id]
    while True:
        dangling = set()
        for node_id, node in filled.items():
            for name, value in list(node["inputs"].items()):
                if isinstance(value, list) and value and str(value[0]) in removed:
                    if name in IMAGE_SLOTS:
                        del node["inputs"][name]
                    else:
                        dangling.add(node_id)
        if not dangling:
            break
        removed |= dangling
        for node_id in dangling:
            del filled[node_id]
    for node in filled.values():
        for name, value in node["inputs"].items():
            if isinstance(value, str) and value.startswith("{{") and value.endswith("}}"):
                node["inputs"][name] = values[value[2:-2]]
    return filled


class ComfyUIEditor:
    """``ports.Editor`` that runs each edit as a prompt on a ComfyUI server.

    Blocking and thread-safe: one edit at a time per editor (ComfyUI runs one prompt at a
    time anyway). Server down, timeouts and 5xx raise ``TransientError``
    (``comfyui_unavailable``: retried by the queue); a workflow ComfyUI refuses or a node
    that raises gives ``WorkflowError``; out of memory gives ``ModelError``
    (``out_of_memory``, retryable); a cancel interrupts only our own prompt.
    """

    def __init__(
        self,
        url: str,
        *,
        workflow: Mapping[str, Any] | None = None,
        workflow_name: str = DEFAULT_WORKFLOW,
        auth_header: str | None = None,
        timeout: float = 30.0,
        idle_timeout: float = 600.0,
        sizing: ModelSizing | None = None,
        ping_interval: float = 5.0,
        ping_timeout: float = 5.0,
    ) -> None:
        """``ping_interval``/``ping_timeout``: websocket keepalive. A server that freezes (its
        process stops answering, sockets still open) is noticed within about their sum; the
        websocket library's defaults (20 s + 20 s) took ~50 s. ComfyUI answers pings from its
        event loop, which keeps running while a node computes, so a busy server is not mistaken
        for a frozen one."""
        self._url = url.rstrip("/")
        self._workflow = dict(workflow) if workflow is not None else load_workflow()
        check_workflow(self._workflow, workflow_name)
        self._workflow_name = workflow_name
        self._headers = {"Authorization": auth_header} if auth_header else {}
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._sizing = sizing or ModelSizing()
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=self._url, headers=self._headers, timeout=timeout)

    def describe(self) -> Mapping[str, Any]:
        # Neither the server's address (it may carry credentials) nor the workflow's folder: the
        # result is readable by the request's owner. Only the workflow's file name.
        return {"engine": "comfyui", "workflow": Path(self._workflow_name).name}

    def close(self) -> None:
        self._http.close()

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
    ) -> EditResult:
        prepared = prepare_edit(images, params, self._sizing)
        if params.speed not in (None, "quality") or params.loras:
            # The workflow decides steps, scheduler and LoRAs itself; silently ignoring a request's
            # choice would record a run that did not happen.
            raise InvalidInput(
                "speed presets and request LoRAs need EDIT_ENGINE=diffusers",
                reason=ReasonCode.SPEED_UNAVAILABLE,
            )
        with self._lock:
            started = time.perf_counter()
            client_id = uuid.uuid4().hex
            with self._websocket(client_id) as socket:
                names = [self._upload(image) for image in prepared.images]
                values: dict[str, Any] = {
                    "prompt": params.prompt,
                    "negative_prompt": params.negative_prompt or " ",
                    "steps": params.num_inference_steps,
                    "cfg": params.true_cfg_scale,
                    "seed": prepared.seed,
                    "width": prepared.width,
                    "height": prepared.height,
                    **{slot: names[i] if i < len(names) else None for i, slot in enumerate(IMAGE_SLOTS)},
                }
                workflow = fill_workflow(self._workflow, values)
                prompt_id = self._submit(workflow, client_id)
                timings = self._follow(
                    socket,
                    prompt_id,
                    _Progress(workflow, on_progress),
                    cancel,
                    _Previews(workflow, prompt_id, previews),
                )
            fetch_started = time.perf_counter()
            image = self._result(prompt_id)
            timings["fetch"] = time.perf_counter() - fetch_started
            timings["total"] = time.perf_counter() - started
        return EditResult(
            image=image,
            seed=prepared.seed,
            width=image.width,
            height=image.height,
            num_inference_steps=params.num_inference_steps,
            timings=timings,
            model={**self.describe(), "prompt_id": prompt_id},
            base=prepared.base,
        )

    # --- HTTP ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise TransientError(
                f"ComfyUI unreachable: {exc}", reason=ReasonCode.COMFYUI_UNAVAILABLE
            ) from exc
        if response.status_code >= 500:
            raise TransientError(
                f"ComfyUI answered {response.status_code} to {method} {path}",
                reason=ReasonCode.COMFYUI_UNAVAILABLE,
            )
        return response

    def _upload(self, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        content = buffer.getvalue()
        # Named by content: ComfyUI has no API to delete inputs, so retries and repeated images
        # reuse one file instead of filling its input folder (LoadImage re-reads by hash anyway).
        name = f"{hashlib.sha256(content).hexdigest()[:32]}.png"
        response = self._request(
            "POST",
            "/upload/image",
            files={"image": (name, content, "image/png")},
            data={"type": "input", "subfolder": _UPLOAD_SUBFOLDER, "overwrite": "true"},
        )
        if response.status_code != 200:
            raise WorkflowError(
                f"ComfyUI refused the upload ({response.status_code})",
                reason=ReasonCode.COMFYUI_INVALID_WORKFLOW,
            )
        stored = response.json()
        # LoadImage names files relative to the input folder, subfolder included.
        return f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else str(stored["name"])

    def _submit(self, workflow: Mapping[str, Any], client_id: str) -> str:
        response = self._request("POST", "/prompt", json={"prompt": workflow, "client_id": client_id})
        if response.status_code != 200:
            try:
                body = response.json()
            except json.JSONDecodeError:
                body = {"error": {"message": response.text[:500]}}
            error = (
                body.get("error") if isinstance(body.get("error"), dict) else {"message": body.get("error")}
            )
            details = "; ".join(
                f"{node.get('class_type', node_id)}: {problem.get('message')} ({problem.get('details')})"
                for node_id, node in (body.get("node_errors") or {}).items()
                for problem in node.get("errors", [])
            )
            raise WorkflowError(
                f"ComfyUI refused the workflow: {error.get('message')}" + (f": {details}" if details else ""),
                reason=ReasonCode.COMFYUI_INVALID_WORKFLOW,
            )
        return str(response.json()["prompt_id"])

    def _result(self, prompt_id: str) -> Image.Image:
        # We read the history after "executing: null", when ComfyUI has written it; a short
        # retry covers a server that ends the socket early or writes it late.
        deadline = time.monotonic() + _HISTORY_GRACE_SECONDS
        while not (entry := self._request("GET", f"/history/{prompt_id}").json().get(prompt_id)):
            if time.monotonic() > deadline:
                raise TransientError(
                    f"ComfyUI has no history for {prompt_id}", reason=ReasonCode.COMFYUI_UNAVAILABLE
                )
            time.sleep(0.1)
        images = [image for output in entry.get("outputs", {}).values() for image in output.get("images", [])]
        # A SaveImage result ("output") wins over previews ("temp"); the packaged workflow only
        # previews, so ComfyUI's output folder does not keep a second copy of every edit.
        ranked = sorted(
            (image for image in images if image.get("type") in ("output", "temp")),
            key=lambda image: image["type"] != "output",
        )
        if not ranked:
            raise WorkflowError("the workflow produced no image", reason=ReasonCode.COMFYUI_NODE_ERROR)
        first = ranked[0]
        response = self._request(
            "GET",
            "/view",
            params={
                "filename": first["filename"],
                "subfolder": first.get("subfolder", ""),
                "type": first["type"],
            },
        )
        if response.status_code != 200:
            raise TransientError(
                f"ComfyUI could not serve the output ({response.status_code})",
                reason=ReasonCode.COMFYUI_UNAVAILABLE,
            )
        with Image.open(io.BytesIO(response.content)) as opened:
            return opened.convert("RGB")

    def _interrupt_if_ours(self, prompt_id: str) -> None:
        """Stop our prompt: interrupt it only while it is the running one, else drop it from the queue."""
        queue = self._request("GET", "/queue").json()
        running = {str(item[1]) for item in queue.get("queue_running", []) if len(item) > 1}
        if prompt_id in running:
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
        else:
            self._request("POST", "/queue", json={"delete": [prompt_id]})

    # --- Websocket -------------------------------------------------------------------------------
    def _websocket(self, client_id: str) -> ClientConnection:
        parts = urlsplit(self._url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        uri = urlunsplit((scheme, parts.netloc, f"{parts.path}/ws", f"clientId={client_id}", ""))
        try:
            return connect(
                uri,
                additional_headers=self._headers,
                open_timeout=self._timeout,
                max_size=None,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                # Closing waits for the server's close frame; a frozen server never sends it,
                # so the wait is bounded like the pings (the default 10 s would add to it).
                close_timeout=min(self._ping_timeout, 2.0),
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise TransientError(
                f"ComfyUI websocket unreachable: {exc}", reason=ReasonCode.COMFYUI_UNAVAILABLE
            ) from exc

    def _follow(
        self,
        socket: Connection,
        prompt_id: str,
        progress: _Progress,
        cancel: threading.Event | None,
        previews: _Previews,
    ) -> dict[str, float]:
        """Read messages until our prompt ends; returns ``queue_wait`` and ``execution`` seconds."""
        submitted = time.perf_counter()
        execution_started: float | None = None
        last_message = time.perf_counter()
        cancel_sent = False
        succeeded = False
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                self._interrupt_if_ours(prompt_id)
                cancel_sent = True
                if execution_started is None:
                    raise EditCancelled("cancelled while queued in ComfyUI")
            try:
                raw = socket.recv(timeout=0.2)
            except TimeoutError:
                if time.perf_counter() - last_message > self._idle_timeout:
                    raise TransientError(
                        f"no word from ComfyUI for {self._idle_timeout:.0f} s",
                        reason=ReasonCode.COMFYUI_UNAVAILABLE,
                    ) from None
                continue
            except ConnectionClosed as exc:
                if succeeded:  # it said so; the history says what came out
                    break
                raise TransientError(
                    "ComfyUI closed the websocket mid-run (or stopped answering pings)",
                    reason=ReasonCode.COMFYUI_UNAVAILABLE,
                ) from exc
            last_message = time.perf_counter()
            if isinstance(raw, bytes):
                previews.frame(raw)
                continue
            message = json.loads(raw)
            kind, data = message.get("type"), message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue  # status broadcasts and other clients' prompts
            if kind == "execution_start":
                execution_started = time.perf_counter()
            elif kind in ("execution_error", "execution_interrupted"):
                raise _ended_early(kind, data, cancel_sent)
            elif kind == "execution_success":
                succeeded = True  # not done yet: the history is written after this message
            elif kind == "executing" and data.get("node") is None:
                break
            else:
                if kind == "progress":
                    previews.progress(data)
                progress.message(kind, data)
        began = execution_started or submitted
        return {"queue_wait": began - submitted, "execution": time.perf_counter() - began}


class _Progress:
    """One monotonic progress for the whole prompt, from ComfyUI's per-node ``progress``.

    With one sampler, its steps are the edit's steps, passed on as they are. Without one (a
    model-free workflow) or with several, each node's progress restarts at 1/N, so progress is
    the share of the prompt's nodes done: finished nodes count whole, the running node by its
    fraction, reported in thousandths and never going back."""

    SCALE = 1000

    def __init__(self, workflow: Mapping[str, Any], on_progress: ProgressCallback | None) -> None:
        self._on_progress = on_progress
        self._samplers = {n for n, node in workflow.items() if node["class_type"] in SAMPLER_CLASSES}
        # Samplers only when there are some: other nodes' bars (a tiled decode) are not the edit's steps.
        self._counted = self._samplers or set(workflow)
        self._finished: set[str] = set()
        self._running: str | None = None
        self._fraction = 0.0
        self._reported = 0

    def message(self, kind: str | None, data: Mapping[str, Any]) -> None:
        if kind == "execution_cached":
            self.cached(data.get("nodes") or [])
        elif kind == "executing":
            self.executing(str(data["node"]))
        elif kind == "progress":
            self.step(str(data.get("node")), int(data["value"]), int(data["max"]))

    def cached(self, nodes: Sequence[object]) -> None:
        self._finished |= {str(n) for n in nodes} & self._counted

    def executing(self, node: str) -> None:
        if self._running is not None and self._running in self._counted:
            self._finished.add(self._running)
        self._running, self._fraction = node, 0.0
        self._report()

    def step(self, node: str, value: int, maximum: int) -> None:
        if self._on_progress is None or node not in self._counted or maximum <= 0:
            return
        if len(self._samplers) == 1:
            self._on_progress(value, maximum)
            return
        self._running, self._fraction = node, min(1.0, value / maximum)
        self._report()

    def _report(self) -> None:
        if self._on_progress is None or len(self._samplers) == 1:
            return
        done = len(self._finished) + (self._fraction if self._running in self._counted else 0.0)
        value = min(self.SCALE, int(self.SCALE * done / len(self._counted)))
        if value > self._reported:
            self._reported = value
            self._on_progress(value, self.SCALE)


def parse_preview_frame(frame: bytes) -> tuple[bytes, str | None, Mapping[str, Any]] | None:
    """A binary frame's preview: ``(image bytes, content type or None, metadata)``; None for other
    events and malformed frames (``server.py`` ``encode_bytes``, ``send_image_with_metadata``)."""
    if len(frame) < 8:
        return None
    event, word = struct.unpack(">II", frame[:8])
    if event == _PREVIEW_IMAGE:
        return frame[8:], _PREVIEW_TYPES.get(word), {}
    if event == _PREVIEW_IMAGE_WITH_METADATA:
        end = 8 + word
        try:
            metadata = json.loads(frame[8:end])
        except (ValueError, UnicodeDecodeError):
            return None
        if len(frame) <= end or not isinstance(metadata, dict):
            return None
        content_type = metadata.get("image_type")
        return frame[end:], content_type if isinstance(content_type, str) else None, metadata
    log.debug("unknown ComfyUI binary event %d", event)
    return None


class _Previews:
    """ComfyUI's preview frames, passed on as live previews every ``every_steps`` sampler steps.

    A preview shows the step the sampler last reported (``progress`` of a sampler node; of any
    node in a workflow without one); frames of other prompts (metadata naming another
    ``prompt_id``), of other formats and that do not open as an image are dropped. Runs on the
    thread that reads the websocket; ``deliver`` only hands the preview on.
    """

    def __init__(self, workflow: Mapping[str, Any], prompt_id: str, sink: PreviewSink | None) -> None:
        self._sink = sink
        self._prompt_id = prompt_id
        samplers = {n for n, node in workflow.items() if node["class_type"] in SAMPLER_CLASSES}
        self._counted = samplers or set(workflow)
        self._step = 0
        self._total = 0
        self._last = 0

    def progress(self, data: Mapping[str, Any]) -> None:
        if str(data.get("node")) in self._counted:
            self._step, self._total = int(data["value"]), int(data["max"])

    def frame(self, frame: bytes) -> None:
        parsed = parse_preview_frame(frame)
        sink = self._sink
        if parsed is None or sink is None or self._step <= self._last:
            return
        if not sink.wants(self._step, self._total):
            return
        data, content_type, metadata = parsed
        if metadata.get("prompt_id") not in (None, self._prompt_id):
            return
        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
                content_type = content_type or Image.MIME.get(image.format or "")
        except (OSError, ValueError):
            log.debug("a ComfyUI preview frame is not an image; dropped")
            return
        if content_type not in ("image/jpeg", "image/png", "image/webp"):
            return
        self._last = self._step
        sink.deliver(Preview(self._step, self._total, data, content_type, width, height))


def _ended_early(kind: str, data: Mapping[str, Any], cancel_sent: bool) -> Exception:
    if kind == "execution_error":
        return _execution_error(data)
    if cancel_sent:
        return EditCancelled("cancelled while running in ComfyUI")
    # Someone else stopped it (ComfyUI's own Cancel button, another client): the request
    # itself is fine, so it goes back to the queue for another attempt.
    return TransientError(
        "ComfyUI interrupted our prompt without our asking", reason=ReasonCode.COMFYUI_INTERRUPTED
    )


def _execution_error(data: Mapping[str, Any]) -> Exception:
    exception_type = str(data.get("exception_type", ""))
    message = f"{data.get('node_type', 'node')} {data.get('node_id', '')}: {exception_type}: {data.get('exception_message', '')}".strip()
    if "OutOfMemory" in exception_type or "out of memory" in str(data.get("exception_message", "")).lower():
        # Memory can free up (another prompt finishes, a model unloads): worth another attempt.
        return ModelError(f"ComfyUI ran out of memory: {message}", reason=ReasonCode.OUT_OF_MEMORY)
    return WorkflowError(f"ComfyUI node failed: {message}", reason=ReasonCode.COMFYUI_NODE_ERROR)


def editor_from_settings(
    url: str | None, workflow: Path | None, auth_header: str | None, timeout: float
) -> ComfyUIEditor:
    """The editor ``EDIT_ENGINE=comfyui`` builds."""
    if not url:
        raise ConfigurationError("EDIT_ENGINE=comfyui needs COMFYUI_URL")
    return ComfyUIEditor(
        url,
        workflow=load_workflow(workflow) if workflow else None,
        workflow_name=str(workflow or DEFAULT_WORKFLOW),
        auth_header=auth_header,
        timeout=timeout,
    )
