"""`edgegen build`: model + target -> verified bundle.

Load and clean the graph, refuse ops the target cannot run, apply the passes the precision
asks for (int8: calibrate, quantize to QDQ, keep layers in float until the quality floor
holds), compile with the target's backend, run the artifact against the fp32 source on
held-out inputs, and publish the bundle atomically with its manifest.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import shutil
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from . import __version__, backends, bundle, reference, targets
from .bench import BLOCK_RUNS, OtherLoad, host_cpus, interleaved, measure, paired_speed
from .errors import BackendUnavailableError, BuildError, UnsupportedOpError
from .graph import Graph
from .inputs import cost_batch, fixed_batch, run_batched, sample_feeds
from .metrics import compare, max_abs, quality_outputs, value_range
from .passes.floor import Evaluator, FloorNotMet, QualityFloor, delivered
from .serving import ServingOptions, build_step as serving_step
from .source import SourceRunError, SourceSession
from .specs import TensorSpec

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
FP32_MAX_ABS = 1e-3
# inputs that hold a map of classes or of coordinates (SPADE's segmentation, an inpainting mask, CIPS's grid)
MAP_NAMES = re.compile(r"seg|mask|semantic|parsing|layout|coord|grid", re.IGNORECASE)
REDUCED_PSNR_MARGIN_DB = 6.0
# A reduced-precision bundle's self-test asks for its build's PSNR less the margin, but never more than
# its precision guarantees: the build host may compute more precisely than the device (an f16 hint run in
# f32 by a CPU plugin, a GPU or NPU target verified on the CPU). fp16 has an 11-bit significand, bf16 8 bits.
REDUCED_PSNR_CEILING_DB = {"fp16": 50.0, "bf16": 35.0}
VERIFY_SEED = 10_000
# inputs no choice of the build saw (the prune allocation and the floor search choose by the held-out ones):
# their fidelity is reported beside the held-out inputs'
FRESH_SEED = 20_000
# where a backend's own int8 execution misses a floor its int8 graph meets in ONNX Runtime, the search runs
# once more against the floor raised by the loss and this margin
BACKEND_LOSS_MARGIN = {"psnr_db": 0.05, "ssim": 0.0005}
PRUNED_PSNR_WARNING_DB = 30.0  # a ratio that leaves less than this (no floor given) is warned about
OUTSIDE_MARGIN, OUTSIDE_SHARE = 0.01, 0.01  # an image output beyond its range by 1% of it, for over 1% of values


class BackendMissedFloor(BuildError):
    """The artifact misses the floor that its int8 graph meets in ONNX Runtime: the backend's own int8
    execution lost the difference."""

    def __init__(self, message: str, backend: str, graph_quality: dict[str, float], quality: dict[str, float]):
        super().__init__(message)
        self._arguments = (message, backend, graph_quality, quality)  # pickled whole (a fleet build's Ray task)
        self.loss = {key: max(0.0, graph_quality[key] - quality[key]) for key in ("psnr_db", "ssim")}
        ssim = f" / {self.loss['ssim']:.4f} SSIM" if self.loss["ssim"] > 0 else ""
        self.loss_note = f"{backend}'s own int8 execution scored {self.loss['psnr_db']:.2f} dB PSNR{ssim} below " \
            "ONNX Runtime's on the chosen mix, missing the floor."

    def __reduce__(self) -> tuple[type, tuple]:
        return type(self), self._arguments

    def raised_floor(self, floor: QualityFloor) -> QualityFloor | None:
        """The floor raised by the loss and a margin, for the search; None where it cannot be raised."""
        psnr = floor.min_psnr + self.loss["psnr_db"] + BACKEND_LOSS_MARGIN["psnr_db"] \
            if floor.min_psnr is not None else None
        ssim = floor.min_ssim + self.loss["ssim"] + BACKEND_LOSS_MARGIN["ssim"] if floor.min_ssim is not None else None
        if ssim is not None and ssim > 1:
            return None
        return QualityFloor(round(psnr, 2) if psnr is not None else None, round(ssim, 4) if ssim is not None else None)


@dataclass
class BuildOptions:
    """Everything a build can be asked for besides the model, target and output directory."""

    precision: str | None = None  # default: the target's
    samples: int = 8  # held-out inputs for verification and the quality floor
    min_psnr: float | None = None
    min_ssim: float | None = None
    calibration: str | None = None  # None/'spec', 'zoo', an image folder, an .npy/.npz file
    calibration_count: int = 32
    calibration_method: str = "minmax"
    prune: float | None = None  # channel ratio; with a floor, the largest ratio up to this that meets it
    prune_to_macs: int | None = None
    graph_options: dict[str, Any] = field(default_factory=dict)  # Graph.load keyword arguments
    bitstream: bool = True  # FPGA board targets: run the toolchain (False: program and images only)
    # serving (edgegen.serving): extra parts, their checks, and precomputed assets
    split: list[str] | None = None  # ["auto"] or tensor names: trunk/head for the feature cache
    roi: bool = False  # parts and spatial programs for regions, edits and tiles
    tiers: list[int] | None = None  # output sizes a fully-convolutional model is compiled for
    preview_upscale: str | None = None  # "lanczos" or an upscaler model for the preview tier
    batch_sizes: list[int] | None = None  # batch-N artifacts of a fixed-batch model
    precompute: str | None = None  # request file rendered into assets/

    @property
    def serving(self) -> ServingOptions:
        return ServingOptions(self.split, self.roi, self.tiers, self.preview_upscale, self.batch_sizes)

    @property
    def floor(self) -> QualityFloor:
        return QualityFloor(self.min_psnr, self.min_ssim)


@dataclass
class BuildResult:
    """What a build produced."""

    out: Path
    manifest: dict[str, Any]

    @property
    def fidelity(self) -> dict[str, Any]:
        return self.manifest["fidelity"]


def target_precision(tgt: targets.Target, asked: str | None) -> str:
    """The precision a build for this target uses: the one asked for, else the target's default."""
    precision = asked or tgt.precision
    if precision not in tgt.precisions:
        raise BuildError(f"target {tgt.name} does not offer precision {precision!r}; it offers "
                         f"{', '.join(tgt.precisions)} (see {tgt.path})")
    return precision


