"""Channel dependency analysis: which output channels must be pruned together (Torch-Pruning's idea, on ONNX).

Every Conv / ConvTranspose / Gemm / MatMul output starts a *channel space*. Walking the nodes in
order, each tensor gets a `Layout`: the spaces its channel axis (axis 1) is made of, in order.

- channel-transparent ops (activations, pooling, Pad and Resize that leave axis 1 alone,
  Batch/Instance normalization, per-channel constants, depthwise Conv/ConvTranspose) pass the layout
  through and record which initializer axes follow it;
- Add/Mul/... of two tensors ties them: their spaces are merged (same channel indices);
- Concat on axis 1 lays the inputs' spaces side by side, so each input keeps its own offset;
- Gemm/MatMul followed by Reshape to [N, C, H, W] makes a space of C channels of H*W features each;
- a Reshape/Flatten/Squeeze/Unsqueeze that keeps the batch axis and one entry of axis 1 per channel passes
  the layout through (a squeeze-excite gate's [N, C] -> [N, C, 1, 1]). A Reshape's shape may be computed
  (Shape -> Gather -> Unsqueeze -> Concat, as the TorchScript exporter writes `n, c = x.shape[:2]; g.view(n, c,
  1, 1)`) where it holds a batch read from a Shape, a channel count that is a constant of its Concat (re-counted
  as a constant shape's is) or read from the Shape of a tensor whose channels it then shares (it follows the
  pruned count at run time), and constants or spatial dims after;
- a Shape moves no channel: only where its channel count (entry 1) reaches anything but such a Reshape (or the
  Gather / Unsqueeze / Concat steps that lead there) is the tensor it reads excluded;
- a layer reading channels (Conv groups=1, ConvTranspose groups=1, Gemm, MatMul) is a *consumer*:
  its input axis of weights follows the layout (and it is what least squares can refit).

Anything else (graph inputs and outputs, grouped convolutions, DepthToSpace, Slice, a Reshape that regroups
channels, an operand whose channels broadcast along another axis, ops not listed) marks the spaces it
touches as excluded, with the reason. Merged spaces form a *group*: one set of channel indices kept or
removed in every member at once.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

# each output channel computed from the same input channel alone (extra inputs/attributes are not per channel)
CHANNELWISE_OPS = {"Relu", "LeakyRelu", "Tanh", "Sigmoid", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
                   "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
                   "Sin", "Cos", "Identity", "Dropout", "Cast", "ThresholdedRelu", "Floor", "Ceil", "Round", "Sign",
                   "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where"}
LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# per channel where their axes leave the channel (and batch) axis alone: a squeeze-excite's pooling, as the
# dynamo exporter writes AdaptiveAvgPool2d(1) and x.mean((2, 3))
REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare",
              "ReduceLogSumExp", "ReduceProd"}
_NORM_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}


@dataclass
class Space:
    """The output channels of one layer (or of a graph input, or of an op edgegen does not model)."""

    size: int
    producer: str | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """A tensor's channel axis: segments (space id, channels), each a whole space; every channel spans
    `block` consecutive elements (a Gemm output later reshaped to [N, C, H, W] has block H*W)."""

    segments: tuple[tuple[int, int], ...]
    block: int = 1

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segments)


@dataclass(frozen=True)
class ParamAxis:
    """Axis `axis` of the initializer at input `slot` of node `node` follows `layout`."""

    node: int
    slot: int
    axis: int
    layout: Layout


@dataclass(frozen=True)
class ShapeEntry:
    """Entry `index` of the constant shape/sizes vector at input `slot` of node `node` is `layout`'s channel
    count (entry 1 of a Reshape's or Resize's own constant; any entry of a constant piece of a computed shape)."""

    node: int
    slot: int
    layout: Layout
    index: int = 1


@dataclass(frozen=True)
class Dim:
    """An entry of a shape vector computed at run time: axis `axis` of `tensor`'s shape, read by Shape node
    `reader`."""

    tensor: str
    axis: int
    reader: str

    def __str__(self) -> str:
        return f"{self.tensor}.shape[{self.axis}]"


@dataclass(frozen=True)
class Const:
    """An entry of a shape vector that is a constant: entry `index` of the initializer at input `slot` of node
    `node`."""

    value: int
    node: int
    slot: int
    index: int

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Consumer:
    """A weighted layer reading channels: kind is conv, convtranspose, gemm or matmul."""

    node: int
    kind: str
    layout: Layout


@dataclass
class Group:
    """Spaces that share channel indices; pruned as one unless `reasons` says why not."""

    root: int
    spaces: list[int]
    size: int
    producers: list[str]
    consumers: list[int]
    reasons: list[str]


class ChannelGraph:
    """The result of `analyze`: spaces, tensor layouts, and every place a channel index appears."""

    def __init__(self) -> None:
        self.spaces: list[Space] = []
        self.layouts: dict[str, Layout] = {}
        self.params: list[ParamAxis] = []
        self.shape_entries: list[ShapeEntry] = []
        self.depthwise: list[tuple[int, Layout]] = []  # (node, layout): its `group` attribute is the channel count
        self.consumers: list[Consumer] = []
        self._parent: list[int] = []

    def new_space(self, size: int, producer: str | None = None, reason: str | None = None) -> int:
        self.spaces.append(Space(size, producer, [reason] if reason else []))
        self._parent.append(len(self._parent))
        return len(self.spaces) - 1

    def find(self, space: int) -> int:
        while self._parent[space] != space:
            self._parent[space] = self._parent[self._parent[space]]
            space = self._parent[space]
        return space

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self._parent[max(a, b)] = min(a, b)

    def exclude(self, layout: Layout | None, reason: str) -> None:
        for space, _ in layout.segments if layout else ():
            if reason not in self.spaces[space].reasons:
                self.spaces[space].reasons.append(reason)

    def groups(self) -> list[Group]:
        """Every group of merged spaces, in order of first appearance."""
        members: dict[int, list[int]] = defaultdict(list)
        for s in range(len(self.spaces)):
            members[self.find(s)].append(s)
        out = []
        for root, spaces in members.items():
            reasons = list(dict.fromkeys(r for s in spaces for r in self.spaces[s].reasons))
            consumers = [c.node for c in self.consumers if any(self.find(s) == root for s, _ in c.layout.segments)]
            producers = [self.spaces[s].producer for s in spaces if self.spaces[s].producer]
            out.append(Group(root, spaces, self.spaces[root].size, producers, consumers, reasons))
        return out

    def positions(self, layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray | None:
        """Kept element positions along an axis laid out as `layout`; None where nothing is removed."""
        parts, offset, changed = [], 0, False
        for space, n in layout.segments:
            kept = keep.get(self.find(space))
            changed |= kept is not None
            parts.append(offset + (kept if kept is not None else np.arange(n)))
            offset += n
        if not changed:
            return None
        channels = np.concatenate(parts)
        return (channels[:, None] * layout.block + np.arange(layout.block)).ravel()

    def kept_channels(self, layout: Layout, keep: dict[int, np.ndarray]) -> int:
        return sum(len(keep[self.find(s)]) if self.find(s) in keep else n for s, n in layout.segments)


def analyze(model: onnx.ModelProto, shapes: dict[str, list[int | None]]) -> ChannelGraph:
    """Channel spaces, groups and parameter axes of a model whose constants are all initializers.

    shapes: tensor name -> dims (None where unknown); only ranks and channel counts are used.
    """
    return _Walker(model, shapes).run()


class _Walker:
    def __init__(self, model: onnx.ModelProto, shapes: dict[str, list[int | None]]):
        self.graph = model.graph
        self.shapes = shapes
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in model.graph.node:
            for name in node.input:
                self.users[name].append(node)
        self.producers = {name: node for node in model.graph.node for name in node.output}
        self.cg = ChannelGraph()
        self.dims: dict[str, list[Dim | Const]] = {}  # shape vectors computed at run time, entry by entry
        self.arithmetic = {"Shape": self.shape_of, "Gather": self.gathered, "Unsqueeze": self.unsqueezed,
                           "Concat": self.concatenated}
        self.rules = {"Conv": self.conv, "ConvTranspose": self.conv_transpose, "Gemm": self.gemm,
                      "MatMul": self.matmul, "Concat": self.concat, "Reshape": self.reshape, "Pad": self.pad,
                      "Resize": self.resize, "Clip": self.clip, "BatchNormalization": self.norm,
                      "InstanceNormalization": self.norm, "Squeeze": self.squeeze, "Unsqueeze": self.squeeze,
                      "Flatten": self.flatten}

    def run(self) -> ChannelGraph:
        for value in self.graph.input:
            if value.name not in self.consts:
                self.fresh(value.name, f"graph input {value.name!r}")
        for i, node in enumerate(self.graph.node):
            self.visit(i, node)
        for value in self.graph.output:
            self.cg.exclude(self.cg.layouts.get(value.name), f"reaches graph output {value.name!r}")
            self.count_read([value.name], f"graph output {value.name!r}")
        for name in _subgraph_reads(self.graph):
            self.cg.exclude(self.cg.layouts.get(name), f"{name!r} is read inside a subgraph (If/Loop/Scan)")
            self.count_read([name], "a subgraph (If/Loop/Scan)")
        return self.cg

    # helpers -------------------------------------------------------------------------------------------
    def shape(self, name: str) -> list[int | None] | None:
        return list(self.consts[name].shape) if name in self.consts else self.shapes.get(name)

    def fresh(self, name: str, reason: str, producer: str | None = None) -> None:
        """A layout of one excluded space for a tensor whose channels edgegen must not touch."""
        shape = self.shape(name)
        if shape and len(shape) >= 2 and shape[1]:
            space = self.cg.new_space(int(shape[1]), producer, reason)
            self.cg.layouts[name] = Layout(((space, int(shape[1])),))

    def produce(self, node: onnx.NodeProto, channels: int, block: int = 1) -> Layout:
        layout = Layout(((self.cg.new_space(channels, node.name), channels),), block)
        self.cg.layouts[node.output[0]] = layout
        return layout

    def param(self, i: int, node: onnx.NodeProto, slot: int, axis: int, layout: Layout | None) -> None:
        if layout is not None and slot < len(node.input) and node.input[slot]:
            self.cg.params.append(ParamAxis(i, slot, axis, layout))

    def opaque(self, node: onnx.NodeProto, why: str | None = None) -> None:
        """Exclude the channels this node reads and writes (`why`, or: an op edgegen does not model)."""
        reads = why or f"read by {node.op_type} node {node.name!r}, whose channel semantics edgegen does not model"
        for name in node.input:
            if name and name not in self.consts:
                self.cg.exclude(self.cg.layouts.get(name), reads)
        layer = node.name if node.op_type in LAYER_OPS else None
        for name in node.output:
            if name:
                self.fresh(name, why or f"output of {node.op_type} node {node.name!r} (not modelled)", layer)

    def data_layout(self, node: onnx.NodeProto) -> Layout | None:
        return self.cg.layouts.get(node.input[0]) if node.input and node.input[0] not in self.consts else None

    def passthrough(self, node: onnx.NodeProto) -> Layout | None:
        layout = self.data_layout(node)
        if layout is not None:
            self.cg.layouts[node.output[0]] = layout
        return layout

    def constant(self, node: onnx.NodeProto, slot: int) -> np.ndarray | None:
        name = node.input[slot] if slot < len(node.input) else ""
        return self.consts.get(name) if name else None

    def unify(self, node: onnx.NodeProto, layouts: list[Layout]) -> Layout | None:
        """Merge the spaces of tensors combined element by element; exclude them if they are laid out differently."""
        first = layouts[0]
        sizes = [n for _, n in first.segments]
        if all([n for _, n in lay.segments] == sizes and lay.block == first.block for lay in layouts):
            for lay in layouts[1:]:
                for (a, _), (b, _) in zip(first.segments, lay.segments):
                    self.cg.union(a, b)
            return first
        why = f"{node.op_type} node {node.name!r} combines tensors whose channels are concatenated differently"
        for lay in layouts:
            self.cg.exclude(lay, why)
        return None

    # rules ---------------------------------------------------------------------------------------------
    def visit(self, i: int, node: onnx.NodeProto) -> None:
        standard = node.domain in ("", "ai.onnx")
        if standard and self.shape_arithmetic(i, node):
            return
        reshape = standard and node.op_type == "Reshape"  # `reshape` says whether it follows its shape's entries
        self.count_read(node.input[:1] if reshape else node.input, f"{node.op_type} node {node.name!r}")
        if not standard:
            self.opaque(node)
        elif node.op_type in self.rules:
            self.rules[node.op_type](i, node)
        elif node.op_type in CHANNELWISE_OPS:
            self.passthrough(node)
        elif node.op_type in ELEMENTWISE_OPS:
            self.elementwise(i, node)
        elif node.op_type in REDUCE_OPS:
            self.reduce(node)
        elif node.op_type in ("DepthToSpace", "SpaceToDepth"):
            self.opaque(node, f"{node.op_type} node {node.name!r} moves channels into space in blocks of r*r")
        else:
            self.opaque(node)

    def conv(self, i: int, node: onnx.NodeProto) -> None:
        w = self.constant(node, 1)
        if w is None or (len(node.input) > 2 and node.input[2] and self.constant(node, 2) is None):
            return self.opaque(node, f"Conv node {node.name!r} has computed (non-constant) weights")
        group, x = attribute(node, "group", 1), self.data_layout(node)
        if group == 1:
            self.param(i, node, 1, 1, x)
            if x is not None:
                self.cg.consumers.append(Consumer(i, "conv", x))
            out = self.produce(node, w.shape[0])
            self.param(i, node, 1, 0, out)
            self.param(i, node, 2, 0, out)
        elif x is not None and w.shape[1] == 1 and group == w.shape[0] == x.channels:  # depthwise
            self.depthwise_layer(i, node, x)
        else:
            self.opaque(node, f"grouped Conv node {node.name!r} (group={group}) ties channels within groups")

    def conv_transpose(self, i: int, node: onnx.NodeProto) -> None:
        w = self.constant(node, 1)
        if w is None or (len(node.input) > 2 and node.input[2] and self.constant(node, 2) is None):
            return self.opaque(node, f"ConvTranspose node {node.name!r} has computed (non-constant) weights")
        group, x = attribute(node, "group", 1), self.data_layout(node)
        if group == 1:  # weights [Cin, Cout, k, k]
            self.param(i, node, 1, 0, x)
            if x is not None:
                self.cg.consumers.append(Consumer(i, "convtranspose", x))
            out = self.produce(node, w.shape[1])
            self.param(i, node, 1, 1, out)
            self.param(i, node, 2, 0, out)
        elif x is not None and w.shape[1] == 1 and group == w.shape[0] == x.channels:  # depthwise
            self.depthwise_layer(i, node, x)
        else:
            self.opaque(node, f"grouped ConvTranspose node {node.name!r} (group={group}) ties channels within groups")

    def depthwise_layer(self, i: int, node: onnx.NodeProto, x: Layout) -> None:
        self.passthrough(node)
        self.param(i, node, 1, 0, x)
        self.param(i, node, 2, 0, x)
        self.cg.depthwise.append((i, x))

    def gemm(self, i: int, node: onnx.NodeProto) -> None:
        b, c = self.constant(node, 1), self.constant(node, 2)
        has_c = len(node.input) > 2 and bool(node.input[2])
        if b is None or attribute(node, "transA", 0) or (has_c and (c is None or c.ndim > 2 or
                                                                   (c.ndim == 2 and c.shape[0] != 1))):
            return self.opaque(node, f"Gemm node {node.name!r} has transA, computed weights or a per-row bias")
        trans_b = attribute(node, "transB", 0)
        self.linear(i, node, "gemm", k_axis=1 if trans_b else 0, n_axis=0 if trans_b else 1)
        out = self.cg.layouts[node.output[0]]
        if c is not None and c.shape and c.shape[-1] == b.shape[0 if trans_b else 1]:
            self.param(i, node, 2, c.ndim - 1, out)

    def matmul(self, i: int, node: onnx.NodeProto) -> None:
        b, a = self.constant(node, 1), self.shape(node.input[0])
        if b is None or b.ndim != 2 or not a or len(a) != 2 or node.input[0] in self.consts:
            return self.opaque(node, f"MatMul node {node.name!r} is not [N, K] x constant [K, M]")
        self.linear(i, node, "matmul", k_axis=0, n_axis=1)

    def linear(self, i: int, node: onnx.NodeProto, kind: str, k_axis: int, n_axis: int) -> None:
        x = self.data_layout(node)
        self.param(i, node, 1, k_axis, x)
        if x is not None:
            self.cg.consumers.append(Consumer(i, kind, x))
        features = int(self.consts[node.input[1]].shape[n_axis])
        channels, block = self.reshaped_to_channels(node.output[0], features)
        self.param(i, node, 1, n_axis, self.produce(node, channels, block))

    def reshaped_to_channels(self, name: str, features: int) -> tuple[int, int]:
        """(C, H*W) when the features reach a Reshape to [N, C, H, W] through per-feature ops, else (F, 1)."""
        found, todo, seen = set(), [name], set()
        while todo:
            tensor = todo.pop()
            for user in self.users.get(tensor, []):
                per_feature = user.op_type in CHANNELWISE_OPS | ELEMENTWISE_OPS | {"BatchNormalization"} and all(
                    n in self.consts for n in user.input if n and n != tensor)
                if per_feature and user.name not in seen:
                    seen.add(user.name)
                    todo.append(user.output[0])
                elif user.op_type == "Reshape" and user.input[0] == tensor:
                    shape = self.shape_values(user.input[1])
                    if shape is None or len(shape) != 4 or not all(d is not None and d > 0 for d in shape[2:]):
                        continue
                    block = int(shape[2] * shape[3])  # axis 1 may be -1: view(n, -1, H, W) infers it
                    channels = features // block if shape[1] == -1 and features % block == 0 else shape[1]
                    if channels is not None and channels > 0 and channels * block == features:
                        found.add((int(channels), block))
        return found.pop() if len(found) == 1 else (features, 1)

    def shape_values(self, name: str) -> list[int | None] | None:
        """A shape vector's entries where they are constants (None for a computed one, as the batch in
        `view(z.size(0), C, H, W)`): a constant's, or a Concat's of constants and computed vectors of known length."""
        if name in self.consts:
            return [int(d) for d in np.ravel(self.consts[name])]
        node = self.producers.get(name)
        if node is None or node.op_type != "Concat":
            return None
        values: list[int | None] = []
        for piece in node.input:
            length = self.shape(piece)
            if piece in self.consts:
                values += [int(d) for d in np.ravel(self.consts[piece])]
            elif length is not None and len(length) == 1 and length[0] is not None:
                values += [None] * int(length[0])
            else:
                return None
        return values

    def reshape(self, i: int, node: onnx.NodeProto) -> None:
        """Whole channels where the batch axis stays first and axis 1 holds one entry per channel: a latent
        projection's [N, C*H*W] -> [N, C, H, W], a squeeze-excite gate's [N, C] -> [N, C, 1, 1]. The shape's
        entry 1 then follows the channel count: a constant is re-counted; a Shape's entry 1 of another tensor
        ties that tensor's channels to these (see `target_why` for the computed shapes followed)."""
        entries = self.target(i, node)
        why = f"Reshape node {node.name!r} has a computed shape" if entries is None else \
            self.regroup(node, same_axis1=False)
        why = self.target_why(i, node, entries) if why is None else why
        layout = self.reshaped(node, why)
        if layout is None:
            return self.count_read(node.input[1:2], f"Reshape node {node.name!r}")
        channel = entries[1]
        if isinstance(channel, Const):
            self.cg.shape_entries.append(ShapeEntry(channel.node, channel.slot, layout, channel.index))
        elif self.unify(node, [layout, self.cg.layouts[channel.tensor]]) is None:
            self.count_read(node.input[1:2], f"Reshape node {node.name!r}")

    def target(self, i: int, node: onnx.NodeProto) -> list[Dim | Const] | None:
        """The entries of a Reshape's shape: its constant's, or those of a shape computed as `shape_arithmetic`
        follows; None where neither."""
        shape = self.constant(node, 1)
        if shape is None:
            return self.dims.get(node.input[1])
        return [Const(int(d), i, 1, k) for k, d in enumerate(np.ravel(shape))]

    def target_why(self, i: int, node: onnx.NodeProto, entries: list[Dim | Const]) -> str | None:
        """Why a Reshape's shape does not keep the batch axis and follow the channel count; None where it does.
        Followed: entry 0 a batch (-1, 0 or the batch, or a Shape's entry 0 of a tensor with channels), entry 1
        the Reshape's own constant, a constant of the Concat that only it reads, or a Shape's entry 1 of a
        tensor with channels, the other entries constants other than -1 or a Shape's spatial entries."""
        inp, what = self.shape(node.input[0]) or [None], f"Reshape node {node.name!r}"
        shown = "[" + ", ".join(str(e) for e in entries) + "]"
        first, channel = entries[0], entries[1]
        batch = (-1, inp[0]) if attribute(node, "allowzero", 0) else (-1, 0, inp[0])
        if not (self.read_axis(first, 0) or isinstance(first, Const) and first.value in batch):
            return f"{what} does not keep the batch axis (shape {shown})"
        if any(isinstance(e, Const) and e.value == -1 for e in entries[2:]):  # -1 at axis 1 infers the count
            return f"{what} infers a non-batch axis (shape {shown}), which edgegen does not re-count"
        if any(isinstance(e, Dim) and not self.read_axis(e, k) for k, e in enumerate(entries)):
            return f"{what} computes its shape {shown} from a tensor's shape in a way edgegen does not re-count"
        own = isinstance(channel, Const) and (channel.node == i or (
            self.graph.node[channel.node].output[0] == node.input[1] and len(self.users[node.input[1]]) == 1))
        if isinstance(channel, Const) and not own:
            return f"{what} takes its channel count from a constant that other nodes read too (shape {shown})"
        return None

    def read_axis(self, entry: Dim | Const, position: int) -> bool:
        """Whether `entry` is a Shape's entry that pruning leaves in place at `position` of a reshaped tensor
        with channels: the batch at 0, the channel count at 1, a spatial dim after."""
        return isinstance(entry, Dim) and entry.tensor in self.cg.layouts and (
            entry.axis == position if position < 2 else entry.axis >= 2)

    def shape_arithmetic(self, i: int, node: onnx.NodeProto) -> bool:
        """Follow the steps by which exporters compute a shape from a tensor's (Shape, Gather of constant
        indices, Unsqueeze of a scalar, Concat with constants): the entries go to `dims`. False where `node`
        is no such step (it is then visited as any other node)."""
        step = self.arithmetic.get(node.op_type)
        entries = step(i, node) if step else None
        if entries is None:
            return False
        self.dims[node.output[0]] = entries
        return True

    def count_read(self, names: list[str], where: str) -> None:
        """Exclude the channels whose count, read by a Shape, reaches `where`, which does not follow it."""
        for name in names:
            for entry in self.dims.get(name, ()):
                if isinstance(entry, Dim) and entry.axis == 1:
                    self.cg.exclude(self.cg.layouts.get(entry.tensor), f"its channel count, read by Shape node "
                                                                       f"{entry.reader!r}, reaches {where}, which "
                                                                       "edgegen does not re-count")

    def shape_of(self, i: int, node: onnx.NodeProto) -> list[Dim | Const] | None:
        """A Shape's entries (its start and end attributes applied), where the rank is known."""
        rank = len(self.shape(node.input[0]) or [])
        if not rank or node.input[0] in self.consts:
            return None
        axes = range(rank)[attribute(node, "start", 0):attribute(node, "end", rank)]
        return [Dim(node.input[0], k, node.name) for k in axes]

    def gathered(self, i: int, node: onnx.NodeProto) -> list[Dim | Const] | None:
        """The entries a Gather takes at constant indices (a scalar or a vector of them) from a shape vector."""
        data, index = self.dims.get(node.input[0]), self.constant(node, 1)
        if data is None or index is None or index.ndim > 1 or attribute(node, "axis", 0) not in (0, -1):
            return None
        picks = [int(k) for k in np.ravel(index)]
        return [data[k] for k in picks] if all(-len(data) <= k < len(data) for k in picks) else None

    def unsqueezed(self, i: int, node: onnx.NodeProto) -> list[Dim | Const] | None:
        """A scalar entry made a vector of one (the only Unsqueeze whose output is a vector)."""
        data = self.dims.get(node.input[0])
        if data is None or self.axes(node)[1] or len(data) != 1 or len(self.shape(node.output[0]) or []) != 1:
            return None
        return data

    def concatenated(self, i: int, node: onnx.NodeProto) -> list[Dim | Const] | None:
        """Shape vectors and constant vectors laid end to end, each constant entry with where it is written."""
        if not any(n in self.dims for n in node.input) or len(self.shape(node.output[0]) or []) != 1:
            return None
        entries: list[Dim | Const] = []
        for slot, name in enumerate(node.input):
            value = self.consts.get(name)
            if name in self.dims:
                entries += self.dims[name]
            elif value is not None and value.ndim == 1:
                entries += [Const(int(v), i, slot, k) for k, v in enumerate(value)]
            else:
                return None
        return entries

    def squeeze(self, i: int, node: onnx.NodeProto) -> None:
        """Squeeze / Unsqueeze of axes after the channel axis move no channel (a gate's [N, C] -> [N, C, 1, 1])."""
        axes, computed = self.axes(node)
        rank = len(self.shape(node.input[0] if node.op_type == "Squeeze" else node.output[0]) or [])
        what = f"{node.op_type} node {node.name!r}"
        if computed:
            why = f"{what} has computed axes"
        elif not rank:
            why = f"the shapes around {what} are unknown"
        elif not axes:
            why = f"{what} removes every axis of size 1, a batch of one included"
        elif any(a % rank < 2 for a in axes):
            why = f"{what} changes the batch or channel axis (axes {axes})"
        else:
            why = self.regroup(node, same_axis1=True)
        self.reshaped(node, why)

    def flatten(self, i: int, node: onnx.NodeProto) -> None:
        """Flatten at axis 1 moves no channel where the axes it folds into axis 1 are all of size 1."""
        rank = len(self.shape(node.input[0]) or [])
        why = self.regroup(node, same_axis1=True) if rank and attribute(node, "axis", 1) % rank == 1 else \
            f"Flatten node {node.name!r} folds the channel axis into the batch axis"
        self.reshaped(node, why)

    def regroup(self, node: onnx.NodeProto, same_axis1: bool) -> str | None:
        """Why a node that only reshapes its data (elements in order) does not keep whole channels; None where
        its output's axis 1 holds one entry per channel (or, `same_axis1`, as many as the input's did) and the
        batch axis is kept; "" where its input has no channel layout."""
        x, inp, out = self.data_layout(node), self.shape(node.input[0]), self.shape(node.output[0])
        what = f"{node.op_type} node {node.name!r}"
        if x is None:
            return ""
        if not inp or not out or None in inp[1:] + out[1:]:
            return f"the shapes around {what} are unknown"
        if len(out) < 2 or int(np.prod(inp[1:])) != int(np.prod(out[1:])):
            return f"{what} moves elements across the batch axis ({inp} -> {out})"
        if out[1] == x.channels or (same_axis1 and out[1] == inp[1]):
            return None
        if out[1] == inp[1]:
            return f"{what} keeps {x.block} entries of axis 1 per channel, where edgegen re-counts a shape's entry 1 " \
                   "only at one entry per channel"
        return f"{what} regroups channels: axis 1 goes from {inp[1]} to {out[1]} entries ({x.channels} channels)"

    def reshaped(self, node: onnx.NodeProto, why: str | None) -> Layout | None:
        """Where `why` is None (see `regroup`), the output's layout: the input's channels, each over out[1] /
        channels entries of axis 1; else None and the node excluded for `why`."""
        if why is not None:
            self.opaque(node, why or None)
            return None
        x, out = self.cg.layouts[node.input[0]], self.shape(node.output[0])
        layout = Layout(x.segments, out[1] // x.channels)
        self.cg.layouts[node.output[0]] = layout
        return layout

    def concat(self, i: int, node: onnx.NodeProto) -> None:
        rank = len(self.shape(node.output[0]) or [])
        axis = attribute(node, "axis", 0)
        axis = axis + rank if axis < 0 else axis
        names = [n for n in node.input if n]
        if rank < 2 or any(n not in self.consts and n not in self.cg.layouts for n in names):
            return self.opaque(node)
        if axis != 1:
            layout = None if any(n in self.consts for n in names) else \
                self.unify(node, [self.cg.layouts[n] for n in names])
            if layout is None:
                return self.opaque(node)
            self.cg.layouts[node.output[0]] = layout
            return None
        segments: list[tuple[int, int]] = []
        for name in names:
            if name in self.consts:
                self.fresh(name, f"constant input of Concat node {node.name!r}")
            layout = self.cg.layouts[name]
            if layout.block != 1:
                return self.opaque(node)
            segments.extend(layout.segments)
        self.cg.layouts[node.output[0]] = Layout(tuple(segments))

    def elementwise(self, i: int, node: onnx.NodeProto) -> None:
        """Ties the operands whose channel axis meets the output's (broadcasting aligns trailing axes); constants
        there follow the channels. An operand whose channels meet another axis of the output (an [N, C] map times
        an [N, C, H, W] one with W == C broadcasts along W) keeps them; a computed operand whose other axis meets
        the output's channels leaves nothing here prunable."""
        out = self.shape(node.output[0])
        if not out or len(out) < 2:
            return self.opaque(node)
        rank, tied, params = len(out), [], []
        for slot, name in enumerate(node.input):
            shape = self.shape(name) if name else []
            if shape is None:
                return self.opaque(node)
            axis = 1 - (rank - len(shape))  # the operand's axis that meets the output's channel axis
            meets = axis >= 0 and shape[axis] != 1
            if name in self.consts:
                params += [(slot, axis)] if meets else []
                continue
            layout = self.cg.layouts.get(name)
            if layout is not None and axis != 1 and len(shape) > 1 and shape[1] != 1:
                self.cg.exclude(layout, f"{node.op_type} node {node.name!r} broadcasts the channels of {name!r} "
                                        f"along axis {rank - len(shape) + 1} of its output, not its channel axis")
            if not meets:
                continue
            if layout is None:
                return self.opaque(node)
            if axis != 1:
                return self.opaque(node, f"{node.op_type} node {node.name!r} broadcasts axis {axis} of {name!r}, not "
                                         "its channels, along the channels of its output")
            tied.append(layout)
        layout = self.unify(node, tied) if tied else None
        if layout is None:
            return self.fresh(node.output[0], f"output of {node.op_type} node {node.name!r}")
        self.cg.layouts[node.output[0]] = layout
        for slot, axis in params:
            self.param(i, node, slot, axis, layout)

    def pad(self, i: int, node: onnx.NodeProto) -> None:
        pads = self.constant(node, 1) if len(node.input) > 1 else np.array(attribute(node, "pads", []))
        rank = len(self.shape(node.input[0]) or [])
        axes = self.constant(node, 3)
        computed = pads is None or (len(node.input) > 3 and bool(node.input[3]) and axes is None)
        if rank < 2 or computed:
            return self.opaque(node, f"Pad node {node.name!r} has computed pads")
        axes = [int(a) % rank for a in axes] if axes is not None else list(range(rank))
        n = len(axes)
        if pads.size != 2 * n or (1 in axes and (pads[axes.index(1)] != 0 or pads[n + axes.index(1)] != 0)):
            return self.opaque(node, f"Pad node {node.name!r} pads the channel axis")
        self.passthrough(node)

    def resize(self, i: int, node: onnx.NodeProto) -> None:
        scales, sizes = (self.constant(node, 1), None) if len(node.input) == 2 else \
            (self.constant(node, 2), self.constant(node, 3))
        if attribute(node, "axes", None) is not None:
            return self.opaque(node, f"Resize node {node.name!r} uses the axes attribute")
        if scales is not None and scales.size and scales.size > 1 and scales[1] == 1:
            self.passthrough(node)
        elif sizes is not None and sizes.size > 1:
            layout = self.passthrough(node)
            if layout is not None:
                self.cg.shape_entries.append(ShapeEntry(i, 3, layout))
        else:
            self.opaque(node, f"Resize node {node.name!r} has computed scales or resizes channels")

    def reduce(self, node: onnx.NodeProto) -> None:
        """Per channel when the axes (an attribute before opset 18, an input after) are all spatial."""
        rank = len(self.shape(node.input[0]) or [])
        axes, computed = self.axes(node)
        if computed:
            return self.opaque(node, f"{node.op_type} node {node.name!r} has computed axes")
        if axes is None or len(axes) == 0:
            return self.passthrough(node) if attribute(node, "noop_with_empty_axes", 0) else \
                self.opaque(node, f"{node.op_type} node {node.name!r} reduces every axis, channels included")
        if rank < 2 or any(a % rank < 2 for a in axes):
            return self.opaque(node, f"{node.op_type} node {node.name!r} reduces the batch or channel axis")
        self.passthrough(node)

    def axes(self, node: onnx.NodeProto) -> tuple[list[int] | None, bool]:
        """(axes, computed): the `axes` attribute (older opsets) or constant input 1; None where neither is given."""
        axes = attribute(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.constant(node, 1)
            if axes is None:
                return None, True
        return (None if axes is None else [int(a) for a in np.ravel(axes)]), False

    def clip(self, i: int, node: onnx.NodeProto) -> None:
        bounds = [n for n in node.input[1:] if n]
        if all(n in self.consts and self.consts[n].size == 1 for n in bounds):
            self.passthrough(node)
        else:
            self.opaque(node, f"Clip node {node.name!r} has computed or per-element bounds")

    def norm(self, i: int, node: onnx.NodeProto) -> None:
        slots = _NORM_PARAMS[node.op_type]
        if any(self.constant(node, s) is None for s in slots) or attribute(node, "training_mode", 0):
            return self.opaque(node, f"{node.op_type} node {node.name!r} has computed or training-mode parameters")
        layout = self.passthrough(node)
        for slot in slots:
            self.param(i, node, slot, 0, layout)


def attribute(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's value, or `default` where the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes inside If/Loop/Scan bodies (outer tensors used implicitly)."""
    names: set[str] = set()
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= {n for inner in sub.node for n in inner.input} | _subgraph_reads(sub)
    return names
