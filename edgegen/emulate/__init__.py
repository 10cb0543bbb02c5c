"""Emulation: run a compiled model as its target device would, on the build host."""

from ..errors import EdgegenError

SCHEMA = 1  # the version of the report's layout (README: "Emulated devices", --json)


class EmulationError(EdgegenError):
    """An emulated run failed: the bundle broke a device constraint or gave other images."""


class EmulatorUnavailableError(EmulationError):
    """This host cannot emulate the target (the message says why and what would make it able to)."""
