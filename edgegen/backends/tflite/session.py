"""Device half of the TFLite backend: imports numpy and one TFLite runtime, ai-edge-litert
(default) or tflite-runtime, nothing else.

The session takes and returns the ONNX model's tensors (NCHW, float) by ONNX name: it moves
4-D tensors to NHWC and back at the boundary and quantizes/dequantizes int8 inputs and outputs
with the grids recorded in the session config.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError, StaticShapeError
from ...inputs import chunks
from .. import hardware_absent
from . import xnnpack

log = logging.getLogger(__name__)

RUNTIMES = {"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}
DEFAULT_RUNTIME = "ai-edge-litert"
RUNTIME_ENV = "EDGEGEN_TFLITE_RUNTIME"  # a device may pick the other runtime for any bundle
EDGETPU_LIBRARY = "libedgetpu.so.1"
EDGETPU_ABSENT = (f"needs a Coral Edge TPU and its runtime library {EDGETPU_LIBRARY} (Coral's apt repository: "
                  "libedgetpu1-std)")


def _load(runtime: str):
    """(interpreter module, version) of a runtime, or raise BackendUnavailableError saying why not."""
    package = RUNTIMES[runtime]
    try:
        module = importlib.import_module(f"{package}.interpreter")
    except ImportError:
        raise BackendUnavailableError(f"the {runtime} package is not installed here; `pip install {runtime}`") from None
    if runtime == "tflite-runtime" and int(np.__version__.split(".")[0]) >= 2:
        raise BackendUnavailableError(f"tflite-runtime was built against NumPy 1.x and cannot run with numpy "
                                      f"{np.__version__}; use it in an environment with numpy<2, or use ai-edge-litert")
    version = getattr(importlib.import_module(package), "__version__", "?")
    return module, version


def _chosen(options: dict[str, Any]) -> str:
    runtime = os.environ.get(RUNTIME_ENV) or options.get("runtime", DEFAULT_RUNTIME)
    if runtime not in RUNTIMES:
        raise BackendUnavailableError(f"unknown TFLite runtime {runtime!r} (from {RUNTIME_ENV} or the target's "
                                      f"backend_options.runtime); use one of {', '.join(RUNTIMES)}")
    return runtime


def host_support(options: dict[str, Any]) -> tuple[bool, str]:
    """Whether this host has the target's TFLite runtime (and, for Edge TPU targets, the Edge TPU)."""
    try:
        runtime = _chosen(options)
        module, version = _load(runtime)
    except BackendUnavailableError as exc:
        return False, str(exc)
    if options.get("delegate") == "edgetpu":
        try:  # the library probed first: a failed load_delegate leaves a Delegate whose __del__ raises
            ctypes.CDLL(EDGETPU_LIBRARY)
            module.load_delegate(EDGETPU_LIBRARY)
        except (ValueError, OSError):
            return False, EDGETPU_ABSENT
    return True, f"{runtime} {version}"


def _first_usable(preferred: str) -> str | None:
    """The first TFLite runtime that loads here, `preferred` tried first; None where none does."""
    for runtime in dict.fromkeys((preferred, *RUNTIMES)):
        try:
            _load(runtime)
        except BackendUnavailableError:
            continue
        return runtime
    return None


