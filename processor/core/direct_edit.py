"""One edit, run directly: the flow the CLI and RunPod's direct input share, and the one encoding of
a result that the worker uses too, so an output carries the same PNG metadata whichever way it came.

The request is checked before any image is decoded (``read_images``), the editor runs it
(``run_edit``), and the result is encoded with its generation parameters as text chunks
(``encode_output``: ``params.generation_text``; the worker adds the request's id).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from processor.core.decoding import shared_pool
from processor.domain.images import ImageLimits, OutputFormat, encode_image
from processor.domain.params import check_request, generation_text
from processor.domain.ports.editor import Editor, EditResult, ProgressCallback
from processor.domain.request import EditParams


@dataclass(frozen=True, slots=True)
class EditOutput:
    """An edit's result and its encoded image."""

    result: EditResult
    data: bytes
    format: OutputFormat


def read_images(params: EditParams, encoded: Sequence[bytes], limits: ImageLimits) -> list[Image.Image]:
    """Refuse what the rules refuse before decoding anything (``InvalidInput``), then decode each image
    under ``limits`` in the decoding processes (each within its CPU time; blocking). No image at all is
    a creation: the editor starts from a base canvas."""
    check_request(params, len(encoded))
    return [shared_pool().decode_blocking(data, limits) for data in encoded]


def encode_output(
    params: EditParams, result: EditResult, fmt: OutputFormat = "png", *, request_id: uuid.UUID | None = None
) -> bytes:
    """The result in ``fmt``, with the generation parameters (and the request's id) as text chunks."""
    text = generation_text(params, result)
    if request_id is not None:
        text["request_id"] = str(request_id)
    return encode_image(result.image, fmt, text)


def run_edit(
    editor: Editor,
    images: Sequence[Image.Image],
    params: EditParams,
    fmt: OutputFormat = "png",
    *,
    on_progress: ProgressCallback | None = None,
) -> EditOutput:
    """Edit and encode (blocking: run it in a thread from async code)."""
    result = editor.edit(images, params, on_progress=on_progress)
    return EditOutput(result, encode_output(params, result, fmt), fmt)
