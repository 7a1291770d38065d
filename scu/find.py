"""C-FIND SCU (PS3.4 C.4.1): ask a remote archive what it holds.

Used by ``node query`` and by retrieval jobs, which query a remote down to the instances they
then fetch. Results come back as plain {keyword: text} rows, multi-valued ones joined by a
backslash as in an identifier.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.config import Settings
from scu.association import Remote, associate, client_ae, end_association, let_reactor_resume, status_of
from scu.errors import AssociationFailed, RemoteStatusError

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
FIND_MODELS = {"PATIENT": PatientRootQueryRetrieveInformationModelFind,
               "STUDY": StudyRootQueryRetrieveInformationModelFind}
_NUMERIC_VRS = {"US", "UL", "SS", "SL", "FL", "FD"}

# Return keys asked for by default (PS3.4 C.6.1.1 / C.6.2.1 required and common optional keys).
DEFAULT_RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                "NumberOfPatientRelatedStudies"),
    "STUDY": ("StudyInstanceUID", "StudyDate", "StudyTime", "PatientID", "PatientName",
              "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
               "SeriesDescription", "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
              "InstanceNumber"),
}


def find_contexts(roots: Sequence[str] = ("STUDY", "PATIENT")) -> list[PresentationContext]:
    return [build_context(FIND_MODELS[root], [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            for root in roots]


def parse_key(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` from the command line; the keyword must be a DICOM keyword."""
    keyword, sep, value = text.partition("=")
    keyword = keyword.strip()
    if not sep or tag_for_keyword(keyword) is None:
        raise ValueError(f"expected KEYWORD=VALUE with a DICOM keyword, got {text!r}")
    return keyword, value.strip()


def build_identifier(level: str, matchers: Sequence[tuple[str, str]],
                     return_keys: Sequence[str] = ()) -> Dataset:
    """An identifier with the level, the matching keys and empty return keys (C.4.1.1.3)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    given = dict(matchers)
    for keyword in [*given, *(k for k in return_keys if k not in given)]:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword} is not a DICOM keyword")
        vr = dictionary_VR(tag)
        value: Any = given.get(keyword, "")
        if vr == "SQ":
            ds.add_new(tag, vr, [])
            continue
        if vr in _NUMERIC_VRS and value != "":
            value = [int(v) if vr[0] in "US" else float(v) for v in value.split("\\")]
        ds.add_new(tag, vr, value if value != "" else None)
    if "SpecificCharacterSet" not in ds and not all(v.isascii() for v in given.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def row_of(ds: Dataset) -> dict[str, str]:
    """A response identifier as {keyword: text}, without the level and character set."""
    row: dict[str, str] = {}
    for elem in ds:
        if not elem.keyword or elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet") \
                or elem.VR == "SQ":
            continue
        value = elem.value
        if value is None:
            text = ""
        elif isinstance(value, (MultiValue, list, tuple)):
            text = "\\".join(str(v) for v in value)
        elif isinstance(value, bytes):
            text = value.decode("ascii", "replace")
        else:
            text = str(value)
        row[elem.keyword] = text
    return row


def find_on(assoc: Association, root: str, identifier: Dataset) -> Iterator[Dataset]:
    """Pending identifiers until Success; a failure status raises RemoteStatusError."""
    let_reactor_resume(assoc)  # queries run back to back on one association (retrieval plans)
    for status_ds, answer in assoc.send_c_find(identifier, FIND_MODELS[root]):
        status = status_of(status_ds)
        if status is None:
            raise AssociationFailed("the C-FIND got no answer (association lost or timed out)")
        if status in (0xFF00, 0xFF01):
            if answer is None:  # pynetdicom could not decode it
                raise RemoteStatusError(status, "a C-FIND answer could not be decoded")
            yield answer
        elif status == 0x0000:
            return
        elif status == 0xFE00:
            return
        else:
            comment = str(status_ds.get("ErrorComment", "") or "")
            raise RemoteStatusError(status, f"C-FIND failed with status 0x{status:04X}"
                                    + (f": {comment}" if comment else ""))


def root_for(level: str, root: str | None) -> str:
    """Patient Root for PATIENT level queries, Study Root otherwise unless asked."""
    if root:
        return root.upper()
    return "PATIENT" if level == "PATIENT" else "STUDY"


def query_remote(settings: Settings, remote: Remote, level: str,
                 matchers: Sequence[tuple[str, str]], return_keys: Sequence[str] | None = None,
                 root: str | None = None) -> list[dict[str, str]]:
    """One association, one C-FIND; the rows in the order the remote sent them."""
    root = root_for(level, root)
    keys = DEFAULT_RETURN_KEYS[level] if return_keys is None else tuple(return_keys)
    identifier = build_identifier(level, matchers, keys)
    assoc = associate(client_ae(settings), remote, find_contexts([root]))
    try:
        return [row_of(ds) for ds in find_on(assoc, root, identifier)]
    finally:
        end_association(assoc)
