"""Harness only the test suite uses (``from tests.support.x import y``); what benchmarks, drills
and the demo also need lives in ``gtm.testing``."""
