"""Convolutions read only by an InstanceNormalization are centred and equalized before int8, keeping the function."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.build import build
from edgegen.graph import Graph
from edgegen.metrics import psnr
from edgegen.passes.activations import capture
from edgegen.passes.calibration import load_calibration
from edgegen.passes.norm_equalize import equalize_before_instance_norms
from edgegen.passes.quantize import Quantizer
from edgegen.report import render_build_report

C = 8
DEAD, FAINT = 6, 7  # channels of the first convolution: all-zero weights; weights so small that var << epsilon


def _model(extra_reader: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    gains = np.array([0.5, 1, 2, 5, 10, 25, 0, 1e-4], np.float32)  # very unequal channel ranges, one dead, one faint
    w1 = rng.standard_normal((C, 3, 3, 3)).astype(np.float32) * gains[:, None, None, None]
    b1 = np.array([0, 5, -5, 20, -30, 3, 0, 0.5], np.float32)  # and offsets far from zero
    wt = rng.standard_normal((C, 4, 4, 4)).astype(np.float32) * 0.3  # ConvTranspose: (in, out, kh, kw)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(rng.uniform(0.5, 2, C).astype(np.float32), "g1"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "be1"),
             numpy_helper.from_array(wt, "wt"),
             numpy_helper.from_array(np.ones(4, np.float32), "g2"), numpy_helper.from_array(np.zeros(4, np.float32), "be2"),
             numpy_helper.from_array(rng.standard_normal((3, 4, 1, 1)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("InstanceNormalization", ["c1", "g1", "be1"], ["n1"], epsilon=1e-5),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("ConvTranspose", ["r1", "wt"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1], name="up"),
             helper.make_node("InstanceNormalization", ["c2", "g2", "be2"], ["n2"], epsilon=1e-5),
             helper.make_node("Relu", ["n2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["pre"], name="conv3"),
             helper.make_node("Tanh", ["pre"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 32, 32])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["c1"], ["side"]))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", C, 16, 16]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Graph:
    path = tmp_path_factory.mktemp("eq") / "norms.onnx"
    onnx.save(_model(), str(path))
    return Graph.load(path)


@pytest.fixture(scope="module")
def calibration(source):
    return load_calibration(source.inputs, None, 16)


@pytest.fixture(scope="module")
def equalized(source, calibration):
    return equalize_before_instance_norms(source, calibration)


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["out"], feeds)[0]


def test_both_pairs_found_and_the_function_kept(source, calibration, equalized):
    graph, rows = equalized
    assert [(r["node"], r["channels"]) for r in rows] == [("conv1", C), ("up", 4)]
    feeds = {"image": np.random.default_rng(9).uniform(-1, 1, (4, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_allclose(_run(graph.model, feeds), _run(source.model, feeds), atol=2e-4)


def test_channels_are_centred_and_equalized(equalized, calibration):
    graph, _ = equalized
    seen = {}
    capture(graph.model, ["c1"], calibration, None, lambda start, t: seen.setdefault(start, t["c1"]))
    c1 = np.concatenate(list(seen.values()))
    low, high = c1.min(axis=(0, 2, 3)), c1.max(axis=(0, 2, 3))
    half = (high - low) / 2
    live = [c for c in range(C) if c not in (DEAD, FAINT)]
    np.testing.assert_allclose((high + low)[live] / 2, 0, atol=1e-3 * half[live].max())
    assert half[live].max() / half[live].min() < 1.01  # were 50x apart
    assert np.all(c1[:, DEAD] == 0)  # a dead channel is not scaled (there is nothing to scale)
    assert half[FAINT] < 0.05 * np.median(half[live])  # var << epsilon: scaling it would change the normalization


def test_int8_gains_over_the_unequalized_graph(source, calibration, equalized):
    feeds = {"image": np.random.default_rng(11).uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32)}
    reference = _run(source.model, feeds)
    before = psnr(reference, _run(Quantizer(source, calibration).emit(), feeds), 2.0)
    after = psnr(reference, _run(Quantizer(equalized[0], calibration).emit(), feeds), 2.0)
    assert after > before + 1  # 29.2 -> 30.9 dB when written


def test_a_convolution_with_another_reader_is_left_alone(tmp_path):
    path = tmp_path / "shared.onnx"
    onnx.save(_model(extra_reader=True), str(path))
    graph = Graph.load(path)
    _, rows = equalize_before_instance_norms(graph, load_calibration(graph.inputs, None, 4))
    assert [r["node"] for r in rows] == ["up"]


def test_int8_build_reports_the_equalization(tmp_path):
    path = tmp_path / "norms.onnx"
    onnx.save(_model(), str(path))
    result = build(path, "x86-onnxruntime", tmp_path / "b", precision="int8", calibration_count=8)
    equalized = result.manifest["passes"]["equalized"]
    assert [row["node"] for row in equalized["layers"]] == ["conv1", "up"]
    assert equalized["fp32"]["psnr_db"] > 60
    assert "centred and equalized before InstanceNormalization: 2 convolution(s)" in \
        render_build_report(result.manifest, tmp_path / "b")
