"""Emulation: run a compiled model as its target device would, on the build host."""

from ..errors import EdgegenError


class EmulationError(EdgegenError):
    """An emulated run failed: the bundle broke a device constraint or gave other images."""


class EmulatorUnavailableError(EmulationError):
    """This host cannot emulate the target (the message says why and what would make it able to)."""
