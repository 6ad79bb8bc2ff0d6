"""Benchmarks: ``make bench`` (full) and ``make bench-quick`` (the same code at small scale)."""
