"""The Redis boundary: the only package that knows the key schema."""

from gtm.store.store import Store, connect

__all__ = ["Store", "connect"]
