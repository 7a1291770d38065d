"""Catalogue look-ups for serving images: one instance with its pixel layout, the images of a
series or study in viewing order, and each series' representative images.

These are not DICOM matching (that is ``db.query``'s alone): they fetch known entities by
UID. Callers open the connection in the thread that asks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from peewee import JOIN, fn

from db.models import Instance, Series, Study

# Deflated Explicit VR Little Endian, Explicit VR Big Endian
_OFFSETS_NOT_RECORDED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")


@dataclass(frozen=True)
class InstancePixels:
    """One stored instance: where its file and frames are, and how to interpret its pixels."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    instance_number: int | None
    path: str
    transfer_syntax: str
    sha256: str
    size: int
    pixel_offset: int | None
    pixel_length: int | None
    encapsulated: bool
    frame_fragments: tuple[tuple[tuple[int, int], ...], ...]
    rows: int | None
    columns: int | None
    number_of_frames: int
    samples_per_pixel: int
    photometric_interpretation: str | None
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int
    rescale_slope: float | None
    rescale_intercept: float | None
    window_center: tuple[float, ...]
    window_width: tuple[float, ...]
    pixel_spacing: tuple[float, ...]

    @property
    def has_pixels(self) -> bool:
        """Pixel Data was found at ingest (offsets are not recorded for deflated and big
        endian files, whose pixels are then decoded)."""
        recorded = self.pixel_offset is not None or self.transfer_syntax in _OFFSETS_NOT_RECORDED
        return bool(self.rows and self.columns and self.bits_allocated and recorded)


@dataclass(frozen=True)
class SeriesImages:
    """A series' representative instances: the first and the middle one in viewing order."""

    first: str
    middle: str


def instance_pixels(sop_instance_uid: str) -> InstancePixels | None:
    row = (Instance.select(Instance, Series.series_uid, Study.study_uid)
           .join(Series).join(Study)
           .where(Instance.sop_instance_uid == sop_instance_uid)
           .objects().first())
    if row is None:
        return None
    fragments = json.loads(row.frame_fragments) if row.frame_fragments else []
    return InstancePixels(
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        instance_number=row.instance_number,
        path=row.path,
        transfer_syntax=row.transfer_syntax,
        sha256=row.sha256,
        size=row.size,
        pixel_offset=row.pixel_offset,
        pixel_length=row.pixel_length,
        encapsulated=bool(row.encapsulated),
        frame_fragments=tuple(tuple((int(o), int(n)) for o, n in frame) for frame in fragments),
        rows=row.rows,
        columns=row.columns,
        number_of_frames=max(row.number_of_frames or 1, 1),
        samples_per_pixel=row.samples_per_pixel or 1,
        photometric_interpretation=row.photometric_interpretation,
        bits_allocated=row.bits_allocated,
        bits_stored=row.bits_stored,
        pixel_representation=row.pixel_representation or 0,
        rescale_slope=row.rescale_slope,
        rescale_intercept=row.rescale_intercept,
        window_center=_numbers(row.window_center),
        window_width=_numbers(row.window_width),
        pixel_spacing=_numbers(row.pixel_spacing),
    )


def study_exists(study_uid: str) -> bool:
    return Study.select(Study.id).where(Study.study_uid == study_uid).exists()


def series_in_study(study_uid: str, series_uid: str) -> bool:
    return (Series.select(Series.id).join(Study)
            .where((Series.series_uid == series_uid) & (Study.study_uid == study_uid)).exists())


def _viewing_order() -> list:
    """InstanceNumber, then slice position, then arrival: how a viewer stacks the images."""
    return [Instance.instance_number.asc(nulls="LAST"), Instance.slice_location.asc(nulls="LAST"),
            Instance.id]


def series_images(series_uid: str) -> list[tuple[str, int]]:
    """(SOP Instance UID, number of frames) of a series in viewing order."""
    query = (Instance.select(Instance.sop_instance_uid, Instance.number_of_frames)
             .join(Series).where(Series.series_uid == series_uid).order_by(*_viewing_order()))
    return [(uid, max(frames or 1, 1)) for uid, frames in query.tuples().iterator()]


def study_images(study_uid: str) -> list[tuple[str, int]]:
    """(SOP Instance UID, number of frames) of a study, series by series, in viewing order."""
    query = (Instance.select(Instance.sop_instance_uid, Instance.number_of_frames)
             .join(Series).join(Study).where(Study.study_uid == study_uid)
             .order_by(Series.series_number.asc(nulls="LAST"), Series.id, *_viewing_order()))
    return [(uid, max(frames or 1, 1)) for uid, frames in query.tuples().iterator()]


def representative_images(study_uid: str) -> dict[str, SeriesImages]:
    """Series UID -> its first and middle instance, in one query over the study's instances
    (a window function numbers each series' images in viewing order)."""
    position = fn.ROW_NUMBER().over(partition_by=[Instance.series], order_by=_viewing_order())
    numbered = (Instance.select(Instance.series, Instance.sop_instance_uid, position.alias("pos"))
                .join(Series).join(Study).where(Study.study_uid == study_uid)
                .alias("numbered"))
    query = (Series.select(Series.series_uid, numbered.c.sop_instance_uid, numbered.c.pos,
                           Series.num_instances)
             .join(numbered, JOIN.INNER, on=(numbered.c.series_id == Series.id))
             .where((numbered.c.pos == 1) | (numbered.c.pos == (Series.num_instances + 1) / 2)))
    first: dict[str, str] = {}
    middle: dict[str, str] = {}
    for series_uid, sop_uid, pos, count in query.tuples().iterator():
        if pos == 1:
            first[series_uid] = sop_uid
        if pos == (count + 1) // 2:
            middle[series_uid] = sop_uid
    return {uid: SeriesImages(first[uid], middle.get(uid, first[uid])) for uid in first}


def _numbers(value: str | None) -> tuple[float, ...]:
    """A backslash list of decimal strings as floats; unparseable items are left out."""
    if not value:
        return ()
    numbers = []
    for item in value.split("\\"):
        try:
            numbers.append(float(item))
        except ValueError:
            continue
    return tuple(numbers)
