"""DIMSE status codes the node sends, named after PS3.4 B.2.3 and PS3.7 C.4."""

SUCCESS = 0x0000
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4: the SOP Instance is already registered
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, out of resources
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: Error, data set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, cannot understand
NOT_AUTHORISED = 0x0124  # PS3.7 C.5: Refused, not authorised
IDENTIFIER_DOES_NOT_MATCH = 0xA900  # PS3.4 C.4.1.1.4: Identifier does not match SOP Class
UNABLE_TO_PROCESS = 0xC000  # PS3.4 C.4.1.1.4: Unable to process
CANCEL = 0xFE00  # PS3.4 C.4.1.1.4: matching terminated due to Cancel request
PENDING = 0xFF00  # PS3.4 C.4.1.1.4: matches are continuing
PENDING_UNSUPPORTED_KEYS = 0xFF01  # ... and one or more optional keys were not supported
