"""Device half of the OpenVINO backend: imports numpy and openvino only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError
from .. import hardware_absent, require

# OpenVINO's inference precision for each edgegen precision; always set explicitly, never left to
# the plugin's default (bf16 on CPUs with AVX-512-BF16 or AMX). int8 layers come from the QDQ graph;
# what stays float in an int8 model runs in f32.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


def _ov():
    return require("openvino", "running an OpenVINO artifact", "openvino")


def host_support(options: dict[str, Any]) -> tuple[bool, str]:
    """Whether this host has OpenVINO and the device the target names."""
    try:
        ov = _ov()
    except BackendUnavailableError as exc:
        return False, str(exc)
    device = options.get("device", "CPU")
    core = ov.Core()
    devices = core.available_devices
    virtual, _, listed = device.partition(":") if ":" in device or device == "AUTO" else ("", "", device)
    names = [re.sub(r"\(\d+\)$", "", name) for name in listed.split(",") if name]  # BATCH:GPU(4) runs on GPU
    excluded = {name[1:] for name in names if name.startswith("-")}  # AUTO:-CPU: any device but the CPU
    wanted = [name for name in names if not name.startswith("-")]
    present = [name for name in wanted if any(d == name or d.split(".")[0] == name for d in devices)]
    usable = present if wanted else [d for d in devices if d.split(".")[0] not in excluded] if virtual == "AUTO" else []
    if (virtual == "AUTO" and usable) or (wanted and present == wanted):
        checked = device if not virtual else "CPU" if any(u.split(".")[0] == "CPU" for u in usable) else None
        if options.get("precision") == "bf16" and checked and \
                "BF16" not in core.get_property(checked, "OPTIMIZATION_CAPABILITIES"):
            return False, f"needs bf16 support on {checked} (AVX-512-BF16 or AMX); this {checked} has none"
        return True, f"openvino {ov.__version__} {device}"
    return False, f"needs the OpenVINO {device} device; this host has {', '.join(devices) or 'none'}"


class Session:
    """Runs an OpenVINO IR on the target's device with an explicit inference precision.

    host_fallback: when the device is absent, compile for CPU instead (build-host verification).
    """

    def __init__(self, bundle_dir: Path, session: dict[str, Any], threads: int, host_fallback: bool = False):
        ov = _ov()
        ok, why = host_support(session)
        if not ok and not host_fallback:
            raise hardware_absent(why)
        device = session.get("device", "CPU") if ok else "CPU"
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[session["precision"]]}
        if device == "CPU":
            config.update({"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1})
        core = ov.Core()
        # the IR read once, its weights into memory: mapped (the default), a model.bin changed in place under an
        # open session changed its pixels, one cut short was a SIGBUS; later compiles read no file again
        core.set_property({"ENABLE_MMAP": False})
        model = core.read_model(str(Path(bundle_dir) / session["entry"]))
        # a model whose only dynamic dimension is the batch runs each batch size (up to STATIC_BATCHES of them)
        # through a static compile for it, compiled on its first call: the plugin runs the zoo's glyphtiny int8
        # in 176 us at batch 1 instead of 246 dynamic, 1061 us at batch 8 instead of 1389; other shapes through
        # the dynamic model
        self._per_sample = _per_sample_shapes(model)
        self._compile = lambda kind: core.compile_model(
            model if kind == "any" else _with_batch(model.clone(), self._per_sample, kind), device, config)
        self._primary: int | str = 1 if self._per_sample is not None else "any"
        self._ready: dict[int | str, tuple[Any, Any]] = {}
        self._ready_for(self._primary)
        self.device = device
        self.runtime = f"openvino {ov.__version__.split('-')[0]}"
        # the plugin gives an output that absorbed a fused node that node's tensor name too
        self.output_names = [_name(o, session.get("outputs", ())) for o in self._compiled.outputs]
        self._tensor = ov.Tensor
        self._ports = {name: (index, port.get_element_type().to_dtype())
                       for index, port in enumerate(self._compiled.inputs) for name in port.get_names()}
        self._input_names = [port.get_any_name() for port in self._compiled.inputs]

    @property
    def _compiled(self):
        """The compiled model the session was opened with (batch 1's where it has one)."""
        return self._ready_for(self._primary)[0]

    def _ready_for(self, kind: int | str) -> tuple[Any, Any]:
        """The compiled model for a batch size (or "any": the dynamic one) and its infer request, compiled now
        if it is not yet."""
        if kind not in self._ready:
            try:
                compiled = self._compile(kind)
            except Exception:  # a model OpenVINO cannot reshape to this batch runs it on the dynamic one
                if kind == "any":
                    raise
                self._ready[kind] = self._ready_for("any")
                return self._ready[kind]
            self._ready[kind] = (compiled, compiled.create_infer_request())
        return self._ready[kind]

    def _kind(self, arrays) -> int | str:
        """The compiled model a batch runs on: its batch size's static one where the model has them and
        STATIC_BATCHES are not yet taken, else the dynamic one."""
        sizes = {len(a) if np.ndim(a) else None for a in arrays}
        size = sizes.pop() if len(sizes) == 1 else None
        if self._per_sample is None or not size:
            return "any"
        if size in self._ready or sum(isinstance(k, int) for k in self._ready) < STATIC_BATCHES:
            return size
        return "any"

    def execution_report(self) -> dict[str, dict[str, int]]:
        """Compute layers of the compiled model by the precision the plugin actually runs them in; the
        float ones also by their float type (`float_types`: a CPU without fp16 arithmetic runs an f16
        hint in bf16 or f32)."""
        report: dict[str, dict[str, int]] = {"int8": {}, "float": {}, "float_types": {}}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            kind = info["layerType"].astype(str)
            layer = None if kind in _PLUMBING else _LAYER_NAMES.get(kind, kind)
            if layer:
                precision = info["runtimePrecision"].astype(str)
                kind = "int8" if precision in ("i8", "u8") else "float"
                if kind == "float":  # a kernel names the type it computes in (f16 weights into an f32 kernel
                    # report f16: a Deconvolution on a CPU without fp16 arithmetic, `brgconv_avx512_f32`)
                    precision = _KERNEL_TYPES.get(info["primitiveType"].astype(str).rsplit("_", 1)[-1], precision)
                report[kind][layer] = report[kind].get(layer, 0) + 1
                if kind == "float":
                    report["float_types"][precision] = report["float_types"].get(precision, 0) + 1
        return report

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch of inputs. A failed inference (a shape the network cannot run) leaves
        the compiled model failing later, valid shapes too (OpenVINO 2026.4's CPU plugin, a new infer request
        included), so the model is compiled again from the IR before the error goes on."""
        bound = {self._ports[name]: array for name, array in feeds.items() if name in self._ports}
        if len({index for index, _ in bound}) != len(self._input_names):
            raise ValueError(f"the OpenVINO model takes inputs {self._input_names}; got {sorted(feeds)}")
        kind = self._kind(bound.values())
        request = self._ready_for(kind)[1]
        # inputs bound in place (infer is synchronous; the list keeps them alive till it returns): no copy in,
        # one copy out
        arrays = [(index, np.ascontiguousarray(array, dtype)) for (index, dtype), array in bound.items()]
        try:
            for index, array in arrays:
                request.set_input_tensor(index, self._tensor(array, shared_memory=True))
            request.infer()
        except Exception:
            del self._ready[kind]
            self._ready_for(kind)
            raise
        return {name: np.array(request.get_output_tensor(i).data, copy=True)
                for i, name in enumerate(self.output_names)}


# OpenVINO CPU plugin layer types that do arithmetic, by the ONNX op they come from
_LAYER_NAMES = {"Convolution": "Conv", "Deconvolution": "ConvTranspose", "FullyConnected": "Gemm",
                "MatMul": "MatMul", "MVN": "InstanceNormalization", "Eltwise": "Eltwise",
                "Concatenation": "Concat", "Interpolate": "Resize", "Pooling": "Pool"}


# the float type a CPU plugin kernel computes in, by the end of its name (`jit_avx512_bf16`, `brgconv_avx512_f32`)
_KERNEL_TYPES = {"f32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}


# CPU plugin layers that move, reshape, convert or (de)quantize values, or lay them out for a kernel: not
# reported; every other layer is, by the ONNX op it comes from where that is known, else by its own type
_PLUMBING = {"Input", "Parameter", "Output", "Result", "Const", "Reorder", "Reshape", "Transpose", "Squeeze",
             "Unsqueeze", "Gather", "Split", "StridedSlice", "Slice", "Broadcast", "Tile", "Convert", "FakeQuantize",
             "Pad", "DepthToSpace", "SpaceToDepth", "ShapeOf"}


STATIC_BATCHES = 8  # batch sizes compiled static per session (the micro-batcher's default max batch)


def _per_sample_shapes(model) -> dict[str, list[int]] | None:
    """Each input's shape without the batch where the batch (axis 0 of every input) is the model's only
    dynamic dimension, else None."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or len(shape) == 0 or not shape[0].is_dynamic or \
                any(d.is_dynamic for d in list(shape)[1:]):
            return None
        shapes[port.get_any_name()] = [d.get_length() for d in list(shape)[1:]]
    return shapes


def _with_batch(model, per_sample: dict[str, list[int]], batch: int):
    """The model reshaped to a static batch."""
    model.reshape({name: [batch, *dims] for name, dims in per_sample.items()})
    return model


def _name(port, model_outputs) -> str:
    """The model's name for an output port: the one among its names that the ONNX graph's outputs
    have (recorded at compile), else any."""
    names = port.get_names()
    return next((n for n in model_outputs if n in names), None) or port.get_any_name()
