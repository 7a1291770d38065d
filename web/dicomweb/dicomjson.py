"""The DICOM JSON Model (PS3.18 F.2): catalogue rows for QIDO-RS, stored files for metadata.

Keys are tags as 8 upper-case hex digits in tag order; every attribute carries ``vr``;
values are arrays; PN values are ``{"Alphabetic", "Ideographic", "Phonetic"}`` objects;
IS, DS and the binary integer VRs are JSON numbers; an empty attribute has no ``Value``.
Binary values over ``BULK_THRESHOLD`` bytes become a ``BulkDataURI`` (F.2.6), smaller ones
``InlineBinary`` (F.2.7). Text is decoded with the file's Specific Character Set by pydicom
and written as UTF-8 (F.2: JSON is always UTF-8).

An instance's metadata is derived data: it is built from the file once and kept under
``data_dir/cache/dicomweb`` keyed by the file's SHA-256, with the service's base URL left as
a placeholder (the host a client used is only known per request).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

BULK_THRESHOLD = 1024  # bytes of a binary value inlined at most
CACHE_VERSION = "v2"
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"IS", "DS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
# json.dumps writes the placeholder's NULs escaped; the escaped form is what is replaced
_BASE = "\x00DICOMWEB-BASE\x00"
_BASE_ESCAPED = json.dumps(_BASE)[1:-1]


def tag_key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - callers pass dictionary keywords
        raise KeyError(keyword)
    return f"{tag:08X}"


def keyword_vr(keyword: str) -> str:
    vr = dictionary_VR(keyword)
    return "US" if vr == "US or SS" else "OW" if vr == "OB or OW" else vr


def attribute(keyword: str, value: Any) -> dict[str, Any]:
    """One attribute from a catalogue value (a string, number, list, or None for empty)."""
    vr = keyword_vr(keyword)
    element: dict[str, Any] = {"vr": vr}
    values = value if isinstance(value, list) else [] if value in (None, "") else [value]
    if not values:
        return element
    if vr == "PN":
        element["Value"] = [person_name(str(v)) for v in values]
    elif vr in NUMBER_VRS:
        element["Value"] = [_number(v) for v in values]
    else:
        element["Value"] = [str(v) for v in values]
    return element


def person_name(text: str) -> dict[str, str]:
    """``ABC^DEF=...=...`` as its alphabetic, ideographic and phonetic groups (F.2.2)."""
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), text.split("=")))
    return {name: group for name, group in groups.items() if group}


def _number(value: Any) -> int | float | str:
    if isinstance(value, (int, float)):
        return value
    try:
        number = float(value)
    except ValueError:
        return str(value)
    return int(number) if number.is_integer() and "." not in str(value) else number


def json_object(attributes: Iterable[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Attributes keyed by tag, in tag order."""
    return dict(sorted(attributes))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- stored instances ---------------------------------------------------------------------

def bulk_path(base: str, tags: list[str]) -> str:
    return f"{_BASE}{base}/bulkdata/{'/'.join(tags)}"


def with_base(text: str, base_url: str) -> str:
    """Put the request's service URL into cached JSON text."""
    return text.replace(_BASE_ESCAPED, base_url + "/")


def dataset_json(ds: Dataset, instance_path: str, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataset as DICOM JSON; binary values past the threshold become bulk data URIs under
    ``instance_path`` (relative to the service root), read back by the bulkdata resource."""
    out: dict[str, Any] = {}
    for raw in ds.elements():
        tag = raw.tag
        key = f"{tag:08X}"
        if tag.group == 0x0002 or tag.element == 0:  # file meta and group lengths
            continue
        vr = _vr_of(raw)
        path = [*prefix, key]
        length = raw.length if isinstance(raw, RawDataElement) else 0  # items hold parsed ones
        if vr in BINARY_VRS and (length or 0) > BULK_THRESHOLD:
            out[key] = {"vr": vr, "BulkDataURI": bulk_path(instance_path, path)}
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            items = [dataset_json(item, instance_path, (*path, str(i)))
                     for i, item in enumerate(elem.value)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if elem.VR in BINARY_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            out[key] = {"vr": elem.VR, "BulkDataURI": bulk_path(instance_path, path)}
            continue
        out[key] = elem.to_json_dict(None, BULK_THRESHOLD)
    return out


def _vr_of(raw: DataElement | RawDataElement) -> str:
    vr = raw.VR
    if vr is None:  # implicit VR: from the dictionary (private tags: UN)
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            vr = "UN"
    return "OW" if vr == "OB or OW" else "US" if vr in ("US or SS", "US or SS or OW") else vr


def instance_json_text(path: Path, instance_path: str, pixel_vr: str | None) -> str:
    """The instance's metadata as JSON text with the base URL left as a placeholder."""
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True, defer_size=BULK_THRESHOLD + 1)
    out = dataset_json(ds, instance_path)
    if pixel_vr:  # never read: frames and bulk data are served from the recorded offsets
        out["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": bulk_path(instance_path, ["7FE00010"])}
    return dumps(out)


def cache_file(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / sha256[:2] / f"{sha256}.{CACHE_VERSION}.json"


def cached_json_text(cache_dir: Path, sha256: str, build: Callable[[], str]) -> str:
    """The cached metadata, built and written (temp name, then rename) on first use."""
    cached = cache_file(cache_dir, sha256)
    try:
        return cached.read_text(encoding="utf-8")
    except FileNotFoundError:
        pass
    text = build()
    cached.parent.mkdir(parents=True, exist_ok=True)
    temp = cached.with_name(f".{uuid.uuid4().hex}.part")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, cached)
    return text


def is_keyword(name: str) -> bool:
    return name in keyword_dict
