"""Read an ONNX file and clean up what real exporters emit.

`load_clean(path)` returns a checked, shape-inferred ModelProto plus a list of
what the clean-up changed. Broken input becomes a `ModelError` naming the file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper, shape_inference, version_converter

from .errors import ModelError, first_line
from .fold_norm import fold_norm_into_gemm
from .resize_sizes import sizes_as_scales

log = logging.getLogger(__name__)

MIN_OPSET = 13
MAX_OPSET = 21
UPGRADE_OPSET = 17  # an older model is raised to this opset with onnx's version converter
MIN_IR_VERSION = 4  # the first in which an initializer need not be a graph input
_PASSTHROUGH_OPS = {"Identity", "Dropout"}
# Not folded: quantized weights stay int8 (QDQ), random ops stay random.
_NEVER_FOLD = {"DequantizeLinear", "QuantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike",
               "RandomUniformLike", "Multinomial", "Bernoulli"}
_MAX_FOLDED_ELEMENTS = 1 << 16


def read_model(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file (external data included); raise ModelError on anything broken."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path}: is a directory, not a model file. Pass the path of an .onnx file in it or a "
                         "zoo:NAME (see `edgegen zoo`).")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file. Pass the path of an .onnx file or a zoo:NAME (see `edgegen zoo`).")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except DecodeError as exc:
        raise ModelError(
            f"{path}: not a readable ONNX file ({exc}). The file is truncated or is not ONNX; "
            "re-export it, e.g. with torch.onnx.export."
        ) from None
    except ValueError as exc:  # onnx: "External data length (...) exceeds available data (...)"
        raise ModelError(
            f"{path}: its external weight data is shorter than the model says ({exc}): a partial copy or a damaged "
            "file. Copy the .data file again whole, or re-export the model."
        ) from None
    except (FileNotFoundError, OSError, onnx.checker.ValidationError) as exc:
        if "symbolic link" in str(exc):  # onnx's guard against a model pointing its weights at other files
            raise ModelError(
                f"{path}: its external weight data is a symbolic link, which onnx does not follow ({first_line(exc)}), "
                "as in a Hugging Face hub cache (snapshots/ link into blobs/). Copy the files themselves into one "
                "folder (cp -L MODEL.onnx MODEL.onnx.data DIR/), or download with hf_hub_download(..., local_dir=DIR)."
            ) from None
        raise ModelError(
            f"{path}: its external weight data could not be read ({exc}). Keep the .data file next to the "
            ".onnx file under the name the model refers to."
        ) from None
    if not model.graph.node or not model.graph.output or not model.opset_import:
        raise ModelError(
            f"{path}: not an ONNX model (no graph nodes, outputs or opset). The file is truncated or is not "
            "ONNX; re-export it."
        )
    _sort_topologically(model)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = first_line(exc)
        raise ModelError(f"{path}: the ONNX checker rejects this model: {first}. Re-export the model.") from None
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise ModelError(
            f"{path}: ONNX opset {opset} is newer than the supported range {MIN_OPSET}-{MAX_OPSET}. Re-export "
            f"with e.g. torch.onnx.export(..., opset_version={UPGRADE_OPSET})."
        )
    _densify_sparse_initializers(model)
    _check_weights_present(model, path)
    _refuse_repeated_outputs(model, path)
    return model


def _densify_sparse_initializers(model: onnx.ModelProto) -> None:
    """Weights stored as sparse initializers (ONNX's COO form) as ordinary ones: the clean-up and every backend
    read `graph.initializer` only."""
    graph = model.graph
    for sparse in graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values).reshape(-1)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        dense = np.zeros(int(np.prod(sparse.dims)), values.dtype)
        flat = indices.reshape(-1) if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims))
        dense[flat] = values
        graph.initializer.append(numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), sparse.values.name))
    del graph.sparse_initializer[:]


def unique_node_names(model: onnx.ModelProto) -> int:
    """Give a node whose name another node has already a name of its own (`<name>_<k>`): ONNX Runtime refuses a
    graph with two nodes of one name, and messages name nodes. Returns how many were renamed."""
    seen = {n.name for n in model.graph.node}
    used: set[str] = set()
    renamed = 0
    for node in model.graph.node:
        if node.name and node.name in used:
            k = 1
            while f"{node.name}_{k}" in seen:
                k += 1
            node.name = f"{node.name}_{k}"
            seen.add(node.name)
            renamed += 1
        used.add(node.name)
    return renamed


def _negative_dims_unknown(model: onnx.ModelProto) -> None:
    """An input or output dim declared -1 (as some converters write a dynamic one; ONNX Runtime reads it so) as
    an unknown dim."""
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value < 0:
                dim.Clear()


def _refuse_repeated_outputs(model: onnx.ModelProto, path: Path) -> None:
    """A tensor listed twice among the graph's outputs (ONNX Runtime returns it twice): outputs are served by
    name, and the second would need a name the file does not give it."""
    names = [o.name for o in model.graph.output]
    repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if repeated is not None:
        raise ModelError(f"{path}: output {repeated!r} is listed {names.count(repeated)} times among the model's "
                         "outputs; edgegen serves each output by its name. List it once (return the tensor once "
                         "from the exported forward, or remove the repeat from graph.output), and copy it in your "
                         "own code where you need it twice")


def _check_weights_present(model: onnx.ModelProto, path: Path) -> None:
    """A graph input with no value in the file that a layer reads as its weights, bias or statistics is a
    model exported without its parameters (torch.onnx.export(..., export_params=False)): refused here,
    where it would otherwise be taken for a request input."""
    inputs = {t.name for t in model.graph.input} - {t.name for t in model.graph.initializer}
    reads = [(node, slot) for node in model.graph.node for slot in _PARAMETER_SLOTS.get(node.op_type, ())
             if slot < len(node.input) and node.input[slot] in inputs]
    if reads:
        node, slot = reads[0]
        missing = sorted({n.input[i] for n, i in reads})
        raise ModelError(
            f"{path}: input {node.input[slot]!r} is the {_SLOT_NAMES[slot]} of {node.op_type} node "
            f"{node.name or node.output[0]!r}, and the file holds no value for it ({len(missing)} such input(s): "
            f"{', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): the model was exported without its "
            "weights. Re-export it with torch.onnx.export(..., export_params=True) (the default); edgegen compiles "
            "a layer's weights as constants.")


# the inputs of a layer that hold its parameters (a model input there is a model without weights)
_PARAMETER_SLOTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "BatchNormalization": (1, 2, 3, 4),
                    "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2), "GroupNormalization": (1, 2),
                    "PRelu": (1,)}
_SLOT_NAMES = {1: "weight", 2: "bias", 3: "running mean", 4: "running variance"}


def _sort_topologically(model: onnx.ModelProto) -> None:
    """Put every node after the producers of its inputs, keeping the exported order otherwise
    (onnxruntime's float16 converter appends the casts of the graph's inputs at the end; onnxruntime
    sorts on load, the ONNX checker refuses). A graph with a cycle or a missing input is left as it is."""
    graph = model.graph
    ready = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    nodes = list(graph.node)
    pending, ordered = nodes, []
    while pending:  # each pass takes, in order, every node whose inputs are ready: a sorted graph in one pass
        waiting = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            return
        pending = waiting
    if all(a is b for a, b in zip(ordered, nodes)):
        return  # already in order: left exactly as exported
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def upgrade_opset(model: onnx.ModelProto, path: str | Path) -> tuple[onnx.ModelProto, list[str]]:
    """A model below MIN_OPSET (opset 11 was torch.onnx.export's long-time default) raised to UPGRADE_OPSET
    with onnx's version converter, and the note saying so; others as they are. The build still checks
    its artifacts against the file as exported, so a conversion that changed the function would show."""
    opset = default_opset(model)
    if opset >= MIN_OPSET:
        return model, []
    try:
        upgraded = version_converter.convert_version(model, UPGRADE_OPSET)
        if opset < 11:
            _resize_as_before_opset_11(upgraded)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # the converter's own assertion, with the op it has no adapter for
        first = first_line(exc)
        raise ModelError(
            f"{path}: ONNX opset {opset} is older than the supported range {MIN_OPSET}-{MAX_OPSET}, and onnx's "
            f"version converter could not raise it to {UPGRADE_OPSET} ({first}). Re-export with e.g. "
            f"torch.onnx.export(..., opset_version={UPGRADE_OPSET})."
        ) from None
    log.info("%s: opset %d raised to %d", path, opset, UPGRADE_OPSET)
    return upgraded, [f"opset {opset} raised to {UPGRADE_OPSET} with onnx's version converter"]


def _resize_as_before_opset_11(model: onnx.ModelProto) -> None:
    """Every Resize of a model raised from below opset 11 was an Upsample or a Resize-10, which map output
    to input coordinates as x / scale, nearest rounding down; the converter leaves opset 11's defaults
    (half_pixel, round_prefer_floor), which move every interpolated pixel. Spell the old mapping out."""
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        given = {a.name for a in node.attribute}
        if "coordinate_transformation_mode" not in given:
            node.attribute.append(helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
        if "nearest_mode" not in given:
            node.attribute.append(helper.make_attribute("nearest_mode", "floor"))


def default_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default ONNX domain."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def clean(model: onnx.ModelProto, origin: str) -> tuple[onnx.ModelProto, list[str]]:
    """Fold constants and shape arithmetic, drop pass-through nodes, re-infer every shape, give fixed-size
    Resizes by scales."""
    notes: list[str] = []
    nodes_before = len(model.graph.node)
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    _negative_dims_unknown(model)
    declared = {o.name: _dims(o) for o in model.graph.output}
    _refuse_training_mode(model, origin)
    _weights_not_inputs(model, notes)
    model = _inline_schema_functions(model, notes)
    model = _drop_passthrough(model, notes)
    model = _fold(model, notes)
    model, norms = fold_norm_into_gemm(model)
    if norms:
        notes.append(f"folded {norms} BatchNormalization(s) into the Gemm before them")
    model = _recompute_shapes(model, declared, origin, notes)
    split = _explicit_split_sizes(model)
    if split:
        notes.append(f"{split} Split(s) by num_outputs given their sizes (OpenVINO 2026.4 misreads an opset-18 "
                     "Split(num_outputs), the dynamo exporter's torch.chunk)")
    resized = sizes_as_scales(model)
    if resized:
        notes.append(f"{resized} Resize(s) to fixed sizes given by scales (the same pixels; a region or another "
                     "frame size can run them)")
    removed = nodes_before - len(model.graph.node)
    if removed:
        notes.insert(0, f"{nodes_before} -> {len(model.graph.node)} nodes")
    return model, notes


def _weights_not_inputs(model: onnx.ModelProto, notes: list[str]) -> None:
    """Take initializers off the graph's inputs, where torch.onnx.export(keep_initializers_as_inputs=True)
    and opset <= 8 exports list them: as inputs they could be fed, so nothing would fold them. IR version 3
    (those old exporters') requires every initializer to be an input, so the model becomes IR version 4,
    where one need not be: ONNX Runtime refuses an IR-3 model holding one that is not (such as a scale
    the int8 passes add)."""
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) < len(model.graph.input):
        notes.append(f"{len(model.graph.input) - len(inputs)} initializers were also listed as graph inputs; "
                     "they are weights only now")
        del model.graph.input[:]
        model.graph.input.extend(inputs)


INLINED_OPS = ("GroupNormalization",)  # function ops onnx's shape inference leaves untyped (opset 21)


def _inline_schema_functions(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """GroupNormalization written as the ops of its ONNX function body (the dynamo exporter's nn.GroupNorm at
    opset 21): onnx's shape inference gives its output no type, and the backends know the plain ops."""
    found = [n for n in model.graph.node if n.op_type in INLINED_OPS and n.domain in ("", "ai.onnx")]
    if not found:
        return model
    import onnx.inliner

    typed = onnx.ModelProto.FromString(model.SerializeToString())  # the inliner needs every operand's type
    typed.graph.value_info.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                  for t in typed.graph.initializer)
    inlined = onnx.inliner.inline_selected_functions(typed, [("", op) for op in INLINED_OPS],
                                                     inline_schema_functions=True)
    for i, node in enumerate(inlined.graph.node):
        node.name = node.name or f"{node.op_type}_inlined_{i}"
    notes.append(f"{len(found)} {'/'.join(INLINED_OPS)} node(s) written as their ONNX function body")
    return inlined


def _refuse_training_mode(model: onnx.ModelProto, origin: str) -> None:
    """A model exported in training mode (Dropout drawing random masks, BatchNormalization using the batch's own
    statistics) gives other outputs at every run and for every batch: refused, naming the nodes."""
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                      if a.name == "value"})
    training = []
    for node in model.graph.node:
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            flag = constants.get(node.input[2])
            if flag is None or bool(numpy_helper.to_array(flag).any()):
                training.append(f"{node.name} (Dropout, training_mode: random masks)")
        elif node.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i for a in node.attribute):
            training.append(f"{node.name} (BatchNormalization, training_mode=1: the batch's own statistics)")
    if training:
        raise ModelError(f"{origin}: exported in training mode: {', '.join(training[:4])}"
                         f"{f' and {len(training) - 4} more' if len(training) > 4 else ''}; its outputs change from "
                         "run to run and with the batch. Export it after model.eval() (torch.onnx.export's "
                         "training=TrainingMode.EVAL, the default)")


