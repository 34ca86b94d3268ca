"""Benchmarks of the TALAN kernels and the end-to-end overhead (pytest-benchmark files, ``collect``)."""
