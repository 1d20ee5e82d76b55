"""What every output says about itself, inside the file: an XMP packet with the IPTC digital
source type (is it AI-made?) and the farm's provenance (which model, how, for which job).

Readers are not ours: marketplaces and the EU AI Act's machine-readable marking (Art. 50)
read IPTC ``Iptc4xmpExt:DigitalSourceType``; ``exiftool -XMP:all FILE`` shows all of it. The
packet goes into PNG as an iTXt ``XML:com.adobe.xmp`` chunk, into JPEG (APP1) and WebP (XMP
chunk) through Pillow (shared/images.py ``encode_image``). A signed C2PA manifest, when the
team has a certificate, is added after this label (worker/content_credentials.py).

The prompt is not written: a file travels wherever it is published, and a team's prompt
(product names before launch, competitors' names) is its own business. Provenance names
the model and parameters; the job id leads its team back to the prompt.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version

from shared.models import Job
from shared.registry import ModelKind, ModelSpec
from shared.schemas import RenderParams

# IPTC NewsCodes "digital source type" (https://cv.iptc.org/newscodes/digitalsourcetype/).
DIGITAL_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED_ALGORITHMIC_MEDIA = DIGITAL_SOURCE_TYPES + "trainedAlgorithmicMedia"
COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA = (
    DIGITAL_SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"
)

IMGFARM_NS = "https://imgfarm.dev/ns/1.0/"
_NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "imgfarm": IMGFARM_NS,
}
for _prefix, _uri in _NAMESPACES.items():
    ET.register_namespace(_prefix, _uri)
# The XMP packet wrapper (XMP part 1, 7.3): the id is the fixed one every writer uses.
_PACKET_BEGIN = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
_PACKET_END = '<?xpacket end="r"?>'


def _tag(prefix: str, name: str) -> str:
    return f"{{{_NAMESPACES[prefix]}}}{name}"


@cache  # importlib.metadata reads the installed metadata: 1-5 ms a call, once per output
def generator() -> str:
    """``imgfarm/<version>``: the claim generator of C2PA and XMP's CreatorTool."""
    return f"imgfarm/{version('imgfarm')}"


def digital_source_type(kind: ModelKind) -> str | None:
    """What IPTC calls an output of ``kind``. An inpaint keeps the product's own pixels
    (bit for bit) and paints the rest: a composite. ``echo`` is the source resized, not
    AI-made: it claims nothing (the farm cannot know how the source itself was made)."""
    if kind == "echo":
        return None
    if kind == "inpaint":
        return COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA
    return TRAINED_ALGORITHMIC_MEDIA


@dataclass(frozen=True)
class Label:
    """One output's label: its digital source type (None: no claim) and the farm's
    provenance, as the imgfarm namespace's properties (name -> text)."""

    digital_source_type: str | None
    provenance: dict[str, str]


def output_label(spec: ModelSpec, revision: str, job: Job, params: RenderParams) -> Label:
    """The label of ``job``'s output: what it is and how the farm made it."""
    provenance = {
        "model": spec.alias,
        "revision": revision,
        "kind": spec.kind,
        "license": spec.license,
        "commercialUse": "true" if spec.commercial_use else "false",
        "seed": str(params.seed),
        "steps": str(params.steps),
        "strength": str(params.strength),
        "guidanceScale": str(params.guidance_scale),
        "jobId": str(job.id),
    }
    if job.batch_id is not None:
        provenance["batchId"] = str(job.batch_id)
    return Label(digital_source_type(spec.kind), provenance)


def preset_label(label: Label, preset: str, *, cutout: bool) -> Label:
    """The label of a marketplace preset's output (worker/presets.py), from its render's
    ``label``. A scene preset is the render reframed: the render's claim, and the preset.
    A cut-out preset (``amazon-main``) is the product's own source pixels on white, no pixel
    of it generated: it claims no AI source type (as ``echo``: the farm cannot know how
    the source itself was made) and says what it is."""
    provenance = {**label.provenance, "preset": preset}
    if cutout:
        return Label(None, {**provenance, "madeOf": "the source's product cut out, on white"})
    return Label(label.digital_source_type, provenance)


def xmp_packet(label: Label) -> bytes:
    """``label`` as an XMP packet (UTF-8). Built with ElementTree, so every value is escaped
    as XML text whatever it holds."""
    meta = ET.Element(_tag("x", "xmpmeta"))
    rdf = ET.SubElement(meta, _tag("rdf", "RDF"))
    description = ET.SubElement(rdf, _tag("rdf", "Description"), {_tag("rdf", "about"): ""})
    ET.SubElement(description, _tag("xmp", "CreatorTool")).text = generator()
    if label.digital_source_type is not None:
        ET.SubElement(
            description, _tag("Iptc4xmpExt", "DigitalSourceType")
        ).text = label.digital_source_type
    for name, value in label.provenance.items():
        ET.SubElement(description, _tag("imgfarm", name)).text = value
    body = ET.tostring(meta, encoding="unicode")
    return f"{_PACKET_BEGIN}{body}{_PACKET_END}".encode()