def _drop_passthrough(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Remove Identity and inference-mode Dropout by renaming their input to their output."""
    graph = model.graph
    protected = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {t.name for t in graph.output}
    dropped = 0
    for node in list(graph.node):
        if node.op_type not in _PASSTHROUGH_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Dropout" and (len(node.input) > 2 and node.input[2] or _used(graph, node.output[1:])):
            continue
        src, dst = node.input[0], node.output[0]
        if src in protected and dst in protected:
            continue
        old, new = (dst, src) if dst not in protected else (src, dst)
        graph.node.remove(node)
        _rename(graph, old, new)
        dropped += 1
    if dropped:
        notes.append(f"removed {dropped} Identity/Dropout node(s)")
    return model


def _used(graph: onnx.GraphProto, names) -> bool:
    names = {n for n in names if n}
    return any(i in names for node in graph.node for i in node.input) or any(o.name in names for o in graph.output)


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant and shape folding: every node whose inputs are all constants is evaluated with ONNX's
    reference evaluator (exporters build pads and shapes from ConstantOfShape/Slice/Transpose chains),
    then onnxscript's optimizer folds what depends on static shapes. On failure the model is unchanged."""
    import onnxscript.optimizer

    ir_log = logging.getLogger("onnx_ir")  # its notes ("Skipped deduplication of initializer ...") are not the user's
    level = ir_log.level
    ir_log.setLevel(logging.ERROR)
    try:
        hidden, near = _near_identities_hidden(_static_shape_parts(_evaluate_constant_nodes(model)))
        folded = _near_identities_restored(onnxscript.optimizer.optimize(hidden), near)
        return _passed_through_inputs(_named_as_before(folded, model), model)
    except Exception as exc:  # folding is an optimization; the model stays valid without it
        log.warning("constant folding skipped: %s", exc)
        return model
    finally:
        ir_log.setLevel(level)


_IDENTITIES = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0}


