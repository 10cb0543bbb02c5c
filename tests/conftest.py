"""Shared fixtures: small generator models built with onnx.helper, and built bundles."""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy in the pruning tests: no thread fights on 2 shared cores

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.build import build

DATA = Path(__file__).parent / "data"


def conditional_generator(batch: int | str = "N", opset: int = 17, extras: bool = True) -> onnx.ModelProto:
    """latent [N,16] + label [N] -> image [N,3,8,8] in [-1,1]: a latent-only trunk, then the label joins.

    extras adds what exporters emit: an Identity, an inference Dropout, a constant subgraph and a
    declared output shape that is wrong.
    """
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [
        init("fc_w", 16, 8 * 4 * 4), init("fc_b", 8 * 4 * 4),
        numpy_helper.from_array(np.array([-1, 8, 4, 4], dtype=np.int64), "shape_trunk"),
        init("up_w", 8, 8, 4, 4), init("up_b", 8),
        init("emb", 10, 4 * 8 * 8),
        numpy_helper.from_array(np.array([-1, 4, 8, 8], dtype=np.int64), "shape_label"),
        init("head_w", 3, 12, 3, 3), init("head_b", 3),
    ]
    nodes = [
        helper.make_node("Gemm", ["latent", "fc_w", "fc_b"], ["fc"]),
        helper.make_node("Reshape", ["fc", "shape_trunk"], ["trunk0"]),
        helper.make_node("ConvTranspose", ["trunk0", "up_w", "up_b"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["up"], ["trunk"]),
        helper.make_node("Gather", ["emb", "label"], ["lab"]),
        helper.make_node("Reshape", ["lab", "shape_label"], ["lab4"]),
        helper.make_node("Concat", ["trunk", "lab4"], ["joined"], axis=1),
        helper.make_node("Conv", ["joined", "head_w", "head_b"], ["head"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["head"], ["image"]),
    ]
    out_shape = [batch, 3, 8, 8]
    if extras:
        nodes[3:4] = [helper.make_node("Relu", ["up"], ["relu"]), helper.make_node("Identity", ["relu"], ["drop_in"]),
                      helper.make_node("Dropout", ["drop_in"], ["trunk"])]
        nodes.insert(0, helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.float32(2.0))))
        nodes.insert(1, helper.make_node("Mul", ["two", "two"], ["four"]))
        nodes.insert(2, helper.make_node("Div", ["four", "four"], ["one"]))
        nodes[-1:] = [helper.make_node("Tanh", ["head"], ["tanh"]), helper.make_node("Mul", ["tanh", "one"], ["image"])]
        out_shape = [batch, 3, 16, 16]  # wrong on purpose: the computed shape is 8x8
    graph = helper.make_graph(
        nodes, "cgen",
        [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [batch, 16]),
         helper.make_tensor_value_info("label", TensorProto.INT64, [batch])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="session")
def cgen_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "cgen.onnx"
    onnx.save(conditional_generator(), str(path))
    return path


@pytest.fixture(scope="session")
def ort_bundle(tmp_path_factory, cgen_path) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "cgen-ort"
    build(cgen_path, "x86-onnxruntime", out)
    return out


@pytest.fixture(scope="session")
def ov_bundle(tmp_path_factory, cgen_path) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "cgen-ov"
    build(cgen_path, "x86-openvino", out)
    return out


def verilator_or_skip() -> list[str]:
    """The Verilator command line; without Verilator the test skips, except in CI (which installs it)."""
    from edgegen.backends.fpga.rtlsim import verilator_command
    from edgegen.toolchains import ToolNotFoundError

    try:
        return verilator_command()
    except ToolNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
