"""User-facing errors. Every message says what is wrong, where, and what to do."""

import re

# a line that only says where a dependency raised: "Exception from src/inference/src/cpp/infer_request.cpp:224:"
_LOCATION = re.compile(r"(Exception from )?\S+:\d+:?")


def install_hint(package: str, extra: str) -> str:
    """How to install a package edgegen uses: by itself, or through edgegen's extra in its checkout (edgegen
    is not on PyPI)."""
    return f"`pip install {package}` (or `pip install -e '.[{extra}]'` in the edgegen checkout)"


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


class DamagedBundle(BundleError):
    """A bundle that is there but does not hold together: a file off its sha256 or missing, a malformed
    manifest, reference or asset index. `edgegen verify` and `emulate` report it as a failed check (exit 3)."""


class RequestError(EdgegenError):
    """A generation request or an input array does not fit the model."""


class StaticShapeError(RequestError):
    """An input of another shape than a static-shape artifact (TFLite) was built for. `name`, `given` and `built`
    (batch axis first, as the bundle computes on it) let the runtime restate it in the model file's form."""

    def __init__(self, message: str, name: str = "", given: list[int] | None = None, built: list[int] | None = None):
        super().__init__(message)
        self.name, self.given, self.built = name, list(given or []), list(built or [])

    def __reduce__(self):
        return type(self), (str(self), self.name, self.given, self.built)


class OutputPathError(EdgegenError):
    """A path edgegen was asked to write to cannot hold a file (a directory on it is a file, or its file
    system creates none)."""


class BackendUnavailableError(EdgegenError):
    """The runtime package or device a backend needs is not present on this host. `absent`: the device or runtime
    missing, without the advice to run the bundle on this host's CPU instead (which `verify` does not take)."""

    def __init__(self, message: str, absent: str | None = None):
        super().__init__(message)
        self.absent = absent


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message with content (not only a source location, as OpenVINO's
    messages start), else its first line, else its type's name: one-line reports of a dependency's errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    content = [line for line in lines if not _LOCATION.fullmatch(line)]
    return (content or lines or [type(exc).__name__])[0]