def _near_identities_hidden(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy whose one-value constants that an Add, Sub, Mul or Div takes and that are close to but not that
    op's identity (PixelNorm's `+ 1e-8`, a `* 1.00001`) are graph inputs, and those constants: onnxscript's
    no-op rules match x + 0 within 1e-8 and x * 1 within 1e-5, and dropped such an epsilon (0 / 0 = NaN on an
    all-zero pixel). `_near_identities_restored` makes them constants again."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    names = {name for node in graph.node if node.op_type in _IDENTITIES for name in node.input[1:] + node.input[:1]
             if name in tensors and _near(numpy_helper.to_array(tensors[name]), _IDENTITIES[node.op_type])}
    near = [tensors[name] for name in sorted(names)]
    for tensor in near:
        graph.initializer.remove(tensor)
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return model, near


def _near(value: np.ndarray, identity: float) -> bool:
    return value.size == 1 and value.dtype.kind == "f" and float(value.flat[0]) != identity and \
        math.isclose(float(value.flat[0]), identity, rel_tol=1e-4, abs_tol=1e-6)


def _near_identities_restored(model: onnx.ModelProto, near: list[onnx.TensorProto]) -> onnx.ModelProto:
    """The hidden constants back as initializers (those the optimized model still reads)."""
    names = {t.name for t in near}
    kept = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    read = {name for node in model.graph.node for name in node.input}
    model.graph.initializer.extend(t for t in near if t.name in read)
    return model


