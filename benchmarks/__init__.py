"""Benchmark scripts that print figures; never part of `make test`."""
