"""Split points for the feature cache: a trunk that depends on a subset of the inputs (the
latent-only trunk before a label joins, an encoder before a style input) and a head for the rest.

The cut is the set of trunk tensors the head reads; the runtime caches them keyed by the trunk's
inputs and reruns only the head for variations."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from .errors import BuildError
from .graph import Graph

log = logging.getLogger(__name__)
MIN_TRUNK_SHARE = 0.05  # a trunk with less of the MACs is not worth a cache


@dataclass
class Split:
    """Where a graph is cut: trunk inputs, the tensors crossing the cut, and the MAC shares."""

    trunk_inputs: list[str]
    cut: list[str]
    trunk_macs: int
    head_macs: int
    chosen_by: str

    @property
    def head_share(self) -> float:
        total = self.trunk_macs + self.head_macs
        return self.head_macs / total if total else 1.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "head_share": round(self.head_share, 4)}


def find_split(graph: Graph) -> tuple[Split | None, str]:
    """The automatic split with the largest trunk (by MACs), or None and why there is none."""
    if len(graph.inputs) < 2:
        return None, f"the model has one input ({graph.inputs[0].name if graph.inputs else 'none'}): every " \
                     "request changes it, so no part of the model can be cached apart"
    deps, computed_from = value_dependencies(graph), graph.input_dependencies()
    names = [s.name for s in graph.inputs]
    best = None
    for size in range(1, len(names)):
        for subset in combinations(names, size):
            cut = _cut_for(graph, frozenset(subset), deps, computed_from)
            if not cut:
                continue
            split = split_at(graph, cut, "auto")
            if best is None or split.trunk_macs > best.trunk_macs:
                best = split
    if best is None:
        return None, "every input joins in the first layers: nothing depends on only some of them"
    total = best.trunk_macs + best.head_macs
    if not best.trunk_macs:  # only conversions of the inputs (an int8 graph's quantization of the latent)
        return None, (f"the largest trunk (on {', '.join(best.trunk_inputs)}) holds none of the MACs: every layer "
                      "reads every input")
    if best.trunk_macs / total < MIN_TRUNK_SHARE:
        return None, (f"the largest trunk (on {', '.join(best.trunk_inputs)}, cut at {', '.join(best.cut[:3])}) "
                      f"holds {best.trunk_macs / total:.1%} of the MACs, under the "
                      f"{MIN_TRUNK_SHARE:.0%} worth a cache; --split {','.join(best.cut)} makes it anyway")
    return best, ""


def split_at(graph: Graph, tensors: list[str], chosen_by: str = "--split") -> Split:
    """The split whose trunk computes `tensors` (and everything they need); the head is the rest."""
    deps = value_dependencies(graph)
    inputs = {s.name for s in graph.inputs}
    for name in tensors:
        if name not in deps:
            raise BuildError(f"{graph.source}: --split tensor {name!r} {_missing(graph, name, deps)}")
        if name in inputs:
            raise BuildError(f"{graph.source}: --split tensor {name!r} is a graph input; name a tensor computed from it")
    trunk_inputs = frozenset().union(*(deps[t] for t in tensors))
    if trunk_inputs >= inputs:
        raise BuildError(f"{graph.source}: --split tensor(s) {tensors} depend on every input "
                         f"({', '.join(sorted(inputs))}), so nothing can be cached; name tensors computed "
                         "before the last input joins")
    nodes = graph.model.graph.node
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    trunk: set[int] = set()
    stack = [producer[t] for t in tensors]
    while stack:
        i = stack.pop()
        if i not in trunk:
            trunk.add(i)
            stack.extend(producer[x] for x in nodes[i].input if x in producer)
    produced = {out for i in trunk for out in nodes[i].output}
    read_by_head = {x for i, n in enumerate(nodes) if i not in trunk for x in n.input}
    outputs = {s.name for s in graph.outputs}
    crossing = [t for t in _ordered(produced, nodes) if (t in read_by_head or t in outputs) and deps[t]]
    cut = _quantized_by_name(crossing, nodes, producer, outputs)
    inside = [t for t in tensors if t not in cut]
    if inside and chosen_by == "--split":
        log.warning("--split tensor(s) %s are computed inside the trunk that the other tensors named need, and no "
                    "head node reads them: the cut is at %s", ", ".join(inside), ", ".join(cut))
    costs = graph.node_costs()
    trunk_macs = sum(c.macs for i, c in enumerate(costs) if i in trunk and deps[nodes[i].output[0]])
    total = sum(c.macs for c in costs)
    return Split(sorted(trunk_inputs), cut, trunk_macs, total - trunk_macs, chosen_by)


def _quantized_by_name(cut: list[str], nodes, producer: dict[str, int], outputs: set[str]) -> list[str]:
    """In an int8 graph, a dequantized tensor (DequantizeLinear of a QuantizeLinear) by the name of the model's
    tensor it quantizes: the names `inspect --nodes` lists (parts cut there keep it on its int8 grid)."""
    named = []
    for tensor in cut:
        dq = nodes[producer[tensor]]
        q = nodes[producer[dq.input[0]]] if dq.op_type == "DequantizeLinear" and dq.input[0] in producer else None
        if q is None or q.op_type != "QuantizeLinear" or tensor in outputs:
            named.append(tensor)
        elif q.input[0] in producer:
            named.append(q.input[0])
        # else a graph input's quantized copy: the head reads the graph inputs and quantizes it itself
    return list(dict.fromkeys(named))


def _missing(graph: Graph, name: str, tensors: dict[str, frozenset[str]]) -> str:
    """Why a tensor is not in the graph, and what to name instead: a tensor of the model file that the
    import folded away (a Conv's output that a BatchNorm read) is carried on by the first tensor after
    it that remains."""
    nodes = _file_nodes(graph.source)
    if not any(name in n.output for n in nodes):
        return "is not a tensor of the model; `edgegen inspect MODEL --nodes` lists each node's output tensor"
    readers: dict[str, list[str]] = {}
    for node in nodes:
        for x in node.input:
            readers.setdefault(x, []).extend(node.output[:1])
    carried, seen = name, set()
    while carried not in tensors and len(set(readers.get(carried, []))) == 1 and carried not in seen:
        seen.add(carried)
        carried = readers[carried][0]
    instead = f"; the tensor that carries it on is {carried!r}: --split {carried}" if carried in tensors else \
        "; `edgegen inspect MODEL --nodes` lists each node's output tensor"
    return ("was folded away by edgegen's import (e.g. a Conv and the BatchNorm after it became one Conv) or, in an "
            f"int8 build, rewritten by its int8 lowering (an activation moved into a ConvTranspose's phases){instead}")


def _file_nodes(source: Path) -> list[onnx.NodeProto]:
    """The nodes of the model file as it is on disk (no weights loaded), or none if it cannot be read."""
    try:
        return list(onnx.load(str(source), load_external_data=False).graph.node)
    except (OSError, DecodeError):
        return []


def value_dependencies(graph: Graph) -> dict[str, frozenset[str]]:
    """Graph.input_dependencies, but a Shape or Size of a tensor depends on no input's values: shape
    arithmetic (an exporter's expand-to-the-map-size) is recomputed by the head, never cached."""
    deps = dict(graph.input_dependencies())
    for node in graph.model.graph.node:
        if node.op_type in ("Shape", "Size"):
            deps[node.output[0]] = frozenset()
        elif node.output and node.output[0] in deps:
            depends = frozenset().union(*(deps.get(i, frozenset()) for i in node.input if i))
            for out in node.output:
                deps[out] = depends
    return deps


def _cut_for(graph: Graph, subset: frozenset[str], deps: dict[str, frozenset[str]],
             computed_from: dict[str, frozenset[str]]) -> list[str]:
    """Tensors depending only on `subset` that a node depending on other inputs reads (or outputs), and
    that a trunk on `subset` can compute: not from the shape of a tensor of another input (a segmentation
    map resized to the size of a feature map of the latent, as `F.interpolate(seg, size=x.shape[2:])`
    exports with a dynamic batch)."""
    inputs = {s.name for s in graph.inputs}
    cut = []
    for node in graph.model.graph.node:
        node_deps = deps[node.output[0]] if node.output else frozenset()
        if node_deps <= subset:
            continue
        cut += [x for x in node.input if x in deps and deps[x] and deps[x] <= subset and x not in inputs
                and computed_from[x] <= subset]
    cut += [s.name for s in graph.outputs if deps.get(s.name) and deps[s.name] <= subset
            and computed_from[s.name] <= subset]
    return list(dict.fromkeys(cut))


def _ordered(names: set[str], nodes) -> list[str]:
    return [out for n in nodes for out in n.output if out in names]
