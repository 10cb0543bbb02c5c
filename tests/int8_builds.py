"""An ONNX Runtime int8 build of a test model, and the ops of the artifact it wrote (shared by the rewrite tests)."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgegen.build import build


def onnxruntime_int8(source: Path, out: Path, **options):
    """(the build's result, the op types of its model.onnx), calibrated on 8 spec samples."""
    result = build(source, "x86-onnxruntime", out, precision="int8", calibration_count=8, **options)
    return result, [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
