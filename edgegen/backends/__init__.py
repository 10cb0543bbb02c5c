"""Backends. Each has a build half (`<name>.compile`: compile, unsupported_nodes) and a device
half (`<name>.session`: Session, host_support) that imports only its own runtime package."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import (BackendUnavailableError, BundleError, DamagedBundle, EdgegenError, TargetError, first_line,
                      install_hint)

NAMES = ("onnxruntime", "openvino", "tflite", "fpga")
# the precisions each backend compiles, and the backend_options keys it reads: (what, check), or the values allowed
PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "openvino": ("fp32", "fp16", "bf16", "int8"),
              "tflite": ("fp32", "fp16", "int8"), "fpga": ("int8",)}
# (backend, precision) -> the precision its artifact stores the weights in, where another: OpenVINO's bf16 is a
# session setting over an fp32 IR (the plugin converts the weights when it compiles)
STORED_AS = {("openvino", "bf16"): "fp32"}
_COUNT = ("a positive integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
_FLAG = ("true or false", lambda v: isinstance(v, bool))
_NAMES = ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
_NAME = ("a name", lambda v: isinstance(v, str) and bool(v))
# OpenVINO's device names (case-sensitive): a plugin (GPU and NPU with an index), or a virtual device over a list of
# them: AUTO's may exclude one (AUTO:-CPU), BATCH's names a batch (BATCH:GPU(4))
_OV_PLUGIN = r"(CPU|(GPU|NPU)(\.\d+)?)"
_OV_DEVICE = re.compile(rf"{_OV_PLUGIN}|AUTO(:-?{_OV_PLUGIN}(,-?{_OV_PLUGIN})*)?|(HETERO|MULTI):{_OV_PLUGIN}"
                        rf"(,{_OV_PLUGIN})*|BATCH:{_OV_PLUGIN}(\(\d+\))?")
_OPENVINO_DEVICE = ("an OpenVINO device name, upper case: CPU, GPU, GPU.1, NPU, AUTO, AUTO:-CPU, HETERO:NPU,CPU, "
                    "MULTI:GPU,CPU, BATCH:GPU(4)", lambda v: isinstance(v, str) and _OV_DEVICE.fullmatch(v) is not None)
OPTIONS: dict[str, dict[str, tuple]] = {
    "onnxruntime": {"providers": _NAMES, "required_providers": _NAMES},
    "openvino": {"device": _OPENVINO_DEVICE},
    "tflite": {"runtime": ("ai-edge-litert", "tflite-runtime"), "delegate": ("xnnpack", "edgetpu")},
    "fpga": {**{k: _COUNT for k in ("lanes", "act_kb", "wgt_kb", "act_banks", "par_entries", "lut_tables",
                                    "tap_entries", "prog_layers", "baud")},
             "fmax_mhz": ("a positive number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
             "wgt_single_port": _FLAG, "bitstream": _FLAG, "mode": ("functional", "rtl"), "board": _NAME},
}


def option_problem(backend: str, key: str, value: object) -> str | None:
    """What is wrong with one backend_options entry of a target, or None."""
    allowed = OPTIONS[backend]
    if key not in allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {key!r}{hint} for the {backend} backend; its keys: {', '.join(allowed)}"
    rule = allowed[key]
    if not callable(rule[-1]):  # the values allowed
        return None if value in rule else f"{key!r} is {value!r}; allowed: {', '.join(rule)}"
    what, check = rule
    return None if check(value) else f"{key!r} must be {what}, got {value!r}"


def _module(backend: str, half: str) -> ModuleType:
    if backend not in NAMES:
        raise TargetError(f"unknown backend {backend!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{backend}.{half}")


def session_module(backend: str) -> ModuleType:
    """The device half of a backend."""
    return _module(backend, "session")


def open_session(backend: str, directory: Path, config: dict[str, Any], threads: int, outputs: list[str],
                 host_fallback: bool = False):
    """A backend session on a bundle's artifact that gives the outputs named; BundleError where the runtime
    cannot load it, DamagedBundle where it gives other outputs (a manifest edited to another backend)."""
    module = session_module(backend)
    try:
        session = module.Session(directory, config, threads, host_fallback=host_fallback)
    except (EdgegenError, MemoryError):
        raise
    except OSError as exc:
        if exc.filename is None or Path(exc.filename).resolve().is_relative_to(Path(directory).resolve()):
            raise _not_loading(backend, directory, config, exc) from None
        raise BackendUnavailableError(f"{directory}: the {backend} runtime cannot use {exc.filename} "
                                      f"({exc.strerror}), which is this host's, not the bundle's: make it "
                                      "accessible (edgegen's caches: point EDGEGEN_CACHE at a writable "
                                      "directory)") from None
    except Exception as exc:  # the runtime's own load error: a damaged artifact, or one this version cannot read
        raise _not_loading(backend, directory, config, exc) from None
    missing = [name for name in outputs if name not in session.output_names]
    if missing:
        raise DamagedBundle(f"{directory}: its {backend} artifact {config.get('entry', '')!r} gives the outputs "
                            f"{session.output_names}, not {missing[0]!r} that manifest.json names (a damaged or "
                            "edited manifest: its backend, session or outputs do not match the artifact). Rebuild "
                            "the bundle or copy it again.")
    return session


def _not_loading(backend: str, directory: Path, config: dict[str, Any], exc: Exception) -> BundleError:
    """The runtime's own load error: a damaged artifact, or one this version cannot read."""
    return BundleError(f"{directory}: its {backend} artifact {config.get('entry', '')!r} does not load "
                       f"({first_line(exc)}): a damaged artifact, or one the {backend} version here cannot read; "
                       "rebuild the bundle, or install the versions it was built with (manifest.json: tools)")


def int8_lowerings(target) -> tuple[str, ...]:
    """The exact rewrites the target's backend takes before int8 quantization (a backend whose targets differ
    in the ops they run chooses them per target)."""
    compiler = compiler_module(target.backend)
    return compiler.int8_lowerings(target) if hasattr(compiler, "int8_lowerings") else compiler.INT8_LOWERINGS


def compiler_module(backend: str) -> ModuleType:
    """The build half of a backend."""
    return _module(backend, "compile")


def hardware_absent(why: str) -> BackendUnavailableError:
    """The error of a bundle whose device is not here, with the way to run it on this CPU instead."""
    absent = f"cannot run this bundle here: it {why}"
    return BackendUnavailableError(f"{absent}; to run it on this host's CPU instead (to try it, not to measure the "
                                   "device), open it with host_fallback=True (--host-fallback on the command line)",
                                   absent)


def require(package: str, purpose: str, extra: str) -> ModuleType:
    """Import a backend's runtime package, or say clearly how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        if importlib.util.find_spec(package) is not None:  # there, but it does not load (a memory limit, a library)
            raise BackendUnavailableError(f"{purpose} needs the {package} package, which is installed but fails to "
                                          f"load here ({first_line(exc)}); under a memory limit (ulimit -v, a "
                                          "device's ceiling) its libraries may not fit: raise the limit") from None
        raise BackendUnavailableError(f"{purpose} needs the {package} package, which is not installed here; "
                                      f"install it with {install_hint(package, extra)}") from None
