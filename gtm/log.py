"""Named loggers, one per component (``gtm.agent``, ``gtm.controller``, ``gtm.provider.<id>``)."""

from __future__ import annotations

import logging
import sys


def get_logger(component: str) -> logging.Logger:
    """Return the logger ``gtm.<component>``."""
    return logging.getLogger(f"gtm.{component}")


def setup_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Configure the root ``gtm`` logger to write to stderr.

    Args:
        level: a logging level name (``DEBUG``, ``INFO``, ``WARNING``...).
        json_lines: reserved; plain text lines are written either way for now.
    """
    root = logging.getLogger("gtm")
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
        root.addHandler(handler)
    root.propagate = False
