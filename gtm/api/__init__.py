"""The controller's HTTP API: status, Prometheus metrics, authenticated drain actions."""

from gtm.api.app import build_app

__all__ = ["build_app"]
