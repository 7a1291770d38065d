"""The node: configuration, storage, the one ingest path, and the command line."""
