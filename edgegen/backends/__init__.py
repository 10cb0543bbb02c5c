"""Backends. Each has a build half (`<name>.compile`: compile, unsupported_nodes) and a device
half (`<name>.session`: Session, host_support) that imports only its own runtime package."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import BackendUnavailableError, TargetError

NAMES = ("onnxruntime", "openvino", "tflite", "fpga")


def _module(backend: str, half: str) -> ModuleType:
    if backend not in NAMES:
        raise TargetError(f"unknown backend {backend!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{backend}.{half}")


def session_module(backend: str) -> ModuleType:
    """The device half of a backend."""
    return _module(backend, "session")


def compiler_module(backend: str) -> ModuleType:
    """The build half of a backend."""
    return _module(backend, "compile")


def require(package: str, purpose: str, extra: str) -> ModuleType:
    """Import a backend's runtime package, or say clearly how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise BackendUnavailableError(f"{purpose} needs the {package} package, which is not installed here; "
                                      f"install it with `pip install {package}` (or `pip install edgegen[{extra}]`)") from None
