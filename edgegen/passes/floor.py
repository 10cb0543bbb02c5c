"""The image-quality floor: keep the most damaging layers in float until PSNR/SSIM against the fp32
source holds (NNCF's accuracy-control idea, with image quality as the metric)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx

from ..errors import BuildError
from ..inputs import run_batched
from ..metrics import psnr, quality_outputs, ssim, value_range
from ..specs import TensorSpec
from .quantize import WEIGHT_OPS

log = logging.getLogger(__name__)


class FloorNotMet(BuildError):
    """No int8 form of the model meets the quality floor."""


@dataclass
class QualityFloor:
    """Minimum PSNR (dB) and/or SSIM of every image output against the fp32 source."""

    min_psnr: float | None = None
    min_ssim: float | None = None

    def __post_init__(self) -> None:
        if self.min_psnr is not None and not 0 < self.min_psnr < float("inf"):
            raise BuildError(f"--min-psnr {self.min_psnr}: a PSNR floor is a number of dB above 0 (e.g. 30)")
        if self.min_ssim is not None and not 0 < self.min_ssim <= 1:
            raise BuildError(f"--min-ssim {self.min_ssim}: an SSIM floor is a number in (0, 1] (e.g. 0.95)")

    def __bool__(self) -> bool:
        return self.min_psnr is not None or self.min_ssim is not None

    def met(self, quality: dict[str, float]) -> bool:
        return (self.min_psnr is None or quality["psnr_db"] >= self.min_psnr) and \
            (self.min_ssim is None or quality.get("ssim", 1.0) >= self.min_ssim)

    def describe(self) -> str:
        parts = [f"PSNR >= {self.min_psnr} dB" if self.min_psnr is not None else "",
                 f"SSIM >= {self.min_ssim}" if self.min_ssim is not None else ""]
        return " and ".join(p for p in parts if p)


class Evaluator:
    """Scores candidate ONNX models against the fp32 source's outputs on held-out inputs."""

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec], feeds: dict[str, np.ndarray],
                 expected: dict[str, np.ndarray], per_call: int | None = None):
        self.inputs, self.outputs, self.feeds, self.expected = inputs, outputs, feeds, expected
        self.per_call = per_call  # samples per run (see Graph.samples_per_run); None: all in one

    def quality(self, model: onnx.ModelProto, reference: bool = False) -> dict[str, float]:
        """Worst PSNR and SSIM over the image outputs (each output's own value range; see quality_outputs).
        reference: a QDQ graph computed as ONNX defines it (each layer in float between exact conversions, as
        an integer kernel computes it), not by ONNX Runtime's fused int8 kernels."""
        import onnxruntime as ort

        session = _scoring_session(ort, model, reference)
        names = [o.name for o in session.get_outputs()]
        got = run_batched(lambda f: dict(zip(names, session.run(names, f))), self.inputs, self.feeds, self.per_call)
        worst = {"psnr_db": float("inf"), "ssim": 1.0, "nmse": 0.0}
        for spec in quality_outputs(self.outputs):
            ref, out = (delivered(spec, a) for a in (self.expected[spec.name], got[spec.name]))
            data_range = value_range(spec.range, ref)
            worst["psnr_db"] = min(worst["psnr_db"], psnr(ref, out, data_range))
            worst["nmse"] = max(worst["nmse"], float(np.mean((out - ref) ** 2)) / data_range ** 2)
            if ref.ndim >= 3:
                worst["ssim"] = min(worst["ssim"], ssim(ref, out, data_range))
        return {"psnr_db": round(worst["psnr_db"], 3), "ssim": round(worst["ssim"], 5), "nmse": worst["nmse"]}