def build(model: str | Path | Graph, target: str, out: str | Path, options: BuildOptions | None = None,
          progress: Progress | None = None, **overrides: Any) -> BuildResult:
    """Build a bundle for one target; keyword overrides set BuildOptions fields (e.g. precision="fp16")."""
    opts = replace(options or BuildOptions(), **overrides)
    report = progress or (lambda stage, done, total: None)
    out = Path(out)
    tgt = targets.load(target)
    if not opts.bitstream and "board" in tgt.backend_options:
        tgt = replace(tgt, backend_options={**tgt.backend_options, "bitstream": False})
    elif not opts.bitstream:
        log.warning("--no-bitstream: target %s makes no bitstream (FPGA board targets do); nothing to skip", tgt.name)
    precision = target_precision(tgt, opts.precision)
    if opts.samples < 1:
        raise BuildError(f"--samples must be >= 1, got {opts.samples}")
    if opts.calibration_count < 1:
        raise BuildError(f"--calibration-count must be >= 1, got {opts.calibration_count}")
    _refuse_missing_paths(opts)
    bundle.check_output_dir(out)
    report("load", 0, 1)
    source = model if isinstance(model, Graph) else Graph.load(model, **opts.graph_options)
    unit = fixed_batch(source.inputs)
    if unit and opts.samples < unit:  # the latency and the reference input run one whole batch of held-out inputs
        raise BuildError(f"--samples {opts.samples}: {source.source} was exported with a fixed batch of {unit}; give "
                         f"at least --samples {unit}")
    _warn_unused_ranges(source, opts.graph_options)
    compiler = backends.compiler_module(tgt.backend)
    _refuse_unsupported(compiler.unsupported_nodes(source, tgt), source, tgt)
    _refuse_passed_through(source, tgt, precision)
    feeds, inputs_from = _verification_feeds(source, opts, precision)
    if inputs_from is None:
        _warn_synthetic_maps(source)
    per_call = source.samples_per_run()
    reference_run = SourceSession(source.reference)
    _refuse_batch_dependence(source, reference_run, feeds)
    expected = run_batched(reference_run.run, source.inputs, feeds, per_call)
    _refuse_non_finite(source, expected, inputs_from)
    _warn_outside_range(source, expected)
    evaluator = Evaluator(source.inputs, source.outputs, feeds, expected, per_call)
    lowerings = backends.int8_lowerings(tgt)
    search = opts  # the floor the passes search against: the user's, raised once by a backend's own loss
    for attempt in (1, 2):
        try:
            _build_bundle(source, tgt, precision, opts, search, out, compiler, lowerings, evaluator, feeds,
                          expected, reference_run, per_call, inputs_from, report)
            break
        except BackendMissedFloor as miss:
            first_miss, raised = miss, miss.raised_floor(search.floor)
            if attempt == 2 or raised is None:
                raise
            log.warning("%s Searching again with the floor raised by that loss (%s).", miss.loss_note,
                        raised.describe())
            search = replace(opts, min_psnr=raised.min_psnr, min_ssim=raised.min_ssim)
        except BuildError as unmet:  # the second search's own failure (int8's or pruning's), naming the raised floor
            if search is opts or search.floor.describe() not in str(unmet):
                raise
            raise BuildError(f"{first_miss.loss_note} The search against the floor raised by that loss "
                             f"({search.floor.describe()}, yours: {opts.floor.describe()}) failed: {unmet} Build for "
                             "another target (x86-onnxruntime), or in fp16/bf16 here.") from unmet
    report("done", 1, 1)
    return BuildResult(out, bundle.read_manifest(out))


