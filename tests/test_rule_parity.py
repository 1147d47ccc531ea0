"""One verdict everywhere: each boundary value of ``rules`` through every way in.

Every case sends one request, wrong (or right) in exactly one way, through the row insert an
app makes as ``authenticated``, the REST API (JSON and multipart), the MCP tool, the RunPod
handler, the CLI's ``edit`` and ``Editor.edit``, and expects the same verdict and reason code
from each. Nothing runs the model: the editors get a cancel that is already set, so an accepted
request stops right after the engine's own checks (``EditCancelled``), and a refused one never
gets that far. The CLI must refuse before it loads a model.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import psycopg
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image
from typer.testing import CliRunner

from processor import composition
from processor.cli import app as cli_app
from processor.composition import build_runpod_handler
from processor.domain import rules
from processor.domain.errors import EditCancelled, InvalidInput
from processor.domain.ports.editor import Editor, EditorWrapper, EditResult, PreviewSink, ProgressCallback
from processor.domain.reasons import ReasonCode, reason_for_constraint
from processor.domain.request import PARAM_FIELDS, EditParams
from processor.settings import load_settings
from tests.conftest import DEADLINE, Harness, acting_as, picture, png_bytes

ACCEPTED = "accepted"
WAYS = ("row", "rest_json", "rest_multipart", "mcp", "runpod", "cli", "editor")
ONE_IMAGE_WAYS = frozenset({"mcp"})
"""The MCP tool takes one image (``image_base64``): image-count cases skip it."""
BASE64_WAYS = ("rest_json", "mcp", "runpod")
ROW_WAYS = ("row", "rest_json", "rest_multipart", "mcp")


@dataclass(frozen=True)
class Case:
    id: str
    expected: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    images: int = 1
    ways: Sequence[str] = WAYS


def size(width: int | None, height: int | None) -> dict[str, Any]:
    return {"width": width, "height": height}


MAX = rules.MAX_PROMPT_CHARS
BYTES = rules.MAX_PROMPT_BYTES
CASES = [
    Case("plain", ACCEPTED),
    Case("prompt-empty", ReasonCode.INVALID_PROMPT, {"prompt": ""}),
    Case("prompt-blank", ReasonCode.INVALID_PROMPT, {"prompt": " \t\n "}),
    Case("prompt-at-max", ACCEPTED, {"prompt": "x" * MAX}),
    Case("prompt-over-max", ReasonCode.INVALID_PROMPT, {"prompt": "x" * (MAX + 1)}),
    Case("negative-prompt-over-max", ReasonCode.INVALID_PROMPT, {"negative_prompt": "x" * (MAX + 1)}),
    # Bytes of the NFC form, not characters (issue 22): what bounds the tokenizer's tokens.
    Case("prompt-bytes-at-max", ACCEPTED, {"prompt": "é" * (BYTES // 2)}),
    Case("prompt-bytes-over-max", ReasonCode.INVALID_PROMPT, {"prompt": "é" * (BYTES // 2) + "x"}),
    Case("prompt-4-byte-characters", ReasonCode.INVALID_PROMPT, {"prompt": "\U00020000" * (BYTES // 4 + 1)}),
    # U+FB2C is 3 bytes, 6 once normalized: under the bound as sent, over it as the tokenizer sees it.
    Case("prompt-over-max-in-nfc", ReasonCode.INVALID_PROMPT, {"prompt": "\ufb2c" * (BYTES // 6 + 1)}),
    # e + combining acute (3 bytes) is é (2 bytes) in NFC: over the bound as sent, under it normalized.
    Case("prompt-under-max-in-nfc", ACCEPTED, {"prompt": "e\u0301" * (BYTES // 2)}),
    Case(
        "negative-prompt-bytes-over-max",
        ReasonCode.INVALID_PROMPT,
        {"negative_prompt": "é" * (BYTES // 2 + 1)},
    ),
    Case("steps-1", ReasonCode.INVALID_PARAMETER, {"num_inference_steps": 1}),
    Case("steps-2", ACCEPTED, {"num_inference_steps": rules.MIN_STEPS}),
    Case("steps-100", ACCEPTED, {"num_inference_steps": rules.MAX_STEPS}),
    Case("steps-101", ReasonCode.INVALID_PARAMETER, {"num_inference_steps": rules.MAX_STEPS + 1}),
    Case("cfg-negative", ReasonCode.INVALID_PARAMETER, {"true_cfg_scale": -0.1}),
    Case("cfg-0", ACCEPTED, {"true_cfg_scale": 0.0}),
    Case("cfg-20", ACCEPTED, {"true_cfg_scale": rules.MAX_CFG_SCALE}),
    Case("cfg-20.1", ReasonCode.INVALID_PARAMETER, {"true_cfg_scale": 20.1}),
    # Within 0..20 but 0 once a 4-byte float (the column's real): found by tests/test_adversary.py,
    # where RunPod and the CLI accepted what the database refused.
    Case("cfg-underflows-a-real", ReasonCode.INVALID_PARAMETER, {"true_cfg_scale": 1e-300}),
    Case("cfg-smallest-real", ACCEPTED, {"guidance_scale": 1e-45}),
    Case("3-images", ACCEPTED, images=rules.MAX_IMAGES, ways=[w for w in WAYS if w not in ONE_IMAGE_WAYS]),
    Case(
        "4-images",
        ReasonCode.TOO_MANY_IMAGES,
        images=rules.MAX_IMAGES + 1,
        ways=[w for w in WAYS if w not in ONE_IMAGE_WAYS],
    ),
    Case("bad-base", ReasonCode.INVALID_PARAMETER, {"base": "plasma"}),
    Case("bad-colour", ReasonCode.INVALID_PARAMETER, {"base_color": "red"}),
    Case("size-16", ReasonCode.INVALID_SIZE, size(16, 16)),
    Case("size-32", ACCEPTED, size(32, 32)),
    Case("size-4096", ACCEPTED, size(4096, 1024)),
    Case("size-4112", ReasonCode.INVALID_SIZE, size(4112, 32)),
    Case("size-not-multiple-of-16", ReasonCode.INVALID_SIZE, size(40, 40)),
    Case("size-over-area", ReasonCode.INVALID_SIZE, size(2048, 2064)),
    Case("width-without-height", ReasonCode.INVALID_SIZE, size(64, None)),
    Case("seed-0", ACCEPTED, {"seed": 0}),
    Case("seed-max", ACCEPTED, {"seed": rules.MAX_SEED}),
    Case("seed-minus-1", ReasonCode.INVALID_PARAMETER, {"seed": -1}),
    Case("seed-2-63", ReasonCode.INVALID_PARAMETER, {"seed": 2**63}),
    # Output formats: the choices exactly (not the extension `jpg`, not upper case), quality 1-100 for
    # any format (PNG ignores it), and values of the wrong type.
    Case("output-format-webp", ACCEPTED, {"output_format": "webp"}),
    Case("output-format-jpeg", ACCEPTED, {"output_format": "jpeg"}),
    Case("output-format-gif", ReasonCode.INVALID_PARAMETER, {"output_format": "gif"}),
    Case("output-format-jpg", ReasonCode.INVALID_PARAMETER, {"output_format": "jpg"}),
    Case("output-format-upper-case", ReasonCode.INVALID_PARAMETER, {"output_format": "PNG"}),
    Case("output-format-number", ReasonCode.INVALID_PARAMETER, {"output_format": 1}),
    Case("output-quality-0", ReasonCode.INVALID_PARAMETER, {"output_quality": rules.MIN_OUTPUT_QUALITY - 1}),
    Case("output-quality-1", ACCEPTED, {"output_quality": rules.MIN_OUTPUT_QUALITY}),
    Case("output-quality-100", ACCEPTED, {"output_quality": rules.MAX_OUTPUT_QUALITY}),
    Case(
        "output-quality-101", ReasonCode.INVALID_PARAMETER, {"output_quality": rules.MAX_OUTPUT_QUALITY + 1}
    ),
    Case("output-quality-with-png", ACCEPTED, {"output_format": "png", "output_quality": 50}),
    Case("output-quality-text", ReasonCode.INVALID_PARAMETER, {"output_quality": "high"}),
    Case("output-quality-boolean", ReasonCode.INVALID_PARAMETER, {"output_quality": True}),
    # The one base64 decoder: a data: URL only with its exact prefix; nothing is cut at a comma.
    Case("data-url", ACCEPTED, {"image": "data:image/png;base64,{png}"}, images=0, ways=BASE64_WAYS),
    Case(
        "data-url-not-an-image",
        ReasonCode.INVALID_BASE64,
        {"image": "data:text/plain;base64,{png}"},
        images=0,
        ways=BASE64_WAYS,
    ),
    Case(
        "text-before-a-comma", ReasonCode.INVALID_BASE64, {"image": "hello,{png}"}, images=0, ways=BASE64_WAYS
    ),
    # A request option: the ways that make rows take it (RunPod, the CLI and the editor make none).
    Case("key-at-max", ACCEPTED, {"idempotency_key": "k" * rules.IDEMPOTENCY_KEY_MAX_CHARS}, ways=ROW_WAYS),
    Case(
        "key-over-max",
        ReasonCode.INVALID_PARAMETER,
        {"idempotency_key": "k" * (rules.IDEMPOTENCY_KEY_MAX_CHARS + 1)},
        ways=ROW_WAYS,
    ),
    Case("key-with-a-space", ReasonCode.INVALID_PARAMETER, {"idempotency_key": "a key"}, ways=ROW_WAYS),
]
BASE: dict[str, Any] = {"prompt": "make it blue", "num_inference_steps": rules.MIN_STEPS}


class CancelledEditor(EditorWrapper):
    """The tiny editor with a cancel already set: its own checks run, the model never does."""

    def __init__(self, inner: Editor) -> None:
        super().__init__(inner, owns_inner=False)  # the session owns the tiny editor
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
        stop = threading.Event()
        stop.set()
        return super().edit(images, params, on_progress=on_progress, cancel=stop, previews=previews)


def b64png() -> str:
    return base64.b64encode(png_bytes()).decode()


def request_fields(case: Case) -> dict[str, Any]:
    values = {**BASE, **case.fields}
    if isinstance(values.get("image"), str):
        values["image"] = values["image"].replace("{png}", b64png())
    return values


def code_of(exc: InvalidInput) -> str:
    return str(exc.reason)


# --- The ways in ------------------------------------------------------------------------------------


def via_row(harness: Harness, user: uuid.UUID, case: Case) -> str:
    values = {k: v for k, v in request_fields(case).items() if k != "image"}
    values["input_paths"] = [f"{user}/{index}.png" for index in range(case.images)]
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    try:
        with acting_as(harness.db, "authenticated", user) as conn:
            conn.execute(f"insert into edit_requests ({names}) values ({marks})", tuple(values.values()))
    except psycopg.errors.CheckViolation as exc:
        return str(reason_for_constraint(exc.diag.constraint_name))
    except (psycopg.errors.DataError, psycopg.errors.DatatypeMismatch):
        # A value the column cannot hold (seed 2**63, "high" or true for an integer).
        return str(ReasonCode.INVALID_PARAMETER)
    return ACCEPTED


def rest_verdict(response: httpx.Response) -> str:
    if response.status_code == 202:
        return ACCEPTED
    assert response.status_code == 422, response.text
    return str(response.json()["error"]["code"])


def via_rest_json(harness: Harness, token: str, case: Case) -> str:
    body = request_fields(case)
    if case.images:
        body["images"] = [b64png()] * case.images
    body = {k: v for k, v in body.items() if v is not None}
    headers = {"Authorization": f"Bearer {token}"}
    return rest_verdict(
        httpx.post(f"{harness.served.url}/v1/edits", json=body, headers=headers, timeout=DEADLINE)
    )


def via_rest_multipart(harness: Harness, token: str, case: Case) -> str:
    data = {k: str(v) for k, v in request_fields(case).items() if v is not None}
    files = [("image", (f"{index}.png", png_bytes(), "image/png")) for index in range(case.images)]
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(
        f"{harness.served.url}/v1/edits", data=data, files=files, headers=headers, timeout=DEADLINE
    )
    return rest_verdict(response)


def via_mcp(harness: Harness, token: str, case: Case) -> str:
    arguments = request_fields(case)
    image = arguments.pop("image", None) or (b64png() if case.images else None)
    arguments = {k: v for k, v in arguments.items() if v is not None}
    arguments.update(image_base64=image, timeout_seconds=0)

    async def main() -> Any:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=DEADLINE) as http,
            Client(streamable_http_client(f"{harness.served.url}/mcp", http_client=http)) as client,
        ):
            return await client.call_tool("edit_image", arguments)

    result = asyncio.run(main())
    if not result.is_error:
        return ACCEPTED
    text = "".join(item.text for item in result.content if item.type == "text")
    code = text.removeprefix("Error executing tool edit_image: ").split(":", 1)[0]
    # Accepted and already picked up by the harness's worker, whose editor stops at once.
    return ACCEPTED if code == ReasonCode.CANCELED else code


def via_runpod(editor: CancelledEditor, case: Case) -> str:
    job_input = request_fields(case)
    if case.images:
        job_input["images"] = [b64png()] * case.images
    handler = build_runpod_handler(load_settings(), editor, report=lambda job, update: None)
    output = asyncio.run(handler({"id": "parity", "input": job_input}))
    return ACCEPTED if output.get("error_code") == ReasonCode.CANCELED else str(output["error_code"])


def via_cli(editor: CancelledEditor, case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    loads: list[object] = []

    def build_editor(settings: object) -> Editor:
        loads.append(settings)
        return editor

    monkeypatch.setattr(composition, "build_editor", build_editor)
    values = request_fields(case)
    options = {item.name: item.spec.cli or f"--{item.name.replace('_', '-')}" for item in PARAM_FIELDS}
    # `--option=value`, so values that start with a dash (-0.1, -1) stay values. `--out` without a
    # suffix, so the format is the option's (a suffix would name one).
    args = ["edit", "--out", str(tmp_path / "out")]
    args += [f"{options[name]}={value}" for name, value in values.items() if value is not None]
    for index in range(case.images):
        path = tmp_path / f"in{index}.png"
        path.write_bytes(png_bytes())
        args += ["--image", str(path)]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    # Only the CLI's own `error:` line: the harness's worker, running in this process, logs to the
    # same stderr while the CLI runs (the log handler writes to sys.stderr as it is at each record).
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    code = errors[0].removeprefix("error: ").split(":", 1)[0]
    if code != ReasonCode.CANCELED:
        assert not loads, f"the CLI loaded a model for a request it then refused: {result.stderr}"
    return ACCEPTED if code == ReasonCode.CANCELED else code


def via_editor(editor: CancelledEditor, case: Case) -> str:
    values = request_fields(case)
    try:
        editor.edit([picture() for _ in range(case.images)], EditParams(**values))
    except EditCancelled:
        return ACCEPTED
    except InvalidInput as exc:
        return code_of(exc)
    raise AssertionError("an edit with a cancel already set returned")


@pytest.fixture
def cancelled_editor(tiny_editor: Editor) -> CancelledEditor:
    return CancelledEditor(tiny_editor)


@pytest.fixture
def harness(start_processor: Callable[..., Harness], cancelled_editor: CancelledEditor) -> Iterator[Harness]:
    yield start_processor(rest=True, editor=cancelled_editor)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_way_in_gives_the_same_verdict(
    case: Case,
    harness: Harness,
    make_user: Callable[[], uuid.UUID],
    cancelled_editor: CancelledEditor,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = make_user()
    token = harness.storage.token(user)
    ways: dict[str, Callable[[], str]] = {
        "row": lambda: via_row(harness, user, case),
        "rest_json": lambda: via_rest_json(harness, token, case),
        "rest_multipart": lambda: via_rest_multipart(harness, token, case),
        "mcp": lambda: via_mcp(harness, token, case),
        "runpod": lambda: via_runpod(cancelled_editor, case),
        "cli": lambda: via_cli(cancelled_editor, case, tmp_path, monkeypatch),
        "editor": lambda: via_editor(cancelled_editor, case),
    }
    verdicts = {way: ways[way]() for way in case.ways}
    assert verdicts == dict.fromkeys(case.ways, str(case.expected))


def test_the_cases_cover_every_rule() -> None:
    # A new limit in rules needs its boundary here: the ids name each one on both sides.
    ids = {case.id for case in CASES}
    assert {"prompt-at-max", "prompt-over-max", "prompt-bytes-at-max", "prompt-bytes-over-max",
            "prompt-over-max-in-nfc", "prompt-under-max-in-nfc", "steps-1", "steps-101", "cfg-20", "cfg-20.1", "4-images",
            "size-4096", "size-4112", "size-over-area", "seed-max", "seed-2-63", "output-format-gif",
            "output-quality-0", "output-quality-1", "output-quality-100", "output-quality-101", "key-at-max",
            "key-over-max"} <= ids  # fmt: skip


# --- Batches: the same edit over many images -----------------------------------------------------------

BATCH_WAYS = ("row", "rest_json", "rest_multipart", "mcp")


@dataclass(frozen=True)
class BatchCase:
    id: str
    expected: str
    size: int
    references: int = 0
    fields: Mapping[str, Any] = field(default_factory=dict)


BATCH_CASES = [
    BatchCase("batch-1", ACCEPTED, 1),
    BatchCase("batch-at-max", ACCEPTED, rules.MAX_BATCH_SIZE),
    BatchCase("batch-over-max", ReasonCode.TOO_MANY_IMAGES, rules.MAX_BATCH_SIZE + 1),
    BatchCase("batch-empty", ReasonCode.INVALID_INPUT, 0),
    BatchCase("batch-2-references", ACCEPTED, 2, references=rules.MAX_IMAGES - 1),
    BatchCase("batch-3-references", ReasonCode.TOO_MANY_IMAGES, 2, references=rules.MAX_IMAGES),
    BatchCase("batch-steps-1", ReasonCode.INVALID_PARAMETER, 2, fields={"num_inference_steps": 1}),
    BatchCase("batch-prompt-blank", ReasonCode.INVALID_PROMPT, 2, fields={"prompt": " \t"}),
    BatchCase("batch-output-format", ACCEPTED, 2, fields={"output_format": "jpeg", "output_quality": 70}),
    BatchCase("batch-output-format-gif", ReasonCode.INVALID_PARAMETER, 2, fields={"output_format": "gif"}),
    BatchCase("batch-output-quality-101", ReasonCode.INVALID_PARAMETER, 2, fields={"output_quality": 101}),
]


def batch_row(harness: Harness, user: uuid.UUID, case: BatchCase) -> str:
    values = {**BASE, **case.fields}
    values["input_paths"] = [f"{user}/{index}.png" for index in range(case.size)]
    values["reference_paths"] = [f"{user}/ref{index}.png" for index in range(case.references)]
    try:
        with acting_as(harness.db, "authenticated", user) as conn:
            conn.execute(
                f"insert into edit_batches ({', '.join(values)}) values ({', '.join(['%s'] * len(values))})",
                tuple(values.values()),
            )
    except psycopg.errors.CheckViolation as exc:
        return str(reason_for_constraint(exc.diag.constraint_name))
    return ACCEPTED


def batch_rest_json(harness: Harness, token: str, case: BatchCase) -> str:
    body = {
        **BASE,
        **case.fields,
        "images": [b64png()] * case.size,
        "reference_images": [b64png()] * case.references,
    }
    headers = {"Authorization": f"Bearer {token}"}
    return rest_verdict(
        httpx.post(f"{harness.served.url}/v1/batches", json=body, headers=headers, timeout=DEADLINE)
    )


def batch_rest_multipart(harness: Harness, token: str, case: BatchCase) -> str:
    data = {k: str(v) for k, v in {**BASE, **case.fields}.items()}
    files = [("image", (f"{i}.png", png_bytes(), "image/png")) for i in range(case.size)]
    files += [("reference", (f"r{i}.png", png_bytes(), "image/png")) for i in range(case.references)]
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(
        f"{harness.served.url}/v1/batches", data=data, files=files or None, headers=headers, timeout=DEADLINE
    )
    return rest_verdict(response)


def batch_mcp(harness: Harness, token: str, case: BatchCase) -> str:
    arguments = {
        **BASE,
        **case.fields,
        "images_base64": [b64png()] * case.size,
        "reference_images_base64": [b64png()] * case.references,
    }

    async def main() -> Any:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=DEADLINE) as http,
            Client(streamable_http_client(f"{harness.served.url}/mcp", http_client=http)) as client,
        ):
            return await client.call_tool("submit_batch", arguments)

    result = asyncio.run(main())
    if not result.is_error:
        return ACCEPTED
    text = "".join(item.text for item in result.content if item.type == "text")
    return text.removeprefix("Error executing tool submit_batch: ").split(":", 1)[0]


@pytest.mark.parametrize("case", BATCH_CASES, ids=lambda case: case.id)
def test_every_way_in_gives_the_same_verdict_for_a_batch(
    case: BatchCase, harness: Harness, make_user: Callable[[], uuid.UUID]
) -> None:
    # A user per way, so that one way's accepted batch does not count against the next one's limits.
    users = {way: make_user() for way in BATCH_WAYS}
    tokens = {way: harness.storage.token(user) for way, user in users.items()}
    ways: dict[str, Callable[[], str]] = {
        "row": lambda: batch_row(harness, users["row"], case),
        "rest_json": lambda: batch_rest_json(harness, tokens["rest_json"], case),
        "rest_multipart": lambda: batch_rest_multipart(harness, tokens["rest_multipart"], case),
        "mcp": lambda: batch_mcp(harness, tokens["mcp"], case),
    }
    verdicts = {way: ways[way]() for way in BATCH_WAYS}
    assert verdicts == dict.fromkeys(BATCH_WAYS, str(case.expected))
    # Every accepted way made the whole batch; no refused one left a batch or a request behind.
    made = harness.db.execute(
        "select count(distinct b.id) as batches, count(r.id) as requests from edit_batches b "
        "left join edit_requests r on r.batch_id = b.id"
    ).fetchone()
    accepted = case.expected == ACCEPTED
    assert made == {
        "batches": len(BATCH_WAYS) if accepted else 0,
        "requests": len(BATCH_WAYS) * case.size if accepted else 0,
    }


def test_the_batch_cases_cover_the_batch_rule() -> None:
    assert {"batch-at-max", "batch-over-max", "batch-empty", "batch-3-references"} <= {
        c.id for c in BATCH_CASES
    }
