"""User-facing errors. Every message says what is wrong, where, and what to do."""


class EdgegenError(Exception):
    """Base class of every failure the user can fix; the CLI prints it and exits 2."""


class ModelError(EdgegenError):
    """The model file cannot be read or is not a valid ONNX generator."""


class UnsupportedOpError(EdgegenError):
    """A node's operator cannot run on the chosen target."""


class TargetError(EdgegenError):
    """A target name is unknown or a target file is invalid."""


class BuildError(EdgegenError):
    """A build step failed (compile, verification, output directory)."""


class BundleError(EdgegenError):
    """A bundle is missing, incomplete or has been tampered with."""


class RequestError(EdgegenError):
    """A generation request or an input array does not fit the model."""


class BackendUnavailableError(EdgegenError):
    """The runtime package or device a backend needs is not present on this host."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line reports
    of a dependency's own errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