def _build_bundle(source: Graph, tgt: targets.Target, precision: str, opts: BuildOptions, search: BuildOptions,
                  out: Path, compiler, lowerings: tuple[str, ...], evaluator: Evaluator, feeds: dict[str, np.ndarray],
                  expected: dict[str, np.ndarray], reference_run: SourceSession, per_call: int,
                  inputs_from: str | None, report: Progress) -> None:
    """Passes (their floor: `search`'s), compile, verify against `opts`' floor, and publish the bundle."""
    graph, passes = _apply_passes(source, precision, search, evaluator, report, lowerings, compiler)
    if search is not opts and "quantize" in passes:
        passes["quantize"]["searched_against"] = search.floor.describe()
    fresh = _fresh_inputs(source, opts, precision, reference_run, per_call) if "prune" in passes or opts.floor \
        else None
    staging = bundle.staging_dir(out)
    try:
        report("compile", 0, 1)
        compiled = compiler.compile(graph, tgt, precision, staging)
        for warning in compiled.pop("warnings", []):  # the whole artifact's; its serving parts repeat them
            log.warning("%s", warning)
        report("verify", 0, 1)
        # an fp32 artifact must equal what it was compiled from: the source, or the pruned graph
        compiled_from = expected if graph is source or precision != "fp32" else \
            run_batched(SourceSession(graph.model).run, source.inputs, feeds, per_call)
        pruned = passes.get("prune", {})
        spent = f" The prune search chose {pruned['ratio']:.0%} against the floor in fp32, spending it: a smaller " \
            "--prune may meet it." if "floor" in pruned.get("search", {}) else ""
        checks = _verify(source, tgt, precision, opts.floor, staging, compiled["session"], feeds, expected,
                         compiled_from, reference_run.describe, passes.get("quantize", {}).get("result"), per_call,
                         spent, fresh)
        if inputs_from:
            checks["fidelity"]["inputs_from"] = inputs_from
        manifest = _manifest(source, graph, tgt, precision, compiled, checks, passes)
        manifest.update(serving_step(graph, tgt, precision, staging, opts.serving, opts.precompute, manifest,
                                     feeds, report))
        bundle.write_manifest(staging, manifest)
        bundle.publish_when_free(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _folder_inputs(source: Graph, opts: BuildOptions, precision: str, seed: int,
                   skip: int = 0) -> tuple[dict[str, np.ndarray], str] | None:
    """--samples inputs from a --calibration folder's images that calibration does not read (besides the `skip`
    held-out ones), other inputs seeded from `seed`, and where they come from; None where it names no folder or
    the folder holds too few: the user's own pictures measure the build (smooth synthetic ones hid up to 12 dB a
    photo loses)."""
    if opts.calibration in (None, "spec", "zoo") or not Path(opts.calibration).is_dir():
        return None
    from .passes.calibration import held_out_images

    taken = opts.calibration_count if _calibrates(precision, opts) else 0
    picked = held_out_images(source.inputs, Path(opts.calibration), taken, opts.samples, skip, seed)
    return (picked.feeds, picked.source) if picked else None


def _calibrates(precision: str, opts: BuildOptions) -> bool:
    """Whether the build calibrates: int8 quantizes, pruning scores channels on calibration activations."""
    return precision == "int8" or opts.prune is not None or opts.prune_to_macs is not None


def _fresh_inputs(source: Graph, opts: BuildOptions, precision: str, reference_run: SourceSession,
                  per_call: int) -> dict[str, Any] | None:
    """Inputs no choice of the build saw, with the source's outputs on them: seeded samples from FRESH_SEED, a
    calibration folder's images after the held-out ones (where it holds enough), or an array file's rows after
    the held-out ones (None where it holds no more)."""
    source_file = opts.calibration
    from_folder = _folder_inputs(source, opts, precision, FRESH_SEED, skip=opts.samples)
    if from_folder:
        feeds, where = from_folder[0], {"inputs_from": from_folder[1]}
    elif not source_file or Path(source_file).suffix not in (".npy", ".npz"):
        feeds = sample_feeds(source.inputs, list(range(FRESH_SEED, FRESH_SEED + opts.samples)))
        where = {"seed": FRESH_SEED}
    else:
        from .passes.calibration import load_calibration

        start = (opts.calibration_count if _calibrates(precision, opts) else 0) + opts.samples
        arrays = load_calibration(source.inputs, source_file, start + opts.samples).feeds
        if len(next(iter(arrays.values()))) < start + opts.samples:
            return None
        feeds = {name: array[start:start + opts.samples] for name, array in arrays.items()}
        where = {"inputs_from": f"rows {start}..{start + opts.samples - 1} of {Path(source_file).name}"}
    lever = "a smaller --prune" if opts.prune is not None else "a larger --prune-to-macs" \
        if opts.prune_to_macs is not None else "a floor set higher than you need"  # what gives the floor margin
    return {"feeds": feeds, "expected": run_batched(reference_run.run, source.inputs, feeds, per_call),
            "lever": lever, **where}


def _verification_feeds(source: Graph, opts: BuildOptions,
                        precision: str) -> tuple[dict[str, np.ndarray], str | None]:
    """The held-out inputs: seeded samples of the input spec; or, where --calibration names an array file
    (real inputs: one-hot segmentation maps, masks), its rows after those calibration takes (the file's last
    rows where it holds no more; its first where the build does not calibrate), or where it names a folder of
    images holding enough that calibration does not read, those; and where they come from."""
    from_folder = _folder_inputs(source, opts, precision, VERIFY_SEED)
    if from_folder:
        return from_folder
    source_file = opts.calibration
    if not source_file or Path(source_file).suffix not in (".npy", ".npz"):
        return sample_feeds(source.inputs, list(range(VERIFY_SEED, VERIFY_SEED + opts.samples))), None
    from .passes.calibration import load_calibration

    taken = opts.calibration_count if _calibrates(precision, opts) else 0  # the rows calibration takes first
    arrays = load_calibration(source.inputs, source_file, taken + opts.samples).feeds
    rows = len(next(iter(arrays.values())))
    start = taken if rows >= taken + opts.samples else max(0, rows - opts.samples)
    shared = ", calibration took them too: the file holds no more" if start < taken else ""
    return ({name: array[start:start + opts.samples] for name, array in arrays.items()},
            f"rows {start}..{min(rows, start + opts.samples) - 1} of {Path(source_file).name}{shared}")


def _refuse_batch_dependence(source: Graph, reference_run: SourceSession, feeds: dict[str, np.ndarray]) -> None:
    """Refuse a dynamic-batch model whose output for one input changes with the inputs beside it in the
    batch: its export froze a batch size into shape arithmetic (Swin-style window code calls int() on a
    shape, which the tracer records as a constant), so the file computes what PyTorch does only at the
    batch it was traced with, and the bundle would be verified at one batch and serve at another."""
    if fixed_batch(source.inputs) is not None or len(next(iter(feeds.values()))) < 2:
        return
    alone = reference_run.run({k: v[:1] for k, v in feeds.items()})
    try:
        pair = reference_run.run({k: v[:2] for k, v in feeds.items()})
    except SourceRunError as exc:  # runs on one input, fails on two: a batch of 1 written into a Reshape's shape
        raise BuildError(f"{source.source}: the model runs on one input but fails on a batch of two ({exc.failure}): "
                         f"{FROZEN_BATCH}") from None
    constants = {name for name, inputs in source.input_dependencies().items() if not inputs} | \
        {t.name for t in source.model.graph.initializer}
    for spec in source.outputs:
        _refuse_no_batch_axis(source, spec.name, np.shape(alone[spec.name]), np.shape(pair[spec.name]),
                              spec.name in constants)
    drift, limit = _fp32_drift(source, {name: values[:1] for name, values in pair.items()}, alone)
    if drift > limit:
        raise BuildError(f"{source.source}: the model's output for one input depends on how many inputs run with "
                         f"it (the first held-out input alone and in a batch of two differ by {drift:.3g} max-abs): "
                         f"{FROZEN_BATCH}")


def _refuse_no_batch_axis(source: Graph, name: str, alone: tuple[int, ...], pair: tuple[int, ...],
                          constant: bool) -> None:
    """An output whose first axis is not the batch: one input gives it other than one row, or two inputs other
    than one (a constant of batch 1, served as it is) or two."""
    if alone[:1] == (1,) and (pair[:1] == (2,) or pair[:1] == (1,) and constant):
        return
    shape = "x".join(map(str, alone)) or "a scalar"
    if constant:
        raise BuildError(f"{source.source}: output {name!r} is a constant in the file ({shape}, computed from no "
                         "input), and its first axis is not a batch axis: edgegen batches requests along the first "
                         "axis of every output. Drop it from the model's outputs (the application can hold the "
                         "constant itself), or give it a batch axis of 1")
    raise BuildError(f"{source.source}: output {name!r} has no batch axis: it is {shape} for one input and "
                     f"{'x'.join(map(str, pair)) or 'a scalar'} for a batch of two, and edgegen batches requests "
                     "along the first axis of every output. " + (
                         FROZEN_BATCH[0].upper() + FROZEN_BATCH[1:]
                         if alone[:1] == pair[:1] == (1,) else "Export it with the batch as its first axis (no "
                         "reduction or reshape across the batch), or drop it from the model's outputs"))


def _refuse_passed_through(source: Graph, tgt: targets.Target, precision: str) -> None:
    """An output that is a graph input itself (the file lists the input as an output too) builds in fp32 for ONNX
    Runtime and LiteRT; ONNX Runtime's quantizer and float16 converter and OpenVINO's converter take the two for
    different tensors of one name."""
    inputs = {s.name for s in source.inputs}
    passed = [s.name for s in source.outputs if s.name in inputs]
    if passed and (precision != "fp32" or tgt.backend not in ("onnxruntime", "tflite")):
        raise BuildError(f"{source.source}: output {passed[0]!r} is the input {passed[0]!r} itself, passed through, "
                         f"which {precision} builds for {tgt.name} cannot compile (the model's input and output are "
                         "one tensor). Drop it from the model's outputs (the caller has the input already), or "
                         "build it in fp32 for an onnxruntime or litert target")


FROZEN_BATCH = ("the export froze a batch size into its shape arithmetic (such as `x.view(B, C, H, W)` with B taken "
                "from a shape the tracer recorded as a constant, a Resize to `sizes` with a batch in them, or "
                "`B = int(x.shape[0] / ...)` in Swin-style window "
                "code; the exporter warns about it with a TracerWarning), so the file is right only at the batch it "
                "was traced with. Use -1 or x.shape[0] without int() there and re-export, or export with a fixed "
                "batch (no dynamic batch axis)")


def _warn_synthetic_maps(source: Graph) -> None:
    """Warn where an input named like a segmentation map, mask or coordinate grid gets synthetic samples
    (seeded Gaussian noise as a latent or condition, smooth images as an image): verification and
    calibration then run on inputs unlike the real ones."""
    for spec in source.inputs:
        if spec.role in ("latent", "condition", "image", "tensor") and len(spec.default_shape) == 4 and \
                min(spec.default_shape[2:]) > 1 and MAP_NAMES.search(spec.name):
            fed = "smooth synthetic images" if spec.role == "image" else "random masks (seeded noise > 0)" \
                if np.dtype(spec.dtype) == np.bool_ else "seeded Gaussian noise"
            log.warning("input %r (%s) is fed %s to verify and calibrate the build: if it is a segmentation map, "
                        "mask or coordinate grid, the fidelity printed is not measured on inputs like the real "
                        "ones; give real ones with --calibration FILE.npz (quantization and pruning fit to them)",
                        spec.name, spec.role, fed)


def _first_non_finite(source: Graph, arrays: dict[str, np.ndarray]) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(output name, its values, where they are NaN or infinity) of the first float output that holds any."""
    for spec in source.outputs:
        values = arrays[spec.name]
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return spec.name, values, ~np.isfinite(values)
    return None


def _refuse_non_finite(source: Graph, expected: dict[str, np.ndarray], inputs_from: str | None) -> None:
    """A source whose outputs hold NaN or infinity on the held-out inputs has nothing to verify against (its
    bundle would fail its own self-test; int8 calibration fails on it)."""
    found = _first_non_finite(source, expected)
    if found:
        name, values, bad = found
        kinds = " and ".join(k for k, f in (("NaN", np.isnan), ("infinity", np.isinf)) if f(values).any())
        given = inputs_from or "seeded latents and smooth synthetic images"
        raise BuildError(
            f"{source.source}: the fp32 source's output {name!r} holds {kinds} in {bad.mean():.0%} of its "
            f"values on the {len(values)} held-out inputs ({given}), so no artifact can be verified against it. "
            "Fix the model (a log or a division of values that reach 0, an exp that overflows), or give the "
            "inputs it is meant for with --calibration FILE.npz (the rows after the calibration ones verify the "
            "build) or --input-range LO,HI")


def _refuse_non_finite_artifact(source: Graph, tgt: targets.Target, precision: str,
                                actual: dict[str, np.ndarray]) -> None:
    """An artifact that gives NaN or infinity where the fp32 source's outputs are finite is no bundle (its
    PSNR is NaN, its self-test tolerance too, and NaN pixels are cast to black)."""
    found = _first_non_finite(source, actual)
    if found:
        name, values, bad = found
        why = (f"a weight or an activation of {source.source} exceeds {precision}'s range (fp16's largest value "
               "is 65504); build it in fp32 or int8, or scale that layer down in the model") \
            if precision != "fp32" else ("the compiled graph computes otherwise than the source; report this "
                                         "model to the edgegen developers with `edgegen inspect` output")
        raise BuildError(f"the {precision} artifact for {tgt.name} gives NaN or infinity in "
                         f"{np.count_nonzero(bad)} of output {name!r}'s {values.size} values on the {len(values)} "
                         f"held-out inputs, where the fp32 source's are finite: {why}")


def _warn_outside_range(source: Graph, expected: dict[str, np.ndarray]) -> None:
    """Warn when an image output's held-out values leave the range its 8-bit images and PSNR assume (an
    output no Tanh, Sigmoid or Clip bounds gets [0, 1] unless the user gives one)."""
    for spec in source.outputs:
        values = expected.get(spec.name)
        if spec.role != "image" or not spec.range or values is None or not values.size:
            continue
        lo, hi = spec.range
        margin = (hi - lo) * OUTSIDE_MARGIN
        outside = float(np.mean((values < lo - margin) | (values > hi + margin)))
        if outside > OUTSIDE_SHARE:
            # an image input whose range nothing declared was fed [0, 1] too: a model of pixel units (0..255)
            # was then built and scored on inputs it never sees (52 dB reported, 18 dB on real pictures)
            assumed = "".join(f"; the held-out inputs of {i.name!r} were drawn in [{i.range[0]:g}, {i.range[1]:g}], "
                              f"assumed ({i.range_assumed}): if the model takes other values (0..255 pixels), give "
                              "them with --input-range LO,HI too" for i in source.inputs
                              if i.role == "image" and i.range and i.range_assumed)
            log.warning("output %r: on the held-out inputs the fp32 source spans %.3g..%.3g, %.0f%% of its values "
                        "outside the range [%g, %g] its 8-bit images use (they clip there; PSNR is measured over the "
                        "wider span the source reaches, so it does not show the clipping); give the real range with "
                        "--output-range LO,HI%s", spec.name, float(values.min()), float(values.max()),
                        100 * outside, lo, hi, assumed)


def _refuse_unsupported(missing: list[tuple[str, str, str]], graph: Graph, tgt: targets.Target) -> None:
    if missing:
        lines = "; ".join(f"node {n!r} (op {op}): {why}" for n, op, why in missing[:5])
        raise UnsupportedOpError(f"{graph.source}: {len(missing)} node(s) cannot run on target {tgt.name}: {lines}. "
                                 "Replace these ops in the model before export, or pick another target "
                                 "(`edgegen inspect MODEL` shows support per target).")


def _warn_unused_ranges(source: Graph, graph_options: dict[str, Any]) -> None:
    """An --input-range (--output-range) on a model with no image input (output): it ranges image tensors only."""
    for flag, key, specs in (("--input-range", "input_range", source.inputs),
                             ("--output-range", "output_range", source.outputs)):
        if graph_options.get(key) and not any(s.role == "image" for s in specs):
            log.warning("%s %s: not used, %s has no image %s (a range maps image tensors to pixels; see its roles "
                        "with `edgegen inspect`, --role NAME=image to name one)", flag,
                        ",".join(f"{v:g}" for v in graph_options[key]), source.name, key.split("_")[0])


def _refuse_missing_paths(opts: BuildOptions) -> None:
    """A file or folder an option names that is not there, before anything is compiled (it was found at the
    step that reads it, after a whole build, once per target)."""
    for flag, value, words in (("--calibration", opts.calibration, ("spec", "zoo")),
                               ("--precompute", opts.precompute, ()), ("--preview-upscale", opts.preview_upscale,
                                                                       ("lanczos",))):
        if value and value not in words and not str(value).startswith("zoo:") and not Path(value).exists():
            raise BuildError(f"{flag} {value}: no such file or folder; check the path")


def _apply_passes(graph: Graph, precision: str, opts: BuildOptions, evaluator: Evaluator, report: Progress,
                  lowerings: tuple[str, ...] = (), compiler=None) -> tuple[Graph, dict[str, Any]]:
    """Graph-to-graph passes the precision asks for (int8: first the backend's exact `lowerings`; the quality
    floor scored on the QDQ graph as the backend's `compiler` module gives it to the device); returns the
    graph to compile and their reports."""
    passes: dict[str, Any] = {}
    if not _calibrates(precision, opts):
        if opts.calibration is not None:
            given = "; its first rows are the held-out inputs" if Path(opts.calibration).suffix in (".npy", ".npz") \
                else "; its images are the held-out inputs" if Path(opts.calibration).is_dir() else ""
            log.warning("--calibration %s is not used to calibrate: a %s build without pruning does not calibrate%s",
                        opts.calibration, precision, given)
        defaults = BuildOptions()
        unused = [f"{flag} {value}" for flag, value, default in (
            ("--calibration-count", opts.calibration_count, defaults.calibration_count),
            ("--calibration-method", opts.calibration_method, defaults.calibration_method)) if value != default]
        if unused:
            log.warning("%s: not used, a %s build without pruning does not calibrate", ", ".join(unused), precision)
        return graph, passes
    from .passes.calibration import load_calibration

    report("calibrate", 0, 1)
    calibration = load_calibration(graph.inputs, opts.calibration, opts.calibration_count, graph.name,
                                   sum(c.activation_bytes for c in graph.node_costs()))
    if opts.calibration_count > VERIFY_SEED and not str(opts.calibration or "").lower().endswith((".npy", ".npz")):
        raise BuildError(f"--calibration-count {opts.calibration_count}: calibration draws seeds 0..count-1, which "
                         f"would reach the held-out inputs' seeds (from {VERIFY_SEED}) and score the build on data it "
                         f"calibrated on; give at most {VERIFY_SEED}, or calibrate on arrays (--calibration FILE.npz)")
    from .passes.lowering import SIZE_BOUND, lower

    if opts.tiers:
        lowerings = tuple(name for name in lowerings if name not in SIZE_BOUND)
    source = graph
    if opts.prune is not None or opts.prune_to_macs is not None:
        compiled_macs = (lambda g: sum(c.macs for c in lower(g, lowerings)[0].node_costs())) \
            if precision == "int8" and lowerings else None  # a MAC budget holds for what ships
        graph, passes["prune"] = _prune(graph, calibration, opts, evaluator, report, compiled_macs)
    if precision == "int8":
        try:
            graph, int8_passes = _quantize(graph, calibration, opts, evaluator, report, lowerings, compiler)
        except FloorNotMet as exc:
            if "floor" not in passes.get("prune", {}).get("search", {}):
                raise
            graph, int8_passes, passes["prune"] = _back_off_pruning(source, calibration, opts, evaluator, report,
                                                                    lowerings, compiler, passes["prune"], exc)
        passes.update(int8_passes)
    return graph, passes


def _quantize(graph: Graph, calibration, opts: BuildOptions, evaluator: Evaluator, report: Progress,
              lowerings: tuple[str, ...], compiler) -> tuple[Graph, dict[str, Any]]:
    """The int8 QDQ graph (the backend's lowerings first; the quality floor scored as the backend's `compiler`
    module deploys it) and its reports; FloorNotMet where no mix of int8 and float layers meets the floor."""
    from .passes.floor import search_float_layers
    from .passes.lowering import lower
    from .passes.norm_equalize import equalize_before_instance_norms
    from .passes.quantize import Quantizer, qdq_summary

    passes: dict[str, Any] = {}
    graph, equalized = equalize_before_instance_norms(graph, calibration)
    if equalized:
        passes["equalized"] = {"layers": equalized, "fp32": evaluator.quality(graph.model)}
    graph, lowered = lower(graph, lowerings)
    if lowered:
        passes["lowered"] = lowered
    quantizer = Quantizer(graph, calibration, opts.calibration_method, getattr(compiler, "SYMMETRIC_INT8_INPUTS", ()))
    report("quantize", 0, 1)
    model, floor_report = search_float_layers(quantizer.layers(), quantizer, evaluator, opts.floor,
                                              getattr(compiler, "int8_form", None),
                                              getattr(compiler, "INT8_ONLY", None),
                                              getattr(compiler, "EXACT_INT8", False))
    passes["quantize"] = {"ir": "QDQ ONNX (int8 per-channel symmetric weights, int8 per-tensor activations)",
                          "method": opts.calibration_method, "calibration": calibration.report(),
                          **floor_report, **qdq_summary(getattr(compiler, "lowered_form", lambda m: m)(model))}
    if quantizer.float_note:
        passes["quantize"]["float_by_design"] = quantizer.float_note
    _refuse_nothing_quantized(graph, passes["quantize"])
    return graph.with_model(model, [f"quantized to int8 QDQ ({opts.calibration_method})"]), passes


def _refuse_nothing_quantized(graph: Graph, summary: dict[str, Any]) -> None:
    """An int8 build in which no op is int8 would ship the float graph under the name int8."""
    if summary["quantized_ops"]:
        return
    ops = ", ".join(f"{op} x{n}" for op, n in summary["float_ops"].items()) or "none"
    why = f" ({summary['float_by_design']})" if summary.get("float_by_design") else ""
    raise BuildError(f"{graph.source}: int8 quantization left every op of the model in float ({ops}){why}: an int8 "
                     "bundle of it would be the float model. int8 quantizes standard ONNX layers (Conv, "
                     "ConvTranspose, Gemm, MatMul) and the ops between them; re-export the model with them, or "
                     "build it in fp32 (or fp16/bf16)")


def _back_off_pruning(source: Graph, calibration, opts: BuildOptions, evaluator: Evaluator, report: Progress,
                      lowerings: tuple[str, ...], compiler, pruned: dict[str, Any], failure: Exception
                      ) -> tuple[Graph, dict[str, Any], dict[str, Any]]:
    """int8 missed the floor at the ratio the prune search chose in fp32 (the pruning spent the floor): the
    largest smaller ratio on its grid whose int8 build meets it, bisected; the prune report lists the tries."""
    from .passes.prune import Pruner

    pruner = Pruner(source, calibration)
    grid = [r for r in pruner.floor_grid(pruned["ratio"]) if r < pruned["ratio"]]  # the prune search's own grid
    tried, best = [{"ratio": pruned["ratio"], "int8_met": False}], None
    lo, hi = -1, len(grid)  # grid[lo] meets the floor in int8; grid[hi:] do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        graph, result = pruner.result(grid[mid], True, evaluator)
        try:
            best = (*_quantize(graph, calibration, opts, evaluator, report, lowerings, compiler), result)
            lo = mid
        except FloorNotMet:
            hi = mid
        tried.append({"ratio": grid[mid], "int8_met": hi != mid})
    if best is None:
        try:
            _quantize(source, calibration, opts, evaluator, report, lowerings, compiler)
        except FloorNotMet as unpruned:  # pruning is not what misses the floor
            raise FloorNotMet(f"int8 misses the floor even without pruning: {unpruned}") from None
        smaller = f"no smaller ratio down to {grid[0]:.0%} meets it in int8 either" if grid else \
            "no smaller ratio removes a channel"
        raise FloorNotMet(f"{failure} The prune search chose {pruned['ratio']:.0%} in fp32, spending the floor "
                          f"before int8; {smaller}, and the unpruned model meets it in int8: build without "
                          "--prune, or lower the floor.") from None
    graph, int8_passes, result = best
    result["search"] = {**pruned["search"], "int8_back_off": tried}
    log.warning("--prune with the floor chose %.0f%% in fp32, where int8 misses the floor; backed off to %.0f%%, "
                "the largest ratio whose int8 build meets it", 100 * pruned["ratio"], 100 * result["ratio"])
    return graph, int8_passes, result


def _prune(graph: Graph, calibration, opts: BuildOptions, evaluator: Evaluator, report: Progress,
           compiled_macs=None) -> tuple[Graph, dict[str, Any]]:
    """Structured channel pruning: to a MAC budget (counted by `compiled_macs` where the build's lowerings add
    some), to the quality floor (up to the given ratio), or a ratio."""
    from .passes import prune

    report("prune", 0, 1)

    def step(name: str, done: int, total: int) -> None:
        report(f"prune: {name}", done, total)

    if opts.prune is not None and opts.prune_to_macs is not None:
        raise BuildError("give either --prune RATIO or --prune-to-macs N, not both")
    if opts.prune_to_macs is not None:
        pruned, result = prune.prune_to_macs(graph, calibration, opts.prune_to_macs, evaluator, step, compiled_macs)
        quality = result["quality"]["result"]
        if opts.floor and not opts.floor.met(quality):
            raise BuildError(f"{graph.source}: pruned to {result['macs']['after']:,} MACs (--prune-to-macs "
                             f"{opts.prune_to_macs:,}) the model reaches PSNR {quality['psnr_db']:.2f} dB / SSIM "
                             f"{quality['ssim']:.4f}, below the floor ({opts.floor.describe()}). Raise the MAC target, "
                             "lower the floor, or give --prune RATIO with the floor to find the largest ratio that "
                             "meets it.")
        return pruned, result
    if opts.floor:
        return prune.prune_to_floor(graph, calibration, evaluator, opts.floor, max_ratio=opts.prune, progress=step)
    pruned, result = prune.prune(graph, opts.prune, calibration, evaluator=evaluator, progress=step)
    quality = result["quality"]["result"]
    if quality["psnr_db"] < PRUNED_PSNR_WARNING_DB:
        log.warning("--prune %g leaves PSNR %.1f dB / SSIM %.3f against the fp32 source (%.1f dB without the "
                    "re-fit): give a smaller ratio, or --min-psnr DB to prune only as far as that floor allows",
                    opts.prune, quality["psnr_db"], quality["ssim"],
                    result["quality"]["without_reconstruction"]["psnr_db"])
    return pruned, result


def _verify(source: Graph, tgt: targets.Target, precision: str, floor: QualityFloor, staging: Path,
            session_cfg: dict, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray],
            compiled_from: dict[str, np.ndarray], reference_name: str,
            graph_quality: dict[str, float] | None, per_call: int, floor_hint: str = "",
            fresh: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the artifact on the held-out inputs: quality against the fp32 source (`expected`); an fp32
    artifact must also match the graph it was compiled from within FP32_MAX_ABS; every precision must
    meet the floor (`graph_quality`: the int8 graph's own, run in ONNX Runtime, to say where a miss is;
    `floor_hint`: what else to try, appended to a miss). `fresh` (see _fresh_inputs): inputs no choice saw,
    whose quality is reported beside, and warned of where it misses the floor."""
    session_mod = backends.session_module(tgt.backend)
    native, where = targets.runs_here(tgt, precision)
    try:
        session = session_mod.Session(staging, session_cfg, tgt.threads, host_fallback=True)
    except BackendUnavailableError:
        raise
    except Exception as exc:  # a runtime's own load error, reported with the artifact it concerns
        raise BuildError(f"the compiled {tgt.backend} artifact for {source.source} does not load: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    actual = run_batched(session.run, source.inputs, feeds, per_call)
    _refuse_non_finite_artifact(source, tgt, precision, actual)
    # each request alone, for the batch check (a dynamic batch) and the thread check (a CPU runtime here)
    batch_checked = fixed_batch(source.inputs) is None and not getattr(session, "one_at_a_time", False)
    alone = _runs_alone(session, source, feeds) if batch_checked or (native and _threads_apply(tgt)) else None
    batching = _batch_invariance(session, source, feeds, actual, alone)
    if not batching["invariant"] and alone:  # the runtime computes each request alone: measured as it serves them
        actual = {name: np.concatenate([outputs[name] for _, outputs in alone]) for name in actual}
    per_output, quality = _quality(source, expected, actual)
    samples = len(next(iter(feeds.values())))
    drift, limit = _fp32_drift(source, compiled_from, actual)
    if precision == "fp32" and drift > limit:
        raise BuildError(f"fp32 artifact for {tgt.name} differs from the model it was compiled from by {drift:.3g} "
                         f"max-abs (limit {limit:g}) on {samples} held-out inputs; the build is refused. "
                         "Report this model to the edgegen developers with `edgegen inspect` output.")
    if floor and not floor.met(quality):
        missed = f"the {precision} artifact for {tgt.name} reaches PSNR {quality['psnr_db']:.2f} dB / SSIM " \
            f"{quality['ssim']:.4f} against the fp32 source, below the floor ({floor.describe()})."
        if graph_quality and floor.met(graph_quality):
            raise BackendMissedFloor(
                f"{missed} Its int8 graph meets the floor in ONNX Runtime ({graph_quality['psnr_db']:.2f} dB / SSIM "
                f"{graph_quality['ssim']:.4f}): {tgt.backend}'s own int8 execution loses the rest; build for another "
                f"target (x86-onnxruntime), or in fp16/bf16 here.{floor_hint}", tgt.backend, graph_quality, quality)
        raise BuildError(missed + floor_hint)
    served_per_call = per_call if batching["invariant"] else 1  # fresh inputs too, as the runtime serves them
    fresh_quality = _fresh_quality(source, session, fresh, served_per_call, floor, quality) if fresh else None
    unit = fixed_batch(source.inputs) or 1
    first = {k: v[:unit] for k, v in feeds.items()}
    ref_file = reference.save(staging, first, {k: v[:unit] for k, v in compiled_from.items()})
    tolerance = _tolerance(source, precision, quality["psnr_db"], {k: v[:unit] for k, v in compiled_from.items()},
                           {k: v[:unit] for k, v in actual.items()})
    ran_on = where if native else f"build host fallback ({where}); device numerics not measured"
    return {
        "fidelity": {"samples": samples, "seed": VERIFY_SEED, "reference": reference_name, "ran_on": ran_on,
                     "floor": floor.describe() or None, "outputs": per_output, **quality,
                     **({"fresh": fresh_quality} if fresh_quality else {})},
        "reference": {"file": ref_file, "tolerance": tolerance},
        "latency": _latency(session, first, tgt.threads, ran_on,
                            SourceSession(source.reference, tgt.threads) if native and tgt.backend != "fpga" else None),
        "execution": session.execution_report() if hasattr(session, "execution_report") else None,
        "batching": batching,
        "threading": _thread_invariance(session, session_mod, staging, session_cfg, tgt, source, feeds, alone)
        if native else {"invariant": None, "max_abs": None, "checked": False},  # unknown: keyed apart at other threads
    }


def _quality(source: Graph, expected: dict[str, np.ndarray],
             actual: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, float]]:
    """(each output's comparison, the images' least PSNR and SSIM and every output's max-abs) of an
    artifact's outputs against the source's, as the model file gives them (a uint8 export's pixels
    rounded, as run() gives them)."""
    per_output = {}
    for spec in source.outputs:
        ref, got = delivered(spec, expected[spec.name]), delivered(spec, actual[spec.name])
        per_output[spec.name] = compare(ref, got, value_range(spec.range, ref))
    measured = [per_output[s.name] for s in quality_outputs(source.outputs)]
    return per_output, {"psnr_db": min(r["psnr_db"] for r in measured),
                        "ssim": min(r.get("ssim", 1.0) for r in measured),
                        "max_abs": max(r["max_abs"] for r in per_output.values())}


def _fresh_quality(source: Graph, session, fresh: dict[str, Any], per_call: int, floor: QualityFloor,
                   chosen_by: dict[str, float]) -> dict[str, Any]:
    """The artifact's quality on inputs no choice of the build saw; a warning where they miss the floor that
    the held-out inputs (`chosen_by`) meet."""
    actual = run_batched(session.run, source.inputs, fresh["feeds"], per_call)
    quality = _quality(source, fresh["expected"], actual)[1]
    samples = len(next(iter(fresh["feeds"].values())))
    if floor and not floor.met(quality):
        log.warning("on %d fresh inputs, which no choice of the build saw, the artifact reaches PSNR %.2f dB / SSIM "
                    "%.4f, below the floor (%s) that the %d held-out inputs it was chosen by meet (%.2f dB): the "
                    "floor holds with less margin than it shows; %s, or more --samples, leaves more", samples,
                    quality["psnr_db"], quality["ssim"], floor.describe(), samples, chosen_by["psnr_db"],
                    fresh["lever"])
    where = {k: fresh[k] for k in ("seed", "inputs_from") if k in fresh}
    return {"samples": samples, **where, "psnr_db": quality["psnr_db"], "ssim": quality["ssim"]}


def _tolerance(source: Graph, precision: str, psnr_db: float, expected: dict[str, np.ndarray],
               actual: dict[str, np.ndarray]) -> dict[str, Any]:
    """The self-test's criteria: fp32, max-abs on every output; a reduced precision, the images' PSNR at build
    less the margin (at most the precision's ceiling), and for each output that figure does not cover (a score
    beside an image) its own PSNR on the reference input (`expected`/`actual`: its outputs, as the self-test
    measures them) less the margin, never above the images' figure."""
    if precision == "fp32":
        own = {spec.name: _fp32_limit(spec) for spec in source.outputs if _fp32_limit(spec) != FP32_MAX_ABS}
        return {"max_abs": FP32_MAX_ABS, **({reference.OWN_MAX_ABS: own} if own else {})}
    floor = round(min(psnr_db - REDUCED_PSNR_MARGIN_DB, REDUCED_PSNR_CEILING_DB.get(precision, math.inf)), 2)
    covered = {s.name for s in quality_outputs(source.outputs)}
    own = {}
    for spec in (s for s in source.outputs if s.name not in covered):
        ref, got = delivered(spec, expected[spec.name]), delivered(spec, actual[spec.name])
        own[spec.name] = round(min(compare(ref, got, value_range(spec.range, ref))["psnr_db"]
                                   - REDUCED_PSNR_MARGIN_DB, floor), 2)
    return {"min_psnr_db": floor, **({reference.OWN_PSNR: own} if own else {})}


def _runs_alone(session, source: Graph, feeds: dict[str, np.ndarray]) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(start, outputs) of each held-out request run alone: one input, or one whole batch of a fixed-batch
    export (a last part short of it is left out)."""
    unit, count = fixed_batch(source.inputs) or 1, len(next(iter(feeds.values())))
    return [(start, session.run({k: v[start:start + unit] for k, v in feeds.items()}))
            for start in range(0, count - unit + 1, unit)]


def _fp32_limit(spec: TensorSpec) -> float:
    """FP32_MAX_ABS on an output's own scale: times half its range's width where that passes 2 (float32 rounding
    on a [0, 255] output reaches 1e-3 where on a [-1, 1] one it stays near 1e-6)."""
    return FP32_MAX_ABS * max(1.0, (spec.range[1] - spec.range[0]) / 2) if spec.range else FP32_MAX_ABS


def _fp32_drift(source: Graph, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max-abs, its limit) of the output farthest past its fp32 limit (see _fp32_limit) between two runs."""
    pairs = [(max_abs(a[s.name].astype(np.float32), b[s.name].astype(np.float32)), _fp32_limit(s))
             for s in source.outputs]
    return max(pairs, key=lambda pair: pair[0] / pair[1])


def _drift(source: Graph, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """The largest difference between two runs' outputs (max-abs over the source's outputs, in float32)."""
    return max(max_abs(a[s.name].astype(np.float32), b[s.name].astype(np.float32)) for s in source.outputs)


def _batch_invariance(session, source: Graph, feeds: dict[str, np.ndarray], batched: dict[str, np.ndarray],
                      alone: list[tuple[int, dict[str, np.ndarray]]] | None = None) -> dict[str, Any]:
    """Whether the artifact gives an input the same outputs whatever batch it runs in (the held-out batch,
    each input alone (`alone`: see _runs_alone), a batch of 3): a backend's kernels for another batch size may
    sum in another order (OpenVINO's int8 at batch 3: pixels one level off; an OpenVINO int8 U-Net gave the
    held-out batch's fourth row 0.08 off its run alone, rows 1-3 exact). Where they differ, the runtime
    computes requests one at a time, so the same request always gives the same pixels whatever the traffic."""
    count = len(next(iter(feeds.values())))
    if fixed_batch(source.inputs) is not None or count < 2 or getattr(session, "one_at_a_time", False):
        return {"invariant": True, "max_abs": 0.0}
    parts = [(start, 1, outputs) for start, outputs in alone or _runs_alone(session, source, feeds)]
    parts.append((0, 3, session.run({k: v[:3] for k, v in feeds.items()})))
    drift = max(_drift(source, {k: v[start:start + size] for k, v in batched.items()}, outputs)
                for start, size, outputs in parts)
    return {"invariant": drift == 0.0, "max_abs": float(drift)}


def _threads_apply(tgt: targets.Target) -> bool:
    """Whether the target's thread count is a CPU runtime's intra-op threads (not the NPU's, nor a GPU's)."""
    options = tgt.backend_options
    if tgt.backend == "onnxruntime":
        return (options.get("providers") or ["CPUExecutionProvider"])[0] == "CPUExecutionProvider"
    if tgt.backend == "tflite":
        return options.get("delegate", "xnnpack") != "edgetpu"
    return tgt.backend == "openvino" and options.get("device", "CPU") == "CPU"


def _thread_invariance(session, session_mod, staging: Path, session_cfg: dict, tgt: targets.Target, source: Graph,
                       feeds: dict[str, np.ndarray], alone: list[tuple[int, dict[str, np.ndarray]]] | None = None
                       ) -> dict[str, Any]:
    """Whether the artifact gives the same outputs at another intra-op thread count (1, or 2 for a 1-thread
    target) as at the target's (`alone`: its runs at the target's, see _runs_alone). OpenVINO's bf16 kernels
    round otherwise (zoo:glyphgen: 25 of 40 requests a level off). Where they differ, or the check could not
    run (invariant None: a GPU, NPU or Edge TPU runs it), a runtime at another thread count than the target's
    keys its results apart from the assets and disk caches, which hold the pixels computed at the target's."""
    if tgt.backend == "fpga":  # the NPU's integers, whatever the host's threads
        return {"invariant": True, "max_abs": 0.0, "checked": False}
    if not _threads_apply(tgt):
        return {"invariant": None, "max_abs": None, "checked": False}
    one = session_mod.Session(staging, session_cfg, 1 if tgt.threads > 1 else 2, host_fallback=True)
    unit = fixed_batch(source.inputs) or 1
    drift = max(_drift(source, outputs, one.run({k: v[start:start + unit] for k, v in feeds.items()}))
                for start, outputs in alone or _runs_alone(session, source, feeds))
    return {"invariant": drift == 0.0, "max_abs": float(drift), "checked": True}


def _latency(session, feeds: dict[str, np.ndarray], threads: int, where: str, source: SourceSession | None,
             runs: int = 20) -> dict[str, Any]:
    """p50 of the artifact on `feeds` (batch 1, or a fixed-batch export's N), at the target's threads; with the
    fp32 source's session (a CPU artifact that runs natively here), both run in alternating blocks of BLOCK_RUNS
    runs (`bench.interleaved`: each block once the other runtime's threads have stopped spinning, so neither
    runs on cores the other's idle workers hold) and the speed against the source is the median over block
    pairs of their ratio (`bench.paired_speed`): paired, so load from elsewhere on a shared host hits both
    alike. The cores other processes kept busy meanwhile are recorded (`other_load_cores`, of `host_cpus`):
    load that slows one runtime more than the other is not cancelled, and the report says so instead of
    blaming the precision."""
    if source is None:
        times, baseline = measure(lambda: session.run(feeds), runs, 1), None
    else:
        with OtherLoad() as load:
            times, baseline = interleaved(lambda: session.run(feeds), lambda: source.run(feeds), runs, 1)
    batch = next((len(array) for array in feeds.values()), 1)  # a model exported at a fixed batch N runs N
    result = {"p50_ms": round(statistics.median(times), 3), "runs": runs, "batch": batch, "threads": threads,
              "measured_on": where}
    if baseline:
        result.update(source_p50_ms=round(statistics.median(baseline), 3),
                      speed_vs_source=round(paired_speed(times, baseline), 3), block_runs=BLOCK_RUNS)
        if load.cores is not None:
            result.update(other_load_cores=round(load.cores, 2), host_cpus=host_cpus())
    return result


def _activation_bytes(costs: list) -> int:
    """The activations' bytes at fp32 of the graph compiled (a pruned one's are fewer), but for the copies a QDQ
    graph's (De)QuantizeLinear nodes write: the same tensors on the device."""
    return sum(c.activation_bytes for c in costs if c.op not in ("QuantizeLinear", "DequantizeLinear"))


def _stored_param_bytes(graph: Graph, costs: list, backend: str, precision: str) -> int:
    """The parameters' bytes as the artifact stores them (costs: the graph's node costs): float32 weights at
    2 bytes in fp16 and bf16, but where the backend stores bf16 as fp32 (backends.STORED_AS)."""
    total = sum(c.param_bytes for c in costs)
    if backends.STORED_AS.get((backend, precision), precision) not in ("fp16", "bf16"):
        return total
    weights = {t.name: t for t in graph.model.graph.initializer}
    floats = sum(4 * int(np.prod(weights[x].dims)) for n in graph.model.graph.node for x in n.input
                 if x in weights and weights[x].data_type == onnx.TensorProto.FLOAT)
    return total - floats // 2


def _manifest(source: Graph, graph: Graph, tgt: targets.Target, precision: str, compiled: dict, checks: dict,
              passes: dict) -> dict[str, Any]:
    before, after = source.node_costs(), graph.node_costs()
    return {
        "edgegen_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": source.name,
            "source": str(source.source.resolve()),
            "source_sha256": bundle.sha256_file(source.source),
            "opset": source.opset,
            "inputs": [s.to_json() for s in source.inputs],
            "outputs": [s.to_json() for s in source.outputs],
            "macs": sum(c.macs for c in after),
            "param_bytes": _stored_param_bytes(graph, after, tgt.backend, precision),
            "source_macs": sum(c.macs for c in before),
            "source_param_bytes": sum(c.param_bytes for c in before),
            "activation_bytes": _activation_bytes(after),  # fp32, what the roofline moves
            "cost_batch": cost_batch(source.inputs),  # the batch the MACs and bytes are for
            "cleanup": graph.notes,
        },
        "target": tgt.to_json(),
        "backend": tgt.backend,
        "precision": precision,
        "passes": passes,
        "session": compiled["session"],
        "tools": {"edgegen": __version__, **compiled["tools"]},
        **checks,
    }