def _named_as_before(folded: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """Give a node the optimizer made in place of the model's own (a Conv or ConvTranspose with a BatchNorm
    fused into it is written as node_ConvTranspose_0) the name of the node it replaces: the node of the
    same op reading the same input, else the node that wrote the same output. Messages then name the
    model's nodes."""
    names = {n.name for n in model.graph.node}
    by_input = {(n.op_type, n.input[0]): n.name for n in model.graph.node if n.input}
    by_output = {o: n.name for n in model.graph.node for o in n.output}
    used = {n.name for n in folded.graph.node}
    for node in folded.graph.node:
        if node.name in names:
            continue
        candidates = [by_input.get((node.op_type, node.input[0] if node.input else None)),
                      *(by_output[o] for o in node.output if o in by_output)]  # two merged: the one that wrote it
        old = next((c for c in candidates if c is not None and c not in used), None)
        if old is not None:
            node.name = old
            used.add(old)
    return folded


def _passed_through_inputs(folded: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """A graph input that is also a graph output, as in the model: the optimizer renames such an input
    `<name>_orig` and writes the output with an Identity, so the input would lose its name in the file (and
    its declared shape, where the output declares none)."""
    inputs = {v.name: v for v in model.graph.input}
    outputs = {v.name for v in folded.graph.output}
    for node in list(folded.graph.node):
        if node.op_type == "Identity" and node.output[0] in outputs and node.output[0] in inputs \
                and node.input[0] not in inputs and any(v.name == node.input[0] for v in folded.graph.input):
            renamed, name = node.input[0], node.output[0]
            folded.graph.node.remove(node)
            _rename(folded.graph, renamed, name)
            for value in folded.graph.input:
                if value.name == renamed:
                    value.CopyFrom(inputs[name])
    return folded


def _static_shape_parts(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each Gather or Slice of a Shape that picks only static dims, as a constant. With a dynamic batch the
    Shape itself never folds, and `F.interpolate(seg, size=x.shape[2:])` kept the resized map's size
    computed from x at run time, tying the map to whatever x is computed from."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    try:
        known = shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception:  # onnx raises its own types; the Shapes are then folded only where wholly static
        return model
    dims = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in (*known.input, *known.value_info, *known.output) if v.type.tensor_type.HasField("shape")}
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shapes = {}
    for node in model.graph.node:
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx") and node.input[0] in dims:
            attrs = {a.name: a.i for a in node.attribute}
            full = dims[node.input[0]]
            shapes[node.output[0]] = full[attrs.get("start", 0):attrs.get("end", len(full))]
    kept = []
    for node in model.graph.node:
        picked = _picked_dims(node, shapes, values)
        if picked is not None and None not in np.ravel(np.array(picked, object)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(picked, np.int64), node.output[0]))
            continue
        kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _picked_dims(node: onnx.NodeProto, shapes: dict[str, list], values: dict[str, np.ndarray]):
    """The dims (None where not static) a Gather or Slice with constant operands takes from a Shape's
    output, as a list (or one dim for a scalar Gather); None for any other node."""
    if not node.input or node.input[0] not in shapes or not all(i in values for i in node.input[1:] if i):
        return None
    shape = shapes[node.input[0]]
    if node.op_type == "Gather":
        index = values[node.input[1]]
        return shape[int(index)] if index.ndim == 0 else [shape[int(i)] for i in index.reshape(-1)]
    if node.op_type == "Slice" and len(node.input) >= 3:
        start, end = (int(values[node.input[i]].reshape(-1)[0]) for i in (1, 2))
        step = int(values[node.input[4]].reshape(-1)[0]) if len(node.input) > 4 and node.input[4] else 1
        return shape[start:end:step]
    return None


def _evaluate_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnx.reference import ReferenceEvaluator

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        foldable = (node.domain in ("", "ai.onnx") and node.op_type not in _NEVER_FOLD
                    and all(i in values for i in inputs)
                    and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                for a in node.attribute))
        if foldable:
            results = ReferenceEvaluator(node).run(None, {i: values[i] for i in inputs})
            if all(np.asarray(r).size <= _MAX_FOLDED_ELEMENTS for r in results):
                for name, result in zip(node.output, results):
                    values[name] = np.asarray(result)
                    graph.initializer.append(numpy_helper.from_array(np.asarray(result), name))
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return model


