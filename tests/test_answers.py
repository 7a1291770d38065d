"""C-FIND answers encoded directly are byte for byte what pydicom makes of the same answer."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from scp.answers import answer_bytes, answer_dataset, answer_layout


def _request(charset: str | None = None) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "IMAGE"
    ds.PatientName = "M*"
    ds.StudyDate = "20210101-"
    ds.ImageType = ""
    ds.Rows = None
    ds.InstanceNumber = None
    ds.NumberOfStudyRelatedInstances = None
    ds.PatientComments = ""  # not in the catalogue: returned empty
    ds.ReferencedStudySequence = Sequence()
    ds.InstanceAvailability = ""
    ds.add_new(0x00091010, "LO", None)  # a private element comes back empty too
    return ds


VALUES = {"SOPInstanceUID": "1.2.3.45", "PatientName": "MILLER^JOHN", "StudyDate": "20210115",
          "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "Rows": 512, "InstanceNumber": 7,
          "NumberOfStudyRelatedInstances": 250}


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("charset,name", [
    (None, "MILLER^JOHN"),
    (None, "MÜLLER^JÜRGEN"),  # no charset asked: answered in UTF-8
    ("ISO_IR 100", "MÜLLER^JÜRGEN"),  # answered in the query's Latin-1
    ("ISO_IR 100", "Ωμέγα^Α"),  # Latin-1 cannot carry it: UTF-8
    ("ISO_IR 192", "山田^太郎"),
])
def test_direct_encoding_equals_pydicom(implicit, charset, name):
    layout = answer_layout(_request(charset), "SOPInstanceUID", "IMAGE", "PACSNODE")
    values = dict(VALUES, PatientName=name)
    ds = answer_dataset(layout, values)
    direct = answer_bytes(layout, values, implicit)
    assert direct == encode(ds, implicit, True)
    assert ds.QueryRetrieveLevel == "IMAGE" and ds.RetrieveAETitle == "PACSNODE"
    assert ds.InstanceAvailability == "ONLINE"
    assert str(ds.PatientName) == name


def test_answers_hold_exactly_the_requested_keys():
    layout = answer_layout(_request(), "SOPInstanceUID", "IMAGE", "PACSNODE")
    ds = answer_dataset(layout, {"SOPInstanceUID": "1.2.3", "StudyDescription": "not asked"})
    assert "StudyDescription" not in ds
    assert not ds.PatientComments and ds.Rows is None and ds.ReferencedStudySequence == []
    assert "SpecificCharacterSet" not in ds  # plain ASCII needs none


def test_iso2022_queries_are_answered_in_utf8():
    """Code extensions (ISO 2022) switch codecs mid-value; answers use UTF-8 instead."""
    layout = answer_layout(_request(["", "ISO 2022 IR 87"]), "SOPInstanceUID", "IMAGE", "PACSNODE")
    values = dict(VALUES, PatientName="やまだ^たろう")
    ds = answer_dataset(layout, values)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert answer_bytes(layout, values, False) == encode(ds, False, True)