def delivered(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """An output as the model file gives it, in the bundle's layout: a uint8 export's pixels rounded and clipped
    as run() gives them (its quality measured before that rounding read 61.6 dB where run() gave 55.4)."""
    return spec.from_source(spec.to_source(array)).astype(np.float32)


def _scoring_session(ort, model: onnx.ModelProto, reference: bool = False):
    """A CPU session of the graph to score. ONNX Runtime's layout optimizer (its last level) refuses some
    graphs it could run as they are: a uint8 cubic downscale moved channels-last fails its scale check.
    The graph is then scored without that level: the same arithmetic, in NCHW. reference: without the
    level that fuses Q/DQ pairs into int8 kernels either."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if reference:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own exception types; a graph it cannot load at all raises below
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def search_float_layers(candidates: list[tuple[str, str]], quantizer, evaluator: Evaluator,
                        floor: QualityFloor, deployed: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None,
                        int8_only: str | None = None, exact_int8: bool = False
                        ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Keep the most damaging layers in float until the floor holds.

    Sensitivity: each layer quantized alone (all others float) and its error measured as mean squared
    error relative to the output range; errors of layers add up roughly, so layers are kept in float,
    largest error first, until the whole model meets the floor. A model with no convolution or matrix
    product left in int8 is not an int8 model: that is a failure, reported with what was reachable.
    deployed: the QDQ graph as the target's artifact computes it (what is scored); int8_only: why the
    target keeps no layer in float (an NPU), where it keeps none; exact_int8: the target's integer kernels
    compute what the QDQ graph defines, so candidates are scored by its definition (Evaluator's reference).
    """
    def score(candidate: onnx.ModelProto) -> dict[str, float]:
        return evaluator.quality(deployed(candidate) if deployed else candidate, reference=exact_int8)

    model = quantizer.emit()
    base = score(model)
    report: dict[str, Any] = {"floor": floor.describe() or None, "all_int8": base, "kept_float": [],
                              "sensitivity": []}
    if not floor or floor.met(base):
        report["result"] = base
        return model, report
    if int8_only:
        raise FloorNotMet(f"the quality floor ({floor.describe()}) is not met: all int8 gives {base['psnr_db']:.1f} "
                         f"dB / SSIM {base['ssim']:.4f}, and {int8_only}, so no layer can stay in float. Lower "
                         "--min-psnr/--min-ssim, calibrate with more representative data (--calibration), or build "
                         "for a CPU target, which can keep layers in float.")
    for name, op in candidates:
        alone = score(quantizer.emit(only=[name]))
        report["sensitivity"].append({"node": name, "op": op, "psnr_db_alone": alone["psnr_db"],
                                      "nmse": alone["nmse"]})
    ranked = sorted(report["sensitivity"], key=lambda r: -r["nmse"])
    kept: list[str] = []
    quality = base
    weights = {name for name, op in candidates if op in WEIGHT_OPS}
    for row in ranked:
        if weights <= set(kept) | {row["node"]}:
            continue  # that would leave no layer that multiplies in int8 (a float model): try the ones after it
        kept.append(row["node"])
        model = quantizer.emit(exclude=kept)
        quality = score(model)
        log.info("keeping %s in float -> %s", row["node"], quality)
        if floor.met(quality):
            kept, model, quality = _drop_needless(kept, quantizer, score, floor, model, quality)
            report.update(kept_float=kept, result=quality)
            return model, report
    raise FloorNotMet(f"no mix of int8 and float layers meets the quality floor ({floor.describe()}): all int8 gives "
                     f"{base['psnr_db']:.1f} dB / SSIM {base['ssim']:.4f}; with {len(kept)} of the {len(candidates)} "
                     f"quantizable layers in float (one convolution or matrix product left in int8), "
                     f"{quality['psnr_db']:.1f} dB / SSIM {quality['ssim']:.4f}. Lower --min-psnr/--min-ssim, "
                     "calibrate with more representative data (--calibration, --calibration-method percentile), "
                     "or build fp16.")


def _drop_needless(kept: list[str], quantizer, score: Callable[[onnx.ModelProto], dict[str, float]],
                   floor: QualityFloor, model: onnx.ModelProto,
                   quality: dict[str, float]) -> tuple[list[str], onnx.ModelProto, dict[str, float]]:
    """Quantize again each kept layer the floor holds without, least sensitive first (a layer kept early can
    change nothing once the later ones are float); the last one kept was needed to meet it."""
    for name in reversed(kept[:-1]):
        trial = [k for k in kept if k != name]
        candidate = quantizer.emit(exclude=trial)
        scored = score(candidate)
        log.info("%s back in int8 -> %s", name, scored)
        if floor.met(scored):
            kept, model, quality = trial, candidate, scored
    return kept, model, quality
