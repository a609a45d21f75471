"""Benchmarks (``make bench``): figures written as JSON, never asserted as timed unit tests."""
