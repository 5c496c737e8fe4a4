"""Make an SVG file safe to inline into an HTML page (the report reads folders it did not write).

:func:`sanitise_svg` parses the SVG as XML (refusing entity declarations) and keeps only what a
figure needs: an allow-list of drawing elements (no ``<script>``, no ``<foreignObject>``, no
``<iframe>``, no filters or animations), no event-handler attribute (``on*``), no reference that
leaves the page (``href`` only to ``#id`` or, on ``<image>``, a base64 PNG/JPEG/GIF/WebP data
URL; ``url(...)`` only to ``#id``; no ``@import``), no attribute in a foreign namespace. Every
``id`` (and each reference to it) is prefixed, so several figures share one page without
clashes. The tree is written back by the XML serialiser, so every text and attribute is
escaped. Anything it cannot parse raises :class:`UnsafeSvgError`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

__all__ = ["UnsafeSvgError", "sanitise_svg"]

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"

ELEMENTS = frozenset(
    {
        "svg", "g", "defs", "symbol", "use", "path", "rect", "circle", "ellipse", "line",
        "polyline", "polygon", "text", "tspan", "textPath", "title", "desc", "style",
        "clipPath", "mask", "pattern", "marker", "linearGradient", "radialGradient", "stop",
        "image",
    }
)  # fmt: skip
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*", re.I)
_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)", re.I | re.S)
_DECLARATIONS = re.compile(r"<!ENTITY|<!DOCTYPE[^>]*\[", re.I)
_DANGEROUS = re.compile(
    r"@|\\|expression\s*\(|javascript:|image-set|behavior\s*:|-moz-binding", re.I
)


class UnsafeSvgError(ValueError):
    """An SVG that cannot be parsed into a figure (not well-formed, or declares entities)."""


def _local(name: str) -> tuple[str | None, str]:
    if name.startswith("{"):
        ns, _, local = name[1:].partition("}")
        return ns, local
    return None, name


def _urls_local(value: str) -> bool:
    """Every ``url(...)`` in ``value`` points into the page (``#id``)."""
    return all(target.strip().startswith("#") for _, target in _URL.findall(value))


def _safe_value(value: str) -> bool:
    return _urls_local(value) and not _DANGEROUS.search(value)


def _clean(element: ET.Element) -> None:
    """Remove what is not allowed from ``element``'s children and attributes, in place."""
    kept: ET.Element | None = None  # the last child kept so far
    for child in list(element):
        ns, local = _local(child.tag) if isinstance(child.tag, str) else (None, "")
        if ns not in (SVG_NS, None) or local not in ELEMENTS:
            tail = child.tail
            element.remove(child)
            if tail and tail.strip():  # keep the text after it where it was: after the kept
                if kept is None:  # sibling before it, or at the start of the parent's text
                    element.text = (element.text or "") + tail
                else:
                    kept.tail = (kept.tail or "") + tail
            continue
        _clean(child)
        kept = child
    _, tag = _local(element.tag)
    for name in list(element.attrib):
        ns, local = _local(name)
        value = element.attrib[name]
        keep = ns in (None, XLINK_NS, XML_NS) and not local.lower().startswith("on")
        if keep and local == "href":
            keep = value.strip().startswith("#") or (
                tag == "image" and _DATA_IMAGE.fullmatch(value.strip()) is not None
            )
        elif keep:
            keep = _safe_value(value)
        if not keep:
            del element.attrib[name]
    if tag == "style" and element.text and not _safe_value(element.text):
        element.text = ""


def _prefix_ids(root: ET.Element, prefix: str) -> None:
    ids = {e.get("id") for e in root.iter() if e.get("id")}
    if not ids:
        return

    def ref(target: str) -> str:
        name = target.strip()[1:]
        return f"#{prefix}-{name}" if name in ids else target

    def urls(value: str) -> str:
        return _URL.sub(lambda m: f"url({ref(m.group(2))})" if m.group(2).strip().startswith("#")
                        else m.group(0), value)  # fmt: skip

    for e in root.iter():
        if e.get("id"):
            e.set("id", f"{prefix}-{e.get('id')}")
        for name, value in list(e.attrib.items()):
            if _local(name)[1] == "href" and value.strip().startswith("#"):
                e.set(name, ref(value))
            elif "url(" in value.lower():
                e.set(name, urls(value))
        if _local(e.tag)[1] == "style" and e.text:
            e.text = urls(e.text)


def _plain_names(root: ET.Element) -> None:
    """Write SVG elements without a namespace prefix and ``xlink:href`` as ``href`` (SVG 2):
    an HTML page puts ``<svg>`` and its children in the SVG namespace by itself."""
    for e in root.iter():
        ns, local = _local(e.tag)
        if ns == SVG_NS:
            e.tag = local
        for name in list(e.attrib):
            ns, local = _local(name)
            if ns == XLINK_NS and local == "href":
                e.set("href", e.attrib.pop(name))


def sanitise_svg(text: str, prefix: str) -> str:
    """The SVG ``text`` made safe for inlining (see the module docstring), ids prefixed."""
    if _DECLARATIONS.search(text):
        raise UnsafeSvgError("the SVG declares entities or a document type subset")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise UnsafeSvgError(f"not a well-formed SVG ({exc})") from None
    ns, local = _local(root.tag)
    if local != "svg" or ns not in (SVG_NS, None):
        raise UnsafeSvgError(f"not an SVG (root element {local!r})")
    _clean(root)
    _prefix_ids(root, prefix)
    _plain_names(root)
    return ET.tostring(root, encoding="unicode", short_empty_elements=True)
