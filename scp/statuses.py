"""DIMSE status codes the node sends, named after PS3.4 B.2.3 and PS3.7 C.4."""

SUCCESS = 0x0000
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4: the SOP Instance is already registered
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: Refused, out of resources
DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3: Error, data set does not match SOP Class
CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3: Error, cannot understand
