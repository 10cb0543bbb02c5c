"""Build step for fast serving: compile the extra parts a bundle serves with, check them against
the whole artifact, and report what each costs.

Parts (each compiled for the bundle's target and precision into `parts/NAME/`):
- trunk / head: the feature-cache split (automatic or `--split TENSOR`);
- roiN_pre / roiN_post: roots of image output N computed whole, and the local rest on crops (with
  dynamic spatial dims); the whole-model artifact serves as `post` where it already is that;
- preview (or head_preview after the trunk): the graph up to a lower-resolution image output, and
  an optional upscaler model compiled for the same target (compiled for every such model but on FPGAs);
- sizeS: a fully-convolutional model at output size S; batchN: a fixed-batch model at batch N.
Every part is run on the build's held-out inputs through the runtime itself; fp32 split and ROI
results must equal the whole artifact within SPLIT_MAX_ABS.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import backends, targets
from .errors import BuildError
from .graph import Graph
from .metrics import psnr
from .receptive_field import RoiRefused, spatial_program
from .resize_sizes import lone_fixed_sizes
from .runtime.roi import STATIC_SHAPE_BACKENDS, WHOLE_FRAME_SHARE, static_shapes_refusal
from .specs import TensorSpec, format_shape
from .split import find_split, split_at
from .subgraph import extract, quantized_boundaries, with_batch, with_input_dims

log = logging.getLogger(__name__)

SPLIT_MAX_ABS = 1e-5
PART_MAX_ABS = 1e-3  # a compiled part against its own fp32 graph, as the build checks the whole artifact
ROI_CHECKS = 16  # regions checked per image output: the frame, its edges and corners, random ones
UPSCALER_CALIBRATION = 32  # samples an int8 bundle's preview upscaler is calibrated on
Progress = Callable[[str, int, int], None]


@dataclass
class ServingOptions:
    """What to compile for serving (all off by default; build_step adds the preview tier of a model
    with a lower-resolution image output unasked)."""

    split: list[str] | None = None  # ["auto"] or tensor names
    roi: bool = False
    tiers: list[int] | None = None  # output sizes of a fully-convolutional model
    preview_upscale: str | None = None  # "lanczos", or an upscaler model (path or zoo:NAME)
    batch_sizes: list[int] | None = None

    @property
    def wanted(self) -> bool:
        return bool(self.split or self.roi or self.tiers or self.preview_upscale or self.batch_sizes)


class _Compiler:
    """Compiles sub-graphs into staging/parts/NAME and records them for the manifest."""

    def __init__(self, tgt: targets.Target, precision: str, staging: Path, report: Progress):
        self.tgt, self.precision, self.staging, self.report = tgt, precision, staging, report
        self.module = backends.compiler_module(tgt.backend)
        self.parts: dict[str, Any] = {}
        self.graphs: dict[str, Graph] = {}

    def add(self, name: str, graph: Graph) -> str:
        self.report(f"part {name}", len(self.parts), len(self.parts) + 1)
        directory = self.staging / "parts" / name
        directory.mkdir(parents=True)
        compiled = self.module.compile(graph, self.tgt, self.precision, directory)
        self.parts[name] = {"dir": f"parts/{name}", "session": compiled["session"],
                            "inputs": [s.to_json() for s in graph.inputs],
                            "outputs": [s.to_json() for s in graph.outputs],
                            "macs": sum(c.macs for c in graph.node_costs())}
        self.graphs[name] = graph
        return name


def compile_serving(graph: Graph, tgt: targets.Target, precision: str, staging: Path, options: ServingOptions,
                    report: Progress) -> tuple[dict[str, Any], dict[str, Any], dict[str, Graph]]:
    """Compile every part the options ask for; return the manifest's `parts` and `serving` sections
    and the graph of each part."""
    comp = _Compiler(tgt, precision, staging, report)
    form = getattr(comp.module, "lowered_form", None)
    if form is not None and precision == "int8":  # cut where the backend's own int8 grids are written
        graph = graph.with_model(form(graph.model), ["in the backend's int8 form, for its serving parts"])
    serving: dict[str, Any] = {}
    names = [s.name for s in graph.inputs]
    outputs = [s.name for s in graph.outputs]
    split = None
    if options.split:
        split, why = find_split(graph) if options.split == ["auto"] else (split_at(graph, options.split), "")
        if split is None:
            serving["split"] = {"none": why}
        else:
            held = quantized_boundaries(graph, split.cut)
            comp.add("trunk", extract(held, split.trunk_inputs, split.cut, "trunk"))
            # an output the trunk computes (a cut tensor) comes with the trunk's features, not from the head
            head = extract(held, split.cut + names, [o for o in outputs if o not in split.cut], "head")
            comp.add("head", head)
            serving["split"] = split.to_json()
    wanted = [flag for flag, on in (("--roi", options.roi), ("--tiers", options.tiers),
                                     ("--preview-upscale", options.preview_upscale)) if on]
    if wanted and not _image_outputs(graph):
        raise BuildError(f"{graph.source}: {', '.join(wanted)} serve image outputs, and this model has none (its "
                         f"outputs: {', '.join(f'{s.name} ({s.role})' for s in graph.outputs)}); where an output is "
                         "an NCHW image, say so with --role NAME=image")
    if options.roi:
        serving["roi"] = _roi_parts(graph, comp)
    tiers = _tier_parts(graph, comp, options, split)
    if tiers:
        serving["tiers"] = tiers
    if options.batch_sizes:
        serving["batch_sizes"] = _batch_parts(graph, comp, options.batch_sizes)
    return comp.parts, serving, comp.graphs


def _roi_parts(graph: Graph, comp: _Compiler) -> dict[str, Any]:
    inputs = {s.name for s in graph.inputs}
    result = {}
    for i, spec in enumerate(s for s in graph.outputs if s.role == "image"):
        if comp.tgt.backend in STATIC_SHAPE_BACKENDS:
            result[spec.name] = {"refused": static_shapes_refusal(comp.tgt.backend)}
            continue
        try:
            program = spatial_program(graph, spec.name)
        except RoiRefused as exc:
            result[spec.name] = {"refused": str(exc)}
            continue
        roots = [r["name"] for r in program["roots"]]
        held = quantized_boundaries(graph, roots)
        pre, pre_share = None, 0.0
        if program["needs_pre"]:
            whole = extract(held, sorted(inputs), [r for r in roots if r not in inputs], f"roi {spec.name} roots")
            pre, pre_share = comp.add(f"roi{i}_pre", whole), _macs(whole) / max(_macs(graph), 1)
            if pre_share >= WHOLE_FRAME_SHARE:
                log.warning("output %r: a region first computes %.0f%% of the MACs on the whole frame (the tensors "
                            "it needs whole, such as the channel gates of squeeze-excitation or NAFNet's "
                            "simplified channel attention), so regions are served as the whole frame, cropped: "
                            "no faster than a full one", spec.name, 100 * pre_share)
        post = extract(held, roots, [spec.name], f"roi {spec.name} region")
        spatial = {r["name"] for r in program["roots"] if r["spatial"]}
        dims = {s.name: [s.shape[0] if s.shape and s.shape[0] is not None else "N", s.default_shape[1],
                         f"{s.name}_h", f"{s.name}_w"] for s in post.inputs if s.name in spatial}
        reusable = not program["needs_pre"] and len(graph.outputs) == 1 and \
            all(s.shape[2:] == [None, None] for s in graph.inputs if s.name in spatial)
        post_name = "main" if reusable else comp.add(f"roi{i}_post", with_input_dims(post, dims, "dynamic frame"))
        result[spec.name] = {"program": program, "pre": pre, "post": post_name, "pre_share": round(pre_share, 4)}
    return result


def _macs(graph: Graph) -> int:
    return sum(c.macs for c in graph.node_costs())


def _image_outputs(graph: Graph) -> list[TensorSpec]:
    return [s for s in graph.outputs if s.role == "image" and len(s.default_shape) == 4]


def preview_outputs(graph: Graph) -> tuple[TensorSpec, TensorSpec] | None:
    """The (full, preview) image outputs of a model with image outputs at two resolutions, else None."""
    images = _image_outputs(graph)
    if len(images) < 2:
        return None
    full = max(images, key=lambda s: s.default_shape[2] * s.default_shape[3])
    small = min(images, key=lambda s: s.default_shape[2] * s.default_shape[3])
    return None if small.default_shape[2:] == full.default_shape[2:] else (full, small)


def _tier_parts(graph: Graph, comp: _Compiler, options: ServingOptions, split) -> dict[str, Any]:
    tiers: dict[str, Any] = {}
    images = _image_outputs(graph)
    outputs = preview_outputs(graph)
    if outputs:
        full, small = outputs
        tiers["full"] = {"output": full.name, "size": full.default_shape[2:]}
        tiers["preview"] = _preview(graph, comp, options, split, small, full)
    if options.tiers:
        tiers["sizes"] = _size_parts(graph, comp, options.tiers, images)
    elif options.preview_upscale and "preview" not in tiers:
        raise BuildError(f"{graph.source}: --preview-upscale needs a model with a lower-resolution image output "
                         f"(this one has {[s.name for s in images]} at one size)")
    return tiers


def _preview(graph: Graph, comp: _Compiler, options: ServingOptions, split, small, full) -> dict[str, Any]:
    entry: dict[str, Any] = {"output": small.name, "size": small.default_shape[2:]}
    if split is not None:
        head = extract(quantized_boundaries(graph, split.cut), split.cut + [s.name for s in graph.inputs],
                       [small.name], "head to the preview")
        entry.update(part=comp.add("head_preview", head), trunk=True)
    else:
        entry.update(part=comp.add("preview", extract(graph, [s.name for s in graph.inputs], [small.name],
                                                      "preview")), trunk=False)
    upscale = options.preview_upscale
    if upscale:
        entry["upscaled_size"] = full.default_shape[2:]
        if upscale == "lanczos":
            entry["upscale"] = "lanczos"
        else:
            entry["upscale"] = "upscaler"
            entry["upscaler_model"] = upscale
            up = _upscaler(upscale, small, full)
            comp.add("upscaler", _quantized(up, backends.int8_lowerings(comp.tgt)) if comp.precision == "int8" else up)
    return entry


def _upscaler(model: str, small, full) -> Graph:
    probe = Graph.load(model)
    images = [s for s in probe.inputs if s.role == "image"]
    if len(probe.inputs) != 1 or not images:
        raise BuildError(f"{model}: a preview upscaler must take one image input; this model takes "
                         f"{[(s.name, s.role) for s in probe.inputs]}")
    spec = images[0]
    shape = [1, spec.default_shape[1], *small.default_shape[2:]]
    declared = spec.shape[2:]
    if any(d is not None and d != want for d, want in zip(declared, shape[2:])):
        raise BuildError(f"{model}: a preview upscaler must take the {shape[2]}x{shape[3]} preview, and this one was "
                         f"exported for {format_shape(spec.source_dims(spec.shape))} input {spec.name!r}; export it with dynamic "
                         "height and width, or at the preview's size")
    up = Graph.load(model, input_shapes={spec.name: shape})
    out = next((s for s in up.outputs if s.role == "image"), None)
    if out is None or out.default_shape[1:] != full.default_shape[1:]:
        raise BuildError(f"{model}: upscales a {small.default_shape[1:]} preview to "
                         f"{out.default_shape[1:] if out else 'no image'}, not the full image's {full.default_shape[1:]}")
    return up


def _quantized(up: Graph, lowerings: tuple[str, ...]) -> Graph:
    """An int8 bundle's upscaler as int8 QDQ (all layers; calibrated from its input spec), after the backend's
    exact int8 lowerings as the bundle's own model gets them (without, its float Resize and CRD shuffle ran it
    2.5x slower than the same model built alone): a backend that runs int8 models only (LiteRT full-integer,
    the NPU) takes no float graph."""
    from .passes.calibration import load_calibration
    from .passes.lowering import lower
    from .passes.quantize import Quantizer

    up = lower(up, lowerings)[0]
    calibration = load_calibration(up.inputs, None, UPSCALER_CALIBRATION, up.name)
    return up.with_model(Quantizer(up, calibration).emit(), ["quantized to int8 QDQ (minmax), as the bundle"])


def _size_parts(graph: Graph, comp: _Compiler, sizes: list[int], images) -> dict[str, Any]:
    if len(images) != 1:
        raise BuildError(f"{graph.source}: --tiers sizes need a model with one image output; this one has "
                         f"{len(images)} ({', '.join(repr(s.name) for s in images)}). Build without --tiers: a "
                         "lower-resolution image output is served as the preview tier by itself "
                         "(quality=\"preview\" or output=NAME), the other at its own size")
    out = images[0]
    base = out.default_shape[2]
    spatial = [s for s in graph.inputs if len(s.default_shape) == 4]
    if not spatial:
        raise BuildError(f"{graph.source}: --tiers sizes need a fully-convolutional model, one whose image output "
                         "follows a spatial input; this model has none")
    if out.default_shape[2] != out.default_shape[3]:
        raise BuildError(f"{graph.source}: --tiers sizes are square (S x S), and this model's image output is "
                         f"{out.default_shape[2]}x{out.default_shape[3]}; build it without --tiers")
    # one artifact serves every size where the model and the backend take any (TFLite's shapes are static)
    dynamic = all(s.shape[2:] == [None, None] for s in spatial) and comp.tgt.backend not in STATIC_SHAPE_BACKENDS
    fixed_sizes = lone_fixed_sizes(graph.model)
    result = {}
    for size in sorted(set(sizes)):
        if size != base and fixed_sizes:
            name, given = fixed_sizes[0]
            raise BuildError(f"{graph.source}: --tiers {size}: Resize {name!r} resizes to the fixed size {given} "
                             "(F.interpolate(size=...)), and no other tensor of the model sets it, so the output keeps "
                             f"that size whatever the input's; only {base} can be served. Export with "
                             "scale_factor= (and dynamic height and width) to serve other sizes")
        dims, sized, tried, line = _input_dims_for(graph, spatial, out.name, base, size)
        if sized is None:
            near = _sizes_near(graph, spatial, out.name, base, size)
            hint = f"the nearest size{'s' * (len(near) > 1)} it gives: {', '.join(map(str, near))}" if near else \
                _size_line_hint(line) if line and line[1] else _size_step_hint(base, spatial[0].default_shape[2])
            fixed = [s for s in spatial if None not in s.shape[2:]]
            if fixed and not near:  # an export at one size may hard-code it (a Reshape to the exported map)
                hint += (f"; input {fixed[0].name!r} was exported at a fixed {format_shape(fixed[0].source_shape)}: "
                         "export it with dynamic height and width (dynamic_axes) to serve other sizes")
            raise BuildError(f"{graph.source}: no input size gives output size {size} ({'; '.join(tried)}); {hint}")
        _check_tier_memory(sized, size, comp.tgt, graph.source)
        part = "main" if size == base or dynamic else comp.add(f"size{size}", sized)
        result[str(size)] = {"part": part, "inputs": {name: d[1:] for name, d in dims.items()}}
    return result


SIZE_SEARCH = (0, 1, -1, 2, -2)  # offsets tried around the proportional input size (2n - 1 layers, floors)


def _input_dims_for(graph: Graph, spatial: list, output: str, base: int,
                    size: int) -> tuple[dict, Graph | None, list, tuple[int, int] | None]:
    """Input dims ([N, C, h, w] by input) at which the model's own layers give a size x size output, and the
    graph at them; else (_, None, what the input sizes tried gave, the line (a, b) of output = a*n + b rows
    from n input rows where two sizes tried ran on one). Tried: the input rows proportional to the output's,
    with SIZE_SEARCH's offsets; once two of them ran, first the rows that line names: a stack of layers makes
    a*n + b rows from n (a DCGAN's 8n + 24 from its latent map), not a multiple of n."""
    rows0 = spatial[0].default_shape[2]
    tried: list[str] = []
    ran: dict[int, int] = {}  # the first input's rows -> the output's
    line = None
    queue = [round(rows0 * size / base) + offset for offset in SIZE_SEARCH]
    done: set[int] = set()
    while queue:
        rows = queue.pop(0)
        if rows < 1 or rows in done:
            continue
        done.add(rows)
        dims = {s.name: [s.shape[0] if s.shape[0] is not None else "N", s.default_shape[1],
                         *(max(1, round(d * rows / rows0)) for d in s.default_shape[2:])] for s in spatial}
        given = "x".join(map(str, dims[spatial[0].name][2:]))
        try:
            sized = with_input_dims(graph, dims, f"output size {size}")
        except BuildError:
            tried.append(f"input {spatial[0].name!r} at {given} does not run")
            continue
        got = next(o.default_shape[2:] for o in sized.outputs if o.name == output)
        if list(got) == [size, size]:
            return dims, sized, tried, line
        tried.append(f"input {spatial[0].name!r} at {given} gives {'x'.join(map(str, got))}")
        ran[rows] = got[0]
        if line is None and len(ran) == 2:
            (n1, o1), (n2, o2) = ran.items()
            slope = (o2 - o1) // (n2 - n1)
            if slope > 0 and slope * (n2 - n1) == o2 - o1:
                line = slope, o1 - slope * n1
                aimed = (size - line[1]) / slope
                queue = [round(aimed), math.floor(aimed), math.ceil(aimed)] + queue
    return {}, None, tried, line


def _sizes_near(graph: Graph, spatial: list, output: str, base: int, size: int) -> list[int]:
    """The multiples of the output's alignment (the step at which every layer's grid lines up: 32 for a
    U-Net of five stride-2 levels) just below and above `size` that the model gives; none where the
    alignment is unknown (a global op such as InstanceNorm stops the receptive-field walk)."""
    try:
        step = spatial_program(graph, output)["align"][0]
    except RoiRefused:
        return []
    below = size // step * step
    return [s for s in (below, below + step) if s >= 1 and _input_dims_for(graph, spatial, output, base, s)[1]]


def _size_line_hint(line: tuple[int, int]) -> str:
    """Which sizes a model whose n input rows make a*n + b output rows can serve."""
    slope, intercept = line
    first = [slope * n + intercept for n in range(1, 40) if slope * n + intercept >= 1][:4]
    lost = " (a layer loses rows, as a ConvTranspose k3 s2 p1 without output_padding=1 makes 2n - 1)" \
        if intercept < 0 else ""
    return (f"its layers make {slope}n {'+' if intercept > 0 else '-'} {abs(intercept)} rows from n input rows{lost}: "
            f"choose sizes among {', '.join(map(str, first))}, ...")


def _check_tier_memory(sized: Graph, size: int, tgt: targets.Target, source: str) -> None:
    """Refuse a size whose largest activation, with the input of the node writing it, exceeds the target's memory."""
    largest = max(sized.node_costs(), key=lambda c: c.activation_bytes, default=None)
    if largest is not None and 2 * largest.activation_bytes > tgt.memory_mb * 2 ** 20:
        raise BuildError(f"{source}: at output size {size} node {largest.name!r} ({largest.op}) writes "
                         f"{largest.activation_bytes / 2 ** 20:.0f} MiB, which with its input exceeds target "
                         f"{tgt.name}'s memory_mb ({tgt.memory_mb} MiB); choose smaller sizes")


def _size_step_hint(output: int, given: int) -> str:
    """Which sizes a model whose `given` input rows make `output` rows can serve."""
    step = output // math.gcd(output, given)
    if output % given and given % output:  # e.g. 63 from 32: a ConvTranspose k3 s2 p1 without output_padding
        return (f"its output ({output}) is not a whole multiple of its input ({given}), as a ConvTranspose k3 s2 p1 "
                "without output_padding=1 makes it (2n - 1), so only the sizes its layers give can be served")
    return f"choose sizes that are multiples of {step}" if step > 1 else "choose sizes the model's layers give"


def _batch_parts(graph: Graph, comp: _Compiler, sizes: list[int]) -> dict[str, str]:
    fixed = [s for s in graph.inputs if not s.batch_dynamic]
    if not fixed and comp.tgt.backend in STATIC_SHAPE_BACKENDS:
        example = graph.inputs[0]
        raise BuildError(f"{graph.source}: --batch-sizes is for models exported with a fixed batch; this model's "
                         f"batch axis is dynamic, which a {comp.tgt.backend} artifact (static shapes) takes at batch "
                         "1, running a batch as batch-1 calls; to compile it at batch N give --input-shape "
                         f"{example.name}={format_shape(example.source_dims([4, *example.default_shape[1:]]))} (N=4: "
                         "a batch then runs in calls of 4, the last one padded)")
    if not fixed:
        raise BuildError(f"{graph.source}: --batch-sizes is for models exported with a fixed batch; this model's "
                         "batch axis is dynamic, so every batch size already runs in one call")
    exported = fixed[0].shape[0]
    result = {}
    for size in sorted(set(sizes)):
        if size == exported:
            result[str(size)] = "main"
            continue
        result[str(size)] = comp.add(f"batch{size}", with_batch(graph, exported, size))
    return result


# -- checks, run through the runtime on the staging bundle ------------------------------------------
def verify_serving(gen, feeds: dict[str, np.ndarray], precision: str, graphs: dict[str, Graph],
                   report: Progress) -> dict[str, Any]:
    """Run every part against the whole artifact on the held-out inputs; refuse fp32 results that
    differ by more than SPLIT_MAX_ABS; check size parts against their graph in ONNX Runtime;
    measure each tier. Returns the `serving_report` section."""
    whole = gen.parts.run("main", feeds)
    out: dict[str, Any] = {}
    for size, entry in gen.manifest["serving"].get("tiers", {}).get("sizes", {}).items():
        if entry["part"] != "main":
            report("check sizes", 0, 1)
            out.setdefault("sizes", {})[size] = _check_part(gen, entry["part"], graphs[entry["part"]], precision)
    if gen.features is not None:
        report("check split", 0, 1)
        split = gen.features.run("head", feeds)
        diff = max(float(np.max(np.abs(split[s.name] - whole[s.name]))) for s in gen.outputs)
        _refuse(precision, diff, "trunk + head")
        if diff > 0:
            log.warning("split: trunk + head differ from the whole %s artifact by up to %.3g (%s); requests take "
                        "the split route every time, so each gives the same pixels each time, but not always the "
                        "whole artifact's (run())", precision, diff, _levels(gen, diff))
        out["split"] = {"max_abs": diff, "head_share": gen.manifest["serving"]["split"]["head_share"]}
    rng = np.random.default_rng(0)
    for name, engine in gen.roi.items():
        report("check roi", 0, 1)
        first = {k: v[:1] for k, v in feeds.items()}
        roots = engine.roots(first)
        h, w = engine.frame_size(roots)
        rects = [((0, h), (0, w)), ((0, max(1, h // 2)), (0, max(1, w // 2))), ((h // 3, h), (w // 4, w)),
                 *_edge_strips(h, w)]
        while len(rects) < ROI_CHECKS:
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            rects.append(((y0, int(rng.integers(y0 + 1, h + 1))), (x0, int(rng.integers(x0 + 1, w + 1)))))
        diffs = [float(np.max(np.abs(engine.region(roots, r) - whole[name][:1, :, r[0][0]:r[0][1], r[1][0]:r[1][1]])))
                 for r in rects]
        _refuse(precision, max(diffs), f"region of {name!r}")
        # a corner region of 1/16 of the frame: where it needs the whole input, every region does
        corner = ((0, max(1, h // 4)), (0, max(1, w // 4)))
        whole_input = engine.crops_nothing(roots, corner)
        if whole_input:
            log.warning("output %r: every region needs the whole input (the receptive field spans it), so a "
                        "region request computes the whole frame and crops it: no faster than a full one", name)
        out.setdefault("roi", {})[name] = {"max_abs": max(diffs), "checked_rects": len(rects),
                                          "bit_exact": max(diffs) == 0.0, "needs_whole_input": whole_input}
    if gen.batch_parts:
        report("check batches", 0, 1)
        count, diffs = len(next(iter(feeds.values()))), []
        for size, part in sorted(gen.batch_parts.items()):  # each run once (the largest alone covered 8 samples)
            rows = np.arange(size) % count  # held-out rows, repeated where there are fewer
            try:
                got = gen.parts.run(part, {name: array[rows] for name, array in feeds.items()})
            except Exception as exc:  # the runtime's own error, for an export that hard-codes its batch
                raise BuildError(f"the batch-{size} artifact of {gen.manifest['model']['source']} does not run: "
                                 f"{str(exc).strip().splitlines()[0]}. The model hard-codes its batch somewhere "
                                 "edgegen cannot rewrite; re-export it with a dynamic batch axis instead") from None
            diffs += [float(np.max(np.abs(got[s.name] - whole[s.name][rows]))) for s in gen.outputs]
        diff = max(diffs)
        _refuse(precision, diff, "batch-N artifacts")
        out["batch_sizes"] = {"max_abs": diff, "sizes": sorted(gen.batch_parts)}
    tiers = gen.manifest.get("serving", {}).get("tiers")
    if tiers:
        out["tiers"] = _tier_report(gen, tiers, feeds, whole, precision)
    return out


def _edge_strips(h: int, w: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Regions along each edge of an h x w frame, a few rows or columns deep, and the four corners: where a
    region's window meets the frame's padding, and where a backend's own int8 rounding of a cropped feature
    map (OpenVINO) left a frame's top rows a level or two off."""
    dh, dw = max(1, h // 8), max(1, w // 8)
    return [((0, dh), (0, w)), ((h - dh, h), (0, w)), ((0, h), (0, dw)), ((0, h), (w - dw, w)),
            ((0, dh), (w - dw, w)), ((h - dh, h), (0, dw)),
            ((min(1, h - dh), min(1, h - dh) + dh), (w // 3, w // 3 + dw))]  # one row in from the top


def _levels(gen, diff: float) -> str:
    """A max-abs difference in 8-bit levels of the image outputs' declared range, where there is one."""
    spans = [s.range[1] - s.range[0] for s in gen.outputs if s.role == "image" and s.range]
    return f"{diff * 255 / max(spans):.1f} levels of an 8-bit image" if spans else "its outputs have no pixel range"


def _check_part(gen, name: str, graph: Graph, precision: str) -> dict[str, Any]:
    """A part against its own graph run by ONNX Runtime on seeded inputs at the part's shapes."""
    from .build import VERIFY_SEED
    from .inputs import fixed_batch, sample_feeds
    from .source import SourceSession

    specs = gen.parts.inputs(name)
    feeds = sample_feeds(specs, [VERIFY_SEED + i for i in range(fixed_batch(specs) or 1)])  # a fixed batch: full
    with tempfile.TemporaryDirectory(prefix="edgegen-part-") as tmp:
        graph.save(Path(tmp) / "part.onnx")
        expected = SourceSession(Path(tmp) / "part.onnx").run(feeds)
    got = gen.parts.run(name, feeds)
    diff = max(float(np.max(np.abs(got[s.name] - expected[s.name]))) for s in gen.parts.outputs(name))
    if precision == "fp32" and diff > PART_MAX_ABS:
        raise BuildError(f"part {name} differs from its fp32 graph by {diff:.3g} max-abs (limit {PART_MAX_ABS}); "
                         "the build is refused. Report this model to the edgegen developers.")
    return {"max_abs_vs_graph": diff}


def _area_downscale(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWxC uint8 pixels averaged down to `size` (each output pixel the mean of the input area it covers:
    blocks at a whole ratio, Pillow's BOX filter at another, e.g. a 15x15 preview of a 32x32 image)."""
    (height, width), (h, w) = pixels.shape[:2], size
    if height % h == 0 and width % w == 0:
        return pixels.astype(np.float64).reshape(h, height // h, w, width // w, -1).mean(axis=(1, 3))
    from PIL import Image  # build-time only

    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c])).resize((w, h), Image.BOX))
                for c in range(pixels.shape[2])]
    return np.stack(channels, axis=-1).astype(np.float64)


def _refuse(precision: str, diff: float, what: str) -> None:
    if precision == "fp32" and diff > SPLIT_MAX_ABS:
        raise BuildError(f"the {what} differs from the whole fp32 artifact by {diff:.3g} max-abs (limit "
                         f"{SPLIT_MAX_ABS}); the build is refused. Report this model to the edgegen developers "
                         "with `edgegen inspect` output.")


def _tier_report(gen, tiers: dict[str, Any], feeds: dict[str, np.ndarray], whole: dict[str, np.ndarray],
                 precision: str) -> dict[str, Any]:
    """Cost of each tier (MACs, p50 of a request served end to end with caches off) and the preview's
    fidelity: PSNR against the full image downscaled, and (upscaled) against the full image."""
    request = _sample_request(gen, feeds)
    full = tiers.get("full", {}).get("output") or gen.image_outputs[0]
    full_pixels = gen.render([request])[0].pixels
    rows = [{"tier": "full", "output": full, "macs": gen.manifest["model"]["macs"],
             "p50_ms": _p50(lambda: gen.render([request]))}]
    preview = tiers.get("preview")
    if preview:
        raw = (gen.features.run(preview["part"], feeds) if preview["trunk"] else
               gen.parts.run(preview["part"], feeds))[preview["output"]]
        diff = float(np.max(np.abs(raw - whole[preview["output"]])))
        _refuse(precision, diff, "preview part")
        small = gen.render([{**request, "output": preview["output"]}])[0].pixels.astype(np.float64)
        down = _area_downscale(full_pixels, small.shape[:2])
        macs = gen.parts.macs(preview["part"]) + (gen.parts.macs("trunk") if preview["trunk"] else 0) + \
            (gen.parts.macs("upscaler") if preview.get("upscale") == "upscaler" else 0)
        row = {"tier": "preview", "output": preview["output"], "macs": macs,
               "p50_ms": _p50(lambda: gen.render([{**request, "quality": "preview"}])),
               "max_abs_vs_whole": diff, "psnr_vs_full_downscaled_db": round(psnr(down, small, 255.0), 2)}
        if preview.get("upscale"):
            up = gen.render([{**request, "quality": "preview"}])[0].pixels.astype(np.float64)
            row.update(upscale=preview["upscale"], psnr_upscaled_vs_full_db=round(psnr(full_pixels, up, 255.0), 2))
        rows.append(row)
    for size, entry in tiers.get("sizes", {}).items():
        sized = {**request, "size": int(size)}
        for spec in (s for s in gen.inputs if s.role == "image" and s.name in entry["inputs"]):
            field = _picture_field(gen, spec)  # a picture of the size's input size (held-out pixels repeated)
            _, height, width = entry["inputs"][spec.name]
            sized[field] = np.resize(request[field], (height, width, *request[field].shape[2:]))
        # the whole dynamic-size artifact serves it: a fully-convolutional model's MACs scale with the area
        macs = gen.parts.macs(entry["part"]) if entry["part"] != "main" else round(
            gen.manifest["model"]["macs"] * int(size) ** 2 / (full_pixels.shape[0] * full_pixels.shape[1]))
        rows.append({"tier": f"size{size}", "output": full, "macs": macs, "p50_ms": _p50(lambda: gen.render([sized]))})
    return {"rows": rows}


def _picture_field(gen, spec) -> str:
    """The request field an image input's picture goes in: `image` for the first, its name for another."""
    return "image" if spec.name == next(s.name for s in gen.inputs if s.role == "image") else spec.name


def _sample_request(gen, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """A request for the first held-out input: seed 0 for latents, label 0, the held-out image."""
    from .runtime.images import tensor_to_uint8

    request: dict[str, Any] = {}
    for spec in gen.inputs:
        if spec.role == "latent":
            request["seed"] = 0
        elif spec.role == "label":
            request["label"] = 0
        elif spec.role == "image":  # the first as `image`, another (a mask) by its name, as a request gives them
            request[_picture_field(gen, spec)] = tensor_to_uint8(feeds[spec.name][:1], spec.range or [0.0, 1.0])[0]
        else:
            request[spec.name] = feeds[spec.name][0]
    return request


def _p50(run: Callable[[], Any], runs: int = 10) -> float:
    run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)


def build_step(graph: Graph, tgt: targets.Target, precision: str, staging: Path, options: ServingOptions,
               precompute: str | None, manifest: dict[str, Any], feeds: dict[str, np.ndarray],
               report: Progress) -> dict[str, Any]:
    """The serving part of a build, run on the staging bundle before its manifest is written:
    compile and check the parts, then render the precomputed assets. Returns manifest sections."""
    from .bundle import file_hashes
    from .precompute import load_requests, render_assets, rendered_on
    from .runtime.generator import Generator, ServeConfig

    # a model with a lower-resolution image output gets its preview tier unasked, except on an FPGA,
    # where every part is another NPU program (and bitstream)
    wanted = options.wanted or (tgt.backend != "fpga" and preview_outputs(graph) is not None)
    if not wanted and not precompute:
        return {}
    requests = load_requests(precompute) if precompute else []
    extra: dict[str, Any] = {}
    graphs: dict[str, Graph] = {}
    if wanted:
        parts, serving, graphs = compile_serving(graph, tgt, precision, staging, options, report)
        extra.update(parts=parts, serving=serving)
    session = backends.session_module(tgt.backend).Session(staging, manifest["session"], tgt.threads,
                                                           host_fallback=True)
    draft = {**manifest, **extra, "files": file_hashes(staging)}
    gen = Generator(staging, draft, session, tgt.threads, host_fallback=True,
                    config=ServeConfig(cache_bytes=0, feature_cache_bytes=0, assets=False))
    if wanted:
        extra["serving_report"] = verify_serving(gen, feeds, precision, graphs, report)
    if requests:
        where = rendered_on(manifest)
        count = render_assets(gen, requests, staging, where, report)
        extra["assets"] = {"count": count, "rendered_on": where, "requests": str(Path(precompute).resolve())}
    return extra
