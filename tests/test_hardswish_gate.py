"""HardSwish between a Dequantize and a Quantize becomes a quantized Add (the gate) and Mul, within one
output step, and ONNX Runtime runs both on the integers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.passes.hardswish_gate import hardswish_as_integer_gate

from int8_builds import onnxruntime_int8, save_graph

OUT_SCALE = 0.04


def _model(dtype=np.uint8, zero: int = 128, out_scale: float = OUT_SCALE, readers: int = 1) -> onnx.ModelProto:
    """x -> Quantize -> Dequantize -> HardSwish -> Quantize (out_scale) -> Dequantize."""
    out_zero = np.iinfo(dtype).min + 20  # HardSwish reaches down to -0.375
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(zero, dtype), "z"),
             numpy_helper.from_array(np.array(out_scale, np.float32), "s_out"),
             numpy_helper.from_array(np.array(out_zero, dtype), "z_out")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             helper.make_node("HardSwish", ["xf"], ["y"], name="act"),
             helper.make_node("QuantizeLinear", ["y", "s_out", "z_out"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s_out", "z_out"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 8, 16, 16])]
    if readers > 1:
        nodes.append(helper.make_node("Sigmoid", ["y"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [1, 8, 16, 16]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _session(model: onnx.ModelProto, optimized_path=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if optimized_path:  # saved after ONNX Runtime's QDQ fusions, before its machine-specific layouts
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("zero", [128, 60])
def test_gate_form_is_within_one_output_step(tmp_path, zero):
    model = _model(zero=zero)
    rewritten = hardswish_as_integer_gate(model)
    onnx.checker.check_model(rewritten)
    assert "HardSwish" not in [n.op_type for n in rewritten.graph.node]
    x = np.random.default_rng(0).uniform(-6.3, 6.3, (1, 8, 16, 16)).astype(np.float32)
    x[0, 0, 0, :6] = [-3, 3, 0, 6, -6, 1.5]  # the gate's ends and its middle
    want = _session(model).run(None, {"x": x})[0]
    got = _session(rewritten, tmp_path / "optimized.onnx").run(None, {"x": x})[0]
    assert np.abs(got - want).max() <= OUT_SCALE * 1.001
    assert np.mean(got != want) < 0.1
    exact = x * np.clip(x + 3, 0, 6) / 6
    assert np.abs(got - exact).max() <= 1.5 * OUT_SCALE + 0.05 / 2  # rounding of x, the gate and the output
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "QLinearAdd" in fused and "QLinearMul" in fused


@pytest.mark.parametrize("change", [{"readers": 2},
                                    {"dtype": np.int8, "zero": 0}])  # ONNX Runtime fuses uint8 grids only
def test_hardswish_not_between_conversions_is_left_alone(change):
    model = _model(**change)
    rewritten = hardswish_as_integer_gate(model)
    assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]


def test_onnxruntime_int8_artifact_runs_hardswish_on_integers(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 4, 3, 3)).astype(np.float32) * 0.4, "w"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((3, 16, 3, 3)).astype(np.float32) * 0.2, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["h"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["out"], pads=[1, 1, 1, 1])]
    path = save_graph(tmp_path / "hs.onnx", nodes, inits, 4)
    result, ops = onnxruntime_int8(path, tmp_path / "b", graph_options={"input_shapes": {"x": [1, 4, 16, 16]}})
    assert "HardSwish" not in ops and ops.count("Mul") == 1
    qdq_graph = result.manifest["passes"]["quantize"]["all_int8"]["psnr_db"]  # before the backend's rewrites
    assert result.fidelity["psnr_db"] > min(qdq_graph - 1.5, 40)