class Session:
    """Runs a bundle's .tflite model; host_fallback runs an Edge TPU bundle's CPU model, or uses
    the other TFLite runtime, when the target's is absent (build-host verification)."""

    def __init__(self, bundle_dir: Path, session: dict[str, Any], threads: int, host_fallback: bool = False):
        bundle_dir = Path(bundle_dir)
        ok, why = host_support(session)
        if not ok and not host_fallback:
            if why == EDGETPU_ABSENT:  # another runtime would not bring the Edge TPU either
                raise hardware_absent(why)
            if _first_usable(_chosen(session)) is None:  # no TFLite runtime: neither another nor the fallback helps
                raise BackendUnavailableError(f"cannot run this TFLite bundle here: {why}")
            raise BackendUnavailableError(f"cannot run this TFLite bundle here: {why}. To use another installed "
                                          f"TFLite runtime, set {RUNTIME_ENV}=tflite-runtime or ai-edge-litert, or "
                                          "open it with host_fallback=True (--host-fallback on the command line)",
                                          f"cannot run this TFLite bundle here: {why}")
        runtime = _chosen(session)
        if not ok:
            runtime = self._available(runtime)
        module, version = _load(runtime)
        delegates, entry = [], session["entry"]
        if ok and session.get("delegate") == "edgetpu" and session.get("edgetpu_entry"):
            delegates, entry = [module.load_delegate(EDGETPU_LIBRARY)], session["edgetpu_entry"]
        self.runtime = f"{runtime} {version}" + (" + Edge TPU" if delegates else "")
        self._interpreter = module.Interpreter(model_path=str(bundle_dir / entry), num_threads=threads,
                                               experimental_delegates=delegates or None)
        self._interpreter.allocate_tensors()
        self._inputs = list(zip(session["inputs"], self._interpreter.get_input_details()))
        self._outputs = list(zip(session["outputs"], self._interpreter.get_output_details()))
        self.output_names = [spec["name"] for spec in session["outputs"]]
        self._batch = int(self._inputs[0][1]["shape"][0]) if self._inputs else 1

    @staticmethod
    def _available(preferred: str) -> str:
        runtime = _first_usable(preferred)
        if runtime is None:
            raise BackendUnavailableError("no TFLite runtime is usable here; `pip install ai-edge-litert` "
                                          "(or tflite-runtime with numpy<2)")
        if runtime != preferred:
            log.warning("TFLite runtime %s is not usable here; running with %s", preferred, runtime)
        return runtime

    def delegation(self) -> dict[str, Any]:
        """Which operators the delegate took in this session (see xnnpack.report)."""
        return xnnpack.report(self._interpreter)

    def execution_report(self) -> dict[str, Any]:
        """Operators by the type they compute in (int8 / float), and the delegation report."""
        it = self._interpreter
        dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in it.get_tensor_details()}
        report: dict[str, Any] = {"int8": {}, "float": {}}
        for op in it._get_ops_details():  # the operator list with tensor indices (both runtimes)
            if op["op_name"] == "DELEGATE":
                continue
            kind = "int8" if any(dtypes.get(int(t)) == "int8" for t in op["outputs"]) else "float"
            report[kind][op["op_name"]] = report[kind].get(op["op_name"], 0) + 1
        report["delegation"] = self.delegation()
        return report

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by ONNX name (NCHW float32) for one batch of ONNX-shaped inputs."""
        count = len(next(iter(feeds.values()))) if feeds else 1
        if count == self._batch:
            return self._run_once(feeds)
        # in calls of the batch it was built at (--input-shape N=4), the last one padded and trimmed
        parts = [{name: array[:real] for name, array in self._run_once(chunk).items()}
                 for chunk, real in chunks(feeds, self._batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.output_names}

    def _run_once(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        it = self._interpreter
        for spec, detail in self._inputs:
            array = np.asarray(feeds[spec["name"]])
            if spec["layout"] == "nhwc":
                array = array.transpose(0, 2, 3, 1)
            if tuple(array.shape) != tuple(detail["shape"]):
                name, given = spec["name"], list(feeds[spec["name"]].shape)
                built = _onnx_shape(detail["shape"], spec["layout"])
                raise StaticShapeError(f"input {name!r} has shape {'x'.join(map(str, given))} but this TFLite bundle "
                                       f"was built for {'x'.join(map(str, built))} (TFLite models have static shapes); "
                                       "give it that shape, or build a bundle for this one with --input-shape "
                                       f"{name}={'x'.join(map(str, (1, *given[1:])))}", name, given, built)
            if "quant" in spec:
                array = _quantize(array, spec["quant"])
            it.set_tensor(detail["index"], np.ascontiguousarray(array, dtype=detail["dtype"]))
        it.invoke()
        result = {}
        for spec, detail in self._outputs:
            array = it.get_tensor(detail["index"])
            if "quant" in spec:
                array = _dequantize(array, spec["quant"])
            if spec["layout"] == "nhwc":
                array = array.transpose(0, 3, 1, 2)
            result[spec["name"]] = np.ascontiguousarray(array, dtype=np.float32)
        return result


def _onnx_shape(shape, layout: str) -> list[int]:
    shape = [int(d) for d in shape]
    return [shape[0], shape[3], shape[1], shape[2]] if layout == "nhwc" else shape


def _quantize(array: np.ndarray, grid: dict[str, list]) -> np.ndarray:
    q = np.round(array.astype(np.float32) / np.float32(grid["scale"][0])) + grid["zero_point"][0]
    return np.clip(q, -128, 127).astype(np.int8)


def _dequantize(array: np.ndarray, grid: dict[str, list]) -> np.ndarray:
    return (array.astype(np.float32) - np.float32(grid["zero_point"][0])) * np.float32(grid["scale"][0])
