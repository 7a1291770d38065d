"""Benchmarks that run the node and Orthanc side by side on the same generated data."""
