"""C-ECHO and C-STORE SCP handlers (PS3.4 A and B)."""

from __future__ import annotations

import logging
import mmap

from pydicom.dataset import Dataset

from node.errors import DuplicateInstance, IngestError, InvalidDataset, StorageFull
from node.ingest import Ingestor, MismatchedDataset
from scp import statuses

log = logging.getLogger(__name__)


def handle_echo(event) -> int:  # noqa: ANN001 - pynetdicom Event
    """Verification (PS3.4 A.4): answered once the association is accepted."""
    return statuses.SUCCESS


def handle_store(event, ingestor: Ingestor) -> int | Dataset:  # noqa: ANN001
    """Store the dataset as received; Success only once it is durable and indexed."""
    request = event.request
    calling_ae = event.assoc.requestor.ae_title
    received = request.DataSet
    # A large dataset spilled to disk comes as a read-only map of its temp file (scp.fastpath).
    dataset = received.buffer() if hasattr(received, "buffer") else received.getvalue()
    try:
        ingestor.ingest_received(
            dataset,
            event.context.transfer_syntax,
            request.AffectedSOPClassUID,
            request.AffectedSOPInstanceUID,
            calling_ae,
        )
    except StorageFull as exc:
        return _failure(statuses.OUT_OF_RESOURCES, exc, calling_ae)
    except DuplicateInstance as exc:
        return _failure(statuses.DUPLICATE_SOP_INSTANCE, exc, calling_ae)
    except MismatchedDataset as exc:
        return _failure(statuses.DATASET_MISMATCH, exc, calling_ae)
    except InvalidDataset as exc:
        return _failure(statuses.CANNOT_UNDERSTAND, exc, calling_ae)
    except IngestError as exc:  # the catalogue refused the row; nothing was kept
        return _failure(statuses.OUT_OF_RESOURCES, exc, calling_ae)
    finally:
        if isinstance(dataset, mmap.mmap):
            dataset.close()
    return statuses.SUCCESS


def _failure(status: int, exc: Exception, calling_ae: str) -> Dataset:
    log.warning("C-STORE from %s refused with 0x%04X: %s", calling_ae, status, exc)
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = str(exc)[:64]
    return rsp
