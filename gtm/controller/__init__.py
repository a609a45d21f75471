"""The impure loop around the engine: lease → snapshot → plan → publish → audit."""

from gtm.controller.loop import Controller, ControllerSettings

__all__ = ["Controller", "ControllerSettings"]
