"""One edit, run directly: the flow the CLI and RunPod's direct input share, and the one encoding of
a result that the worker uses too, so an output carries the same metadata whichever way it came.

The request is checked before any image is decoded (``read_images``), the editor runs it
(``run_edit``), and the result is encoded in the request's format, or the deployment's default
(``encode_output``), with its generation parameters inside the file (``params.generation_text``; the
worker adds the request's id; ``domain.embedded_metadata`` says where each format holds them).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from processor.core.decoding import shared_pool
from processor.domain.embedded_metadata import DigitalSource
from processor.domain.images import ImageLimits, OutputEncoding, encode_image
from processor.domain.params import check_request, generation_text
from processor.domain.ports.editor import Editor, EditResult, ProgressCallback
from processor.domain.request import EditParams


@dataclass(frozen=True, slots=True)
class EncodedOutput:
    """A result's file: its bytes and how they are encoded."""

    data: bytes
    encoding: OutputEncoding

    def metadata(self) -> dict[str, str | int]:
        """What a result records of its file (``OutputEncoding.metadata``)."""
        return self.encoding.metadata()


@dataclass(frozen=True, slots=True)
class EditOutput:
    """An edit's result and its file."""

    result: EditResult
    output: EncodedOutput


def read_images(params: EditParams, encoded: Sequence[bytes], limits: ImageLimits) -> list[Image.Image]:
    """Refuse what the rules refuse before decoding anything (``InvalidInput``), then decode each image
    under ``limits`` in the decoding processes (each within its CPU time; blocking). No image at all is
    a creation: the editor starts from a base canvas."""
    check_request(params, len(encoded))
    return [shared_pool().decode_blocking(data, limits) for data in encoded]


def output_encoding(params: EditParams, default: OutputEncoding) -> OutputEncoding:
    """The encoding of this request's result: its ``output_format`` and ``output_quality`` where it
    names them, the deployment's ``default`` where not."""
    return default.for_request(params.output_format, params.output_quality)


def encode_output(
    params: EditParams,
    result: EditResult,
    default: OutputEncoding,
    *,
    request_id: uuid.UUID | None = None,
) -> EncodedOutput:
    """The result in the request's encoding, with the generation parameters (and the request's id) inside."""
    text = generation_text(params, result)
    if request_id is not None:
        text["request_id"] = str(request_id)
    encoding = output_encoding(params, default)
    # Made from a prompt alone, or an edit of the caller's pictures (IPTC's digital source types).
    source: DigitalSource = (
        "compositeWithTrainedAlgorithmicMedia" if result.base is None else "trainedAlgorithmicMedia"
    )
    data = encode_image(result.image, encoding.format, text, quality=encoding.quality, source=source)
    return EncodedOutput(data, encoding)


def run_edit(
    editor: Editor,
    images: Sequence[Image.Image],
    params: EditParams,
    default: OutputEncoding,
    *,
    on_progress: ProgressCallback | None = None,
) -> EditOutput:
    """Edit and encode (blocking: run it in a thread from async code)."""
    result = editor.edit(images, params, on_progress=on_progress)
    return EditOutput(result, encode_output(params, result, default))
