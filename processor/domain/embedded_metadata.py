"""The generation parameters inside an output file, whatever its format (docs/decisions/0081).

``images.encode_image`` writes them; a reader needs nothing but Pillow (``docs/usage.md``):

* **PNG**: one text chunk per parameter (``Image.open(f).text``), as before, and the XMP packet;
* **WebP and JPEG**: EXIF, with the parameters as one JSON object in ``UserComment`` (Exif IFD,
  tag 0x9286, charset ``ASCII``: the JSON escapes every other character, so it is exact and needs
  no guess at a byte order) and ``Software``; and the XMP packet;
* **XMP** (all three formats; ``Image.open(f).info["xmp"]``): each parameter as ``qep:<name>`` in the
  namespace ``XMP_NAMESPACE``, ``xmp:CreatorTool``, and IPTC's ``DigitalSourceType``, which says the
  picture was made (``trainedAlgorithmicMedia``) or edited (``compositeWithTrainedAlgorithmicMedia``)
  by a generative model, the field search engines and photo tools read to label AI pictures
  (https://iptc.org/std/photometadata/documentation/userguide/#_guidance_for_using_generative_ai).

The values are the same text everywhere (``params.generation_text``). XML cannot hold some
characters a prompt may contain (control characters other than tab and line breaks, unpaired
surrogates): XMP carries U+FFFD in their place, the text chunks and EXIF carry them exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final, Literal
from xml.sax.saxutils import escape

from PIL import Image

CREATOR_TOOL: Final = "qwen-edit-processor"
XMP_NAMESPACE: Final = "urn:qwen-edit-processor:generation:1.0#"
"""The namespace of the parameters in XMP (prefix ``qep``)."""
XMP_PREFIX: Final = "qep"
IPTC_EXT_NAMESPACE: Final = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"

DigitalSource = Literal["trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"]
"""IPTC's digital source types of generative AI: created from a prompt, or an edit of pictures."""
DIGITAL_SOURCE_TYPES: Final = "http://cv.iptc.org/newscodes/digitalsourcetype/"

EXIF_IFD: Final = 0x8769
USER_COMMENT: Final = 0x9286
SOFTWARE: Final = 0x0131
_ASCII_CHARSET: Final = b"ASCII\x00\x00\x00"
"""UserComment's first 8 bytes name its character code (EXIF 2.32, section 4.6.5)."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters XML 1.0 cannot hold, even as references (its ``Char`` production)."""


def exif_block(text: Mapping[str, str]) -> bytes:
    """EXIF holding ``text`` as JSON in ``UserComment`` and this processor as ``Software``."""
    exif = Image.Exif()
    exif[SOFTWARE] = CREATOR_TOOL
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = _ASCII_CHARSET + json.dumps(dict(text), ensure_ascii=True).encode()
    return exif.tobytes()


def xmp_packet(text: Mapping[str, str], source: DigitalSource | None) -> bytes:
    """An XMP packet of ``text`` (one ``qep:<name>`` each), the creator tool and the digital source type."""
    properties = [f"<xmp:CreatorTool>{CREATOR_TOOL}</xmp:CreatorTool>"]
    if source is not None:
        properties.append(
            f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPES}{source}</Iptc4xmpExt:DigitalSourceType>"
        )
    for name, value in text.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} cannot name an XMP property")
        properties.append(f"<{XMP_PREFIX}:{name}>{_xml_text(value)}</{XMP_PREFIX}:{name}>")
    body = "\n    ".join(properties)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    xmlns:Iptc4xmpExt="{IPTC_EXT_NAMESPACE}"\n'
        f'    xmlns:{XMP_PREFIX}="{XMP_NAMESPACE}">\n'
        f"    {body}\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    ).encode()


def _xml_text(value: str) -> str:
    # A carriage return as a reference: XML parsers turn a literal one into a line feed.
    return escape(_NOT_XML.sub("\ufffd", value), {"\r": "&#xD;"})