def _fold(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Fold constants and shape arithmetic (numerics are verified later by the build)."""
    folded = fold_constants(model)
    before = len(model.graph.node)
    if len(folded.graph.node) != before:
        notes.append(f"folded constants and shape arithmetic ({before} -> {len(folded.graph.node)} nodes)")
    return folded


def _explicit_split_sizes(model: onnx.ModelProto) -> int:
    """Give every Split by `num_outputs` (opset 18+) its sizes as an input instead, where the split axis is
    static: the same parts (the last one smaller when the axis does not divide evenly). Returns how many."""
    dims = {v.name: _dims(v) for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    changed = 0
    for node in model.graph.node:
        count = next((a.i for a in node.attribute if a.name == "num_outputs"), None)
        shape = dims.get(node.input[0])
        if node.op_type != "Split" or count is None or (len(node.input) > 1 and node.input[1]) or not shape:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % len(shape)
        if not isinstance(shape[axis], int):
            continue
        part = -(-shape[axis] // count)
        sizes = [min(part, shape[axis] - i * part) for i in range(count)]
        name = f"{node.name or node.output[0]}/split_sizes"
        model.graph.initializer.append(numpy_helper.from_array(np.array(sizes, np.int64), name))
        del node.input[1:]
        node.input.append(name)
        kept = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept)
        changed += 1
    return changed


UNKNOWN_DIM = "unk__"  # onnx shape inference names a dim it cannot follow unk__<n>


def _recompute_shapes(model: onnx.ModelProto, declared: dict, origin: str, notes: list[str]) -> onnx.ModelProto:
    """Drop declared intermediate and output shapes and infer them anew; keep symbolic dim names."""
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        model = shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ModelError(f"{origin}: shape inference fails: {str(exc).strip().splitlines()[0]}") from None
    for out in model.graph.output:
        computed = _dims(out)
        old = declared.get(out.name)
        if old and not computed:  # inference stopped short of it (shape arithmetic it cannot follow): as declared
            _set_dims(out, old)
            continue
        if old is None or not computed:
            continue
        dims = out.type.tensor_type.shape.dim
        for dim, was in zip(dims, old if len(old) == len(dims) else []):  # unknown dims as declared
            if not dim.HasField("dim_value") and (not dim.dim_param or dim.dim_param.startswith(UNKNOWN_DIM)):
                if isinstance(was, int):
                    dim.dim_value = was
                elif was:
                    dim.dim_param = was
        if old and len(old) == len(computed) and any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(old, computed)
        ):
            notes.append(f"output {out.name!r}: declared shape {old} disagrees with computed {computed}; using computed")
    return model


def _set_dims(value: onnx.ValueInfoProto, dims: list[int | str | None]) -> None:
    shape = value.type.tensor_type.shape
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        elif dim:
            entry.dim_param = dim


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
