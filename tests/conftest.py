"""Hypothesis profiles for the property tests.

``make test`` (and CI) use ``repeatable``: a derandomized search, so a clean clone sees exactly
the examples a developer saw, and a submission cannot fail on a random draw. ``make soak``
uses ``soak``: a fresh random search, scaled up by ``GTM_HYPOTHESIS_SCALE`` (see
``factories.examples``), to hunt new counter-examples; a failure prints the blob that
reproduces it.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, database=None, print_blob=True)
settings.register_profile("soak", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("GTM_HYPOTHESIS_PROFILE", "repeatable"))
