"""BatchNormalization after a Linear layer (directly or through a reshape to a map) folds into the Gemm
(a MatMul by a constant matrix, `Linear(bias=False)` as TorchScript exports it, included)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.fold_norm import fold_norm_into_gemm
from edgegen.graph import Graph

C, H, W, K = 4, 3, 3, 5


def _model(trans_b: bool = True, bias: bool = True, beta: float = 1.0, reshape: list[int] | None = (-1, C, H, W),
           stats_as_input: bool = False, extra_reader: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    cols = C * H * W if reshape is not None else C
    weight = rng.standard_normal((cols, K) if trans_b else (K, cols)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(rng.uniform(0.5, 2, C).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "beta_"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "mean")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])]
    if stats_as_input:
        inputs.append(helper.make_tensor_value_info("var", TensorProto.FLOAT, [C]))
    else:
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 2, C).astype(np.float32), "var"))
    gemm_inputs = ["x", "w"] + (["c"] if bias else [])
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cols).astype(np.float32), "c"))
    nodes = [helper.make_node("Gemm", gemm_inputs, ["y"], transB=int(trans_b), beta=beta)]
    norm_input = "y"
    if reshape is not None:
        inits.append(numpy_helper.from_array(np.array(reshape, np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["y", "shape"], ["m"]))
        norm_input = "m"
    nodes.append(helper.make_node("BatchNormalization", [norm_input, "gamma", "beta_", "mean", "var"], ["bn"],
                                  epsilon=1e-3))
    nodes.append(helper.make_node("Relu", ["bn"], ["out"]))
    out_shape = [2, C] if reshape is None else [2, *reshape[1:]]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["y"], ["other"]))
        outputs.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, [2, cols]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _matmul_model(batch: int | str = 2, reshape: tuple[int, ...] | None = None, rank: int = 2) -> onnx.ModelProto:
    """`Linear(bias=False) [-> view] -> BatchNorm` as TorchScript exports it: MatMul by a constant
    [K, cols] matrix; the input [batch, K] (or [batch, C, K] for rank 3)."""
    model = _model(trans_b=False, bias=False, reshape=reshape)
    gemm = model.graph.node[0]
    gemm.op_type = "MatMul"
    del gemm.attribute[:]
    x = model.graph.input[0]
    x.CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *([C] if rank == 3 else []), K]))
    if rank == 3:
        del model.graph.output[0].type.tensor_type.shape.dim[:]
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("trans_b,bias,beta,reshape", [
    (True, True, 1.0, (-1, C, H, W)), (False, True, 0.5, (0, C, H, W)), (True, False, 1.0, (-1, C, H, W)),
    (True, True, 0.0, (-1, C, H * W)), (False, True, 1.0, None), (True, True, 1.0, (2, C, H, W))])
def test_folds_exactly(trans_b, bias, beta, reshape):
    model = _model(trans_b, bias, beta, reshape)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)}
    expected = _run(model, feeds)
    folded, count = fold_norm_into_gemm(onnx.ModelProto.FromString(model.SerializeToString()))
    assert count == 1
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    onnx.checker.check_model(folded)
    np.testing.assert_allclose(_run(folded, feeds)[0], expected[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch,reshape", [(2, None), ("batch", None), (2, (-1, C, H, W)), ("batch", (0, C, H, W))])
def test_folds_a_matmul_by_a_constant_matrix_into_a_gemm(batch, reshape):
    """MatMul (constant weight) -> [Reshape ->] BatchNorm, at a static and a dynamic batch: one Gemm
    whose bias is the BatchNorm's shift, the same numbers."""
    model = _matmul_model(batch, reshape)
    x = np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)
    folded, count = fold_norm_into_gemm(onnx.ModelProto.FromString(model.SerializeToString()))
    assert count == 1
    assert [n.op_type for n in folded.graph.node] == ["Gemm", *(["Reshape"] if reshape else []), "Relu"]
    assert len(folded.graph.node[0].input) == 3
    onnx.checker.check_model(folded)
    np.testing.assert_allclose(_run(folded, {"x": x})[0], _run(model, {"x": x})[0], atol=1e-5, rtol=1e-5)


def test_leaves_a_matmul_of_a_3d_input():
    """A MatMul over a [N, L, K] input maps the last axis; a BatchNorm normalizes axis 1: nothing folds."""
    model = _matmul_model(rank=3)
    folded, count = fold_norm_into_gemm(onnx.ModelProto.FromString(model.SerializeToString()))
    assert count == 0 and [n.op_type for n in folded.graph.node] == ["MatMul", "BatchNormalization", "Relu"]


@pytest.mark.parametrize("case", [{"stats_as_input": True}, {"extra_reader": True},
                                  {"reshape": (-1, C, 2 * H * W)}])
def test_leaves_what_it_cannot_fold(case):
    """Statistics that are not constants, a Gemm output read elsewhere and a reshape that merges batch
    entries (a channel then spans two rows of the Gemm) stay as they are."""
    model = _model(**case)
    folded, count = fold_norm_into_gemm(onnx.ModelProto.FromString(model.SerializeToString()))
    assert count == 0
    assert [n.op_type for n in folded.graph.node] == [n.op_type for n in model.graph.node]


def test_import_folds_a_conditional_dcgan_start(tmp_path):
    """Graph.load runs the fold, names it in its notes, and keeps the numbers."""
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    graph = Graph.load(path)
    assert "BatchNormalization" not in {n.op_type for n in graph.model.graph.node}
    assert any("BatchNormalization" in note for note in graph.notes)
    feeds = {"x": np.random.default_rng(2).standard_normal((2, K)).astype(np.float32)}
    np.testing.assert_allclose(_run(graph.model, feeds)[0], _run(_model(), feeds)[0], atol=1e-5, rtol=1e-5)


def test_import_folds_when_the_weights_are_listed_as_inputs_too(tmp_path):
    """torch.onnx.export(keep_initializers_as_inputs=True): the weights become weights only, then fold;
    the loaded graph's inputs are the model's real ones."""
    model = _model()
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    graph = Graph.load(path)
    assert [spec.name for spec in graph.inputs] == ["x"]
    assert "BatchNormalization" not in {n.op_type for n in graph.model.graph.node}
    assert any("listed as graph inputs" in note for note in graph.notes)
    feeds = {"x": np.random.default_rng(3).standard_normal((2, K)).astype(np.float32)}
    np.testing.assert_allclose(_run(graph.model, feeds)[0], _run(model, feeds)[0], atol=1e-5, rtol=1e-5)
