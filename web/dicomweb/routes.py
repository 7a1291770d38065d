"""The DICOMweb route table, under ``[dicomweb] root``."""

from __future__ import annotations

from starlette.routing import BaseRoute

from node.config import DicomwebSettings


def routes(settings: DicomwebSettings) -> list[BaseRoute]:
    return []
