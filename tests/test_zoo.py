"""The shipped zoo models: real, trained, product-sized, documented."""

import json

import numpy as np
import pytest

from edgegen import zoo
from edgegen.build import build
from edgegen.graph import Graph
from edgegen.inputs import sample_feeds
from edgegen.metrics import psnr
from edgegen.runtime import Generator
from edgegen.source import SourceSession


def depthwise_convs(graph: Graph) -> int:
    shapes = graph.concrete_shapes()
    count = 0
    for node in graph.model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and group == shapes[node.input[1]][0]:
            count += 1
    return count


@pytest.mark.parametrize("name", ["glyphgen", "glyphtiny", "upscale2x"])
def test_zoo_model_is_shipped_small_and_documented(name):
    assert name in zoo.names()
    path = zoo.ZOO_DIR / f"{name}.onnx"
    assert path.stat().st_size < 4 * 1024 * 1024
    card = (zoo.ZOO_DIR / f"{name}.md").read_text()
    for topic in ("train", "MACs", "loss"):
        assert topic.lower() in card.lower()
    stats = json.loads((zoo.ZOO_DIR / f"{name}.train.json").read_text())
    assert stats["train_time_s"] > 0


def ancestors(graph: Graph, output: str) -> set[str]:
    """Names of the nodes that `output` is computed from."""
    producer = {name: node for node in graph.model.graph.node for name in node.output}
    seen, todo = set(), [output]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            todo.extend(node.input)
    return seen


def test_glyphgen_does_its_work_in_dense_convs_at_full_resolution():
    # int8 kernels speed dense convs up far more than depthwise ones; the 32x32 preview stops before
    # the 64x64 stage, so that stage must hold most of the work for the preview to be cheap
    graph = Graph.load("zoo:glyphgen")
    assert depthwise_convs(graph) == 0
    costs = {c.name: c.macs for c in graph.node_costs()}
    total = sum(costs.values())
    shapes = graph.concrete_shapes()
    full_res = sum(costs[n.name] for n in graph.model.graph.node if shapes.get(n.output[0], [])[-2:] == [64, 64])
    preview = sum(costs[name] for name in ancestors(graph, "preview"))
    assert full_res / total >= 0.7 and preview / total <= 0.3, (full_res / total, preview / total)


def test_glyphgen_is_a_class_conditional_generator_with_a_latent_only_trunk():
    graph = Graph.load("zoo:glyphgen")
    assert {s.name: s.role for s in graph.inputs} == {"latent": "latent", "label": "label"}
    assert graph.input("label").num_classes == 10
    assert {s.name: s.shape for s in graph.outputs} == {"image": [None, 3, 64, 64], "preview": [None, 3, 32, 32]}
    costs = graph.node_costs()
    total = sum(c.macs for c in costs)
    assert 100e6 <= total <= 400e6
    deps = graph.input_dependencies()
    nodes = {n.name: n for n in graph.model.graph.node}
    trunk = sum(c.macs for c in costs if deps[nodes[c.name].output[0]] == {"latent"})
    # the label joins at 8x8; the trunk is worth the runtime's feature cache (edgegen.split.MIN_TRUNK_SHARE)
    assert trunk / total >= 0.05


def test_glyphgen_preview_agrees_with_the_full_image():
    graph = Graph.load("zoo:glyphgen")
    out = SourceSession(graph.source).run(sample_feeds(graph.inputs, list(range(16))))
    downscaled = out["image"].reshape(16, 3, 32, 2, 32, 2).mean(axis=(3, 5))
    assert psnr(downscaled, out["preview"], 2.0) > 28


def test_glyphgen_images_depend_on_label_and_seed(tmp_path):
    build("zoo:glyphgen", "x86-onnxruntime", tmp_path / "b")
    gen = Generator.open(tmp_path / "b")
    a, b, c = gen.generate(seed=1, label=3), gen.generate(seed=1, label=8), gen.generate(seed=2, label=3)
    def changed(x, y):  # share of pixels that differ clearly (the glyph moves, the background may not)
        return (np.abs(x.astype(int) - y).max(axis=2) > 20).mean()

    assert changed(a, b) > 0.015 and changed(a, c) > 0.015


def test_upscale2x_is_fully_convolutional_x2():
    graph = Graph.load("zoo:upscale2x", input_shapes={"image": [1, 3, 128, 128]})
    (inp,), (out,) = graph.inputs, graph.outputs
    assert inp.role == "image" and inp.shape[2:] == [None, None]
    assert out.default_shape == [1, 3, 256, 256]
    out2 = SourceSession(graph.source).run({"image": np.random.default_rng(0).random((2, 3, 40, 24), np.float32)})
    assert out2[out.name].shape == (2, 3, 80, 48)
    ops = {n.op_type for n in graph.model.graph.node}
    assert "DepthToSpace" in ops and depthwise_convs(graph) == 0  # ESPCN-style: plain convs, pixel shuffle


@pytest.mark.parametrize("target", ["x86-onnxruntime", "x86-openvino"])
def test_zoo_models_build_at_fp32_fidelity(tmp_path, target):
    for name in zoo.names():
        result = build(f"zoo:{name}", target, tmp_path / name)
        assert result.fidelity["psnr_db"] >= 60
