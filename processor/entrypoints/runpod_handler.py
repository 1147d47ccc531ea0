"""RunPod serverless handler: the same edit engine and the same rows, on GPUs that scale to zero.

Two kinds of job input:

- the request's fields (``domain/request.py``: ``prompt``, ``negative_prompt``,
  ``num_inference_steps``, ..., ``speed``, ``loras``; the fields and rules of every way in) with
  ``image`` (base64) and/or ``images`` (at most 3 in all; none: a creation): edit directly and return
  ``{"image": <base64>, "output_format", "media_type", "seed", "width", "height", "timings", ...}``,
  like the original handler; the image is in the request's ``output_format`` (default: the
  deployment's ``OUTPUT_FORMAT``), which ``output_format`` and ``media_type`` name;
- ``{"edit_request_id": "<uuid>"}``: claim that ``edit_requests`` row and process it exactly as
  the worker does (download, edit, upload, complete, heartbeats). Point the database webhook at the
  endpoint with Vault secret ``edit_processor_webhook_format = 'runpod'``.

Bad input returns ``{"error": "<reason>: <message>", "error_code": "<reason>"}``. Progress goes to
RunPod's progress updates. The model is loaded once per worker, before the first job.

    edit-processor runpod                                   # on RunPod
    edit-processor runpod --test_input '{"input": {...}}'   # locally (SDK test mode)
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from PIL import Image

from processor.core.direct_edit import read_images, run_edit
from processor.domain.errors import InvalidInput, ProcessorError
from processor.domain.images import ImageLimits, OutputEncoding
from processor.domain.params import encoded_images, params_from_mapping
from processor.domain.ports.editor import Editor, EditorWrapper, EditResult, PreviewSink, ProgressCallback
from processor.domain.reasons import ReasonCode
from processor.domain.request import EditParams

log = logging.getLogger(__name__)

Job = dict[str, Any]
Reporter = Callable[[Job, dict[str, Any]], None]
RowRunner = Callable[[Editor, uuid.UUID], Awaitable[str | None]]
"""Claims one ``edit_requests`` row and runs it with the editor; the outcome, or None when not claimed."""


def runpod_progress(job: Job, update: dict[str, Any]) -> None:
    """Send a progress update to RunPod (only on RunPod: locally there is nobody to tell)."""
    if os.environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        import runpod

        runpod.serverless.progress_update(job, update)
    else:
        log.debug("progress %s", update)


class _ReportingEditor(EditorWrapper):
    """Forwards each step's progress to RunPod, whoever calls the editor; the editor is shared by
    every job (closed by whoever loaded it)."""

    def __init__(self, inner: Editor, job: Job, report: Reporter) -> None:
        super().__init__(inner, owns_inner=False)
        self._job = job
        self._report = report

    def edit(
        self,
        images: Sequence[Image.Image],
        params: EditParams,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        previews: PreviewSink | None = None,
        prepared: object | None = None,
    ) -> EditResult:
        def progress(step: int, total: int) -> None:
            if on_progress is not None:
                on_progress(step, total)
            self._report(self._job, {"step": step, "total": total, "percent": round(100 * step / total)})

        return super().edit(
            images, params, on_progress=progress, cancel=cancel, previews=previews, prepared=prepared
        )


def _read_job(job_input: Mapping[str, Any], limits: ImageLimits) -> tuple[EditParams, list[Image.Image]]:
    """The job's parameters (through the one mapping every way in shares) and its images, decoded
    once everything the rules refuse has been refused."""
    params = params_from_mapping(job_input)
    return params, read_images(params, encoded_images(job_input), limits)


def make_handler(
    editor: Editor,
    limits: ImageLimits,
    encoding: OutputEncoding,
    run_row: RowRunner,
    *,
    report: Reporter = runpod_progress,
) -> Callable[[Job], Awaitable[dict[str, Any]]]:
    """The handler RunPod calls for each job, closed over an editor loaded once; ``encoding`` is the
    deployment's, for direct jobs that name no format or quality."""

    async def edit_directly(job: Job, job_input: Mapping[str, Any]) -> dict[str, Any]:
        params, images = await asyncio.to_thread(_read_job, job_input, limits)
        # The direct-edit flow the CLI runs too: the same encoding and metadata as the worker's outputs.
        output = await asyncio.to_thread(
            run_edit, _ReportingEditor(editor, job, report), images, params, encoding
        )
        result = output.result
        return {
            "image": base64.b64encode(output.output.data).decode(),
            **output.output.metadata(),  # output_format, media_type (and output_quality)
            "seed": result.seed,
            "width": result.width,
            "height": result.height,
            "timings": dict(result.timings),
            "num_inference_steps": result.num_inference_steps,
            **result.run,  # speed, true_cfg_scale, scheduler, loras: how it ran
        }

    async def process_row(job: Job, request_id: uuid.UUID) -> dict[str, Any]:
        outcome = await run_row(_ReportingEditor(editor, job, report), request_id)
        # None: already taken, finished or canceled; a duplicate delivery is not an error.
        return {"edit_request_id": str(request_id), "status": outcome or "not_claimed"}

    async def handler(job: Job) -> dict[str, Any]:
        job_input = job.get("input") or {}
        try:
            if not isinstance(job_input, dict):
                raise InvalidInput("`input` must be an object", reason=ReasonCode.INVALID_REQUEST)
            if "edit_request_id" in job_input:
                try:
                    request_id = uuid.UUID(str(job_input["edit_request_id"]))
                except ValueError as exc:
                    raise InvalidInput(
                        "edit_request_id is not a uuid", reason=ReasonCode.INVALID_REQUEST
                    ) from exc
                return await process_row(job, request_id)
            return await edit_directly(job, job_input)
        except ProcessorError as exc:
            return {"error": str(exc), "error_code": exc.reason}

    return handler
