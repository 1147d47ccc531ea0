"""Reading an output's generation parameters back with Pillow alone, as docs/usage.md tells users to."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from PIL import Image

from processor.domain.embedded_metadata import XMP_NAMESPACE

RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
IPTC_SOURCE = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}DigitalSourceType"
CREATOR = "{http://ns.adobe.com/xap/1.0/}CreatorTool"
PNG_XMP = "XML:com.adobe.xmp"
PILLOW_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}


@dataclass(frozen=True)
class Embedded:
    """What one output file holds: its format, the parameters (PNG text chunks, or EXIF's
    UserComment), the same as XMP properties, and XMP's digital source type and creator tool."""

    format: str
    text: dict[str, str]
    xmp: dict[str, str]
    source: str | None
    creator: str | None


def embedded(data: bytes) -> Embedded:
    image = Image.open(io.BytesIO(data))
    if image.format == "PNG":
        text = {key: value for key, value in image.text.items() if key != PNG_XMP}  # type: ignore[attr-defined]
    else:
        comment = image.getexif().get_ifd(0x8769)[0x9286]
        assert comment[:8] == b"ASCII\x00\x00\x00", comment[:8]
        text = json.loads(comment[8:])
        assert image.getexif()[0x0131] == "qwen-edit-processor"
    description = ET.fromstring(image.info["xmp"]).find(f"{RDF}RDF/{RDF}Description")
    assert description is not None
    prefix = "{" + XMP_NAMESPACE + "}"
    xmp = {
        child.tag.removeprefix(prefix): child.text or ""
        for child in description
        if child.tag.startswith(prefix)
    }
    source, creator = description.find(IPTC_SOURCE), description.find(CREATOR)
    return Embedded(
        format=str(image.format),
        text=text,
        xmp=xmp,
        source=None if source is None else source.text,
        creator=None if creator is None else creator.text,
    )


def parameters_in(data: bytes, fmt: str) -> dict[str, str]:
    """The generation parameters inside an output that must be in ``fmt`` (png, webp, jpeg); the
    text chunks or EXIF and the XMP packet must hold the same."""
    found = embedded(data)
    assert found.format == PILLOW_FORMATS[fmt]
    assert found.xmp == found.text
    return found.text
