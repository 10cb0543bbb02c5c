"""Wrappers around external programs (vendor compilers, synthesis tools): find them, run them
with a log, parse their reports, and fail clearly when they are absent."""

from ..errors import EdgegenError


class ToolNotFoundError(EdgegenError):
    """An external program a build step needs is not installed (the message says how to get it)."""


class ToolFailedError(EdgegenError):
    """An external program ran and failed (the message quotes its log)."""
