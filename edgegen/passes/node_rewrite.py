"""Replace single nodes of a Graph with exact equivalents (the skeleton the int8 lowerings share)."""

from __future__ import annotations

from typing import Any, Callable

import onnx

from ..graph import Graph
from .channel_edit import drop_unused_initializers

# (node, model to add initializers to, concrete shapes, initializers) -> (new nodes, report row), or None
Rewrite = Callable[[onnx.NodeProto, onnx.ModelProto, dict, dict], "tuple[list[onnx.NodeProto], dict] | None"]


def rewrite_nodes(graph: Graph, rewrite: Rewrite, note: str) -> tuple[Graph, list[dict[str, Any]]]:
    """Apply `rewrite` to every node; the graph unchanged (and no rows) when it replaced none."""
    shapes = graph.concrete_shapes()
    model = onnx.ModelProto.FromString(graph.model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    rows: list[dict[str, Any]] = []
    for node in model.graph.node:
        replaced = rewrite(node, model, shapes, inits)
        if replaced is None:
            nodes.append(node)
            continue
        nodes.extend(replaced[0])
        rows.append(replaced[1])
    if not rows:
        return graph, []
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    drop_unused_initializers(model)
    return graph.with_model(model, [f"{len(rows)} {note}"]), rows
