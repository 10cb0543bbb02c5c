"""Device half of the ONNX Runtime backend: imports numpy and onnxruntime only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BackendUnavailableError
from .. import hardware_absent, require



def _ort():
    return require("onnxruntime", "running an ONNX Runtime artifact", "ort")


def host_support(options: dict[str, Any]) -> tuple[bool, str]:
    """Whether this host has ONNX Runtime and one of the execution providers the target requires."""
    try:
        available = _ort().get_available_providers()
    except BackendUnavailableError as exc:
        return False, str(exc)
    required = options.get("required_providers") or options.get("providers") or ["CPUExecutionProvider"]
    if any(p in available for p in required):
        return True, "onnxruntime " + _ort().__version__
    return False, f"needs one of {', '.join(required)}; this onnxruntime has {', '.join(available)}"


# ONNX Runtime's fused integer kernels, by the ONNX op they execute (other QLinear* ops: the op after the prefix)
_INT8_KERNELS = {"QLinearConv": "Conv", "ConvInteger": "Conv", "QLinearMatMul": "MatMul", "MatMulInteger": "MatMul",
                 "QGemm": "Gemm", "MatMulIntegerToFloat": "MatMul", "DynamicQuantizeMatMul": "MatMul",
                 "NhwcMaxPool": "MaxPool"}
# nodes that move, reshape, convert or (de)quantize values (or lay them out for a kernel): not layers to report;
# every other node is reported, in float unless it is an integer kernel
_PLUMBING = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Reshape", "Transpose", "Squeeze",
             "Unsqueeze", "Flatten", "Identity", "Shape", "Gather", "Slice", "Split", "Expand", "Tile", "Cast",
             "Constant", "ConstantOfShape", "Pad", "DepthToSpace", "SpaceToDepth", "ReorderInput", "ReorderOutput",
             "MemcpyFromHost", "MemcpyToHost", "Range"}


class Session:
    """Runs an ONNX artifact with the providers its target names.

    host_fallback: when the target's providers are absent, run on CPUExecutionProvider instead
    (used by the build host to verify an artifact built for another device).
    """

    def __init__(self, bundle_dir: Path, session: dict[str, Any], threads: int, host_fallback: bool = False):
        ort = _ort()
        ok, why = host_support(session)
        if not ok and not host_fallback:
            raise hardware_absent(why)
        available = ort.get_available_providers()
        providers = [p for p in session.get("providers", ["CPUExecutionProvider"]) if p in available]
        providers = [self._with_options(p, session) for p in providers or ["CPUExecutionProvider"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 4  # fatal only: a failed run raises with the same text, and a request
        # the runtime answers with a RequestError (an image size the network cannot take) logs nothing
        self._path = str(Path(bundle_dir) / session["entry"])
        self._session = ort.InferenceSession(self._path, options, providers=providers)
        self.providers = self._session.get_providers()
        self.runtime = f"onnxruntime {ort.__version__}"
        self.output_names = [o.name for o in self._session.get_outputs()]

    @staticmethod
    def _with_options(provider: str, session: dict[str, Any]):
        if provider == "TensorrtExecutionProvider":
            cache = os.path.join(os.path.expanduser("~"), ".cache", "edgegen", "tensorrt")
            return (provider, {"trt_fp16_enable": session.get("precision") == "fp16",
                               "trt_engine_cache_enable": True, "trt_engine_cache_path": cache})
        return provider

    def execution_report(self) -> dict[str, dict[str, int]]:
        """Compute nodes of the graph ONNX Runtime actually executes (after its QDQ fusions), int8 vs float; the
        float ones also by the type they compute in (`float_types`: the CPU provider has no fp16 convolution, so
        it casts an fp16 model's weights to f32 and computes there)."""
        report: dict[str, dict[str, int]] = {"int8": {}, "float": {}, "float_types": {}}
        for op_type, computes_in in self._optimized_ops():
            if op_type in _PLUMBING:
                continue
            if op_type in _INT8_KERNELS or op_type.startswith("QLinear"):
                kind, layer = "int8", _INT8_KERNELS.get(op_type, op_type.removeprefix("QLinear"))
            else:
                kind, layer = "float", op_type
                report["float_types"][computes_in] = report["float_types"].get(computes_in, 0) + 1
            report[kind][layer] = report[kind].get(layer, 0) + 1
        return report

    def _optimized_ops(self) -> list[tuple[str, str]]:
        """(op type, the float type of its first input: "f16", "f32" or "other") of every node ONNX Runtime
        runs, the types followed from the graph's inputs and constants through Casts."""
        import tempfile

        import onnx  # build-host only: execution_report is a build-time introspection

        ort = _ort()
        with tempfile.TemporaryDirectory(prefix="edgegen-ort-") as tmp:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
            options.log_severity_level = 3
            ort.InferenceSession(self._path, options, providers=self.providers)
            graph = onnx.load(options.optimized_model_filepath).graph
        types = {v.name: v.type.tensor_type.elem_type for v in graph.input}
        types.update({t.name: t.data_type for t in graph.initializer})
        names = {onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.FLOAT: "f32"}
        ops = []
        for node in graph.node:
            first = types.get(node.input[0]) if node.input else None
            to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
            types.update({out: to if to is not None else first for out in node.output})
            ops.append((node.op_type, names.get(first, "other")))
        return ops

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch of inputs."""
        return dict(zip(self.output_names, self._session.run(self.output_names, feeds)))
