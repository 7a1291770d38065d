"""DIMSE service handlers: plain functions bound to pynetdicom events, thin over node/ and db/."""
