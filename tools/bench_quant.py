"""Quantization benchmark (part of `make bench`): fp32 / bf16 / int8 bundles of the zoo models and
of product-sized PyTorch generator exports, 1 thread, each against the fp32 source in a plain ONNX
Runtime session measured in the same run; int8 throughput against this CPU's int8 peak, which this
script measures itself with a large int8 convolution. Writes bench/quant.json and bench/quant.md."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgegen import bench
from edgegen.build import build
from edgegen.errors import BuildError
from edgegen.fileio import write_text

# (model, graph options, quality floor for int8 in dB)
MODELS = [
    ("zoo:glyphgen", {}, 35.0),
    ("zoo:upscale2x", {"input_shapes": {"image": [1, 3, 128, 128]}}, 35.0),
    ("cyclegan_resnet", {}, 30.0),
    ("fast_style", {"input_range": [0.0, 255.0], "output_range": [0.0, 255.0]}, 30.0),
    ("pix2pix_unet", {}, 30.0),
    ("mobilenet_resnet", {}, 30.0),
    ("tiny_decoder", {}, 30.0),
]
CONFIGS = [("x86-onnxruntime", "fp32", None), ("x86-onnxruntime", "int8", None), ("x86-openvino", "fp32", None),
           ("x86-openvino", "bf16", None), ("x86-openvino", "int8", None)]
# pruned + int8 (largest channel ratio up to this one that keeps PSNR >= 30 dB), per model
PRUNED = {"zoo:upscale2x": [("x86-openvino", "int8", 0.5)]}
PRUNED_FLOOR_DB = 30.0


def int8_peak_gmacs(seconds: float = 2.0) -> dict[str, float]:
    """GMAC/s at 1 thread of two large int8 kernels, each in OpenVINO and in ONNX Runtime (QDQ, uint8
    activations): a 3x3 convolution (512 -> 512 channels, 32x32: the fastest of 64-1024 channels at
    16-256 pixels on this machine; its 2.4 MB of weights stay in cache) and a 2048^3 GEMM. The
    largest is the CPU's measured peak. The benchmark measures it right after each int8 model and
    holds the model against that measurement, since the shared machine's load moves both alike."""
    rng = np.random.default_rng(0)
    peaks = {}
    for kernel, (model, x, macs) in {"conv3x3": _peak_conv(rng), "gemm": _peak_gemm(rng)}.items():
        peaks[f"openvino {kernel}"] = macs / _time_openvino(model, x, seconds) / 1e9
        peaks[f"onnxruntime {kernel}"] = macs / _time_onnxruntime(model, x, seconds) / 1e9
    return peaks


def _qdq_model(x_shape: list[int], weight: np.ndarray, axis: int, op: onnx.NodeProto) -> onnx.ModelProto:
    """x -> Q/DQ -> op(x, DQ(weight)) -> Q/DQ -> out, with per-channel weight scales along `axis`."""
    channels = weight.shape[axis]
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.full(channels, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
             numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.uint8(128), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=axis), op,
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"])]
    graph = helper.make_graph(nodes, "peak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _peak_conv(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray, int]:
    c, size = 512, 32
    weight = rng.integers(-127, 128, (c, c, 3, 3), dtype=np.int8)
    model = _qdq_model([1, c, size, size], weight, 0, helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]))
    return model, rng.standard_normal((1, c, size, size), dtype=np.float32), c * c * 9 * size * size


def _peak_gemm(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray, int]:
    n = 2048
    model = _qdq_model([n, n], rng.integers(-127, 128, (n, n), dtype=np.int8), 1,
                       helper.make_node("MatMul", ["xd", "wd"], ["y"]))
    return model, rng.standard_normal((n, n), dtype=np.float32), n ** 3


def _median_seconds(run, seconds: float) -> float:
    run()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_openvino(model: onnx.ModelProto, x: np.ndarray, seconds: float) -> float:
    import openvino as ov

    compiled = ov.Core().compile_model(ov.convert_model(io.BytesIO(model.SerializeToString())), "CPU",
                                       {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                                        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return _median_seconds(lambda: request.infer({"x": x}), seconds)


def _time_onnxruntime(model: onnx.ModelProto, x: np.ndarray, seconds: float) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _median_seconds(lambda: session.run(None, {"x": x}), seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--models", type=Path, default=Path("bench/models"), help="from tools/export_bench_models.py")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    rows = []
    for model, graph_options, floor in MODELS:
        source = model if model.startswith("zoo:") else str(args.models / f"{model}.onnx")
        for target, precision, prune in CONFIGS + PRUNED.get(model, []):
            name = f"{precision}-pruned" if prune else precision
            dest = args.out / "bundles" / f"quant-{model.replace(':', '_')}-{target}-{name}"
            extra = {"min_psnr": floor, "calibration_method": "percentile"} if precision == "int8" else {}
            if prune:
                extra.update(prune=prune, min_psnr=PRUNED_FLOOR_DB)
            try:
                built = build(source, target, dest, precision=precision, graph_options=graph_options, **extra)
            except BuildError as exc:
                rows.append({"model": model, "target": target, "precision": name, "error": str(exc)})
                print(f"{model} {target} {precision}: {exc}", flush=True)
                continue
            macs = built.manifest["model"]["source_macs"]
            runs = 50 if macs < 1e9 else 8
            result = bench.run(dest, [1], runs=runs, warmup=2, baseline=True)
            mine = result["rows"][0]
            quant = built.manifest["passes"].get("quantize", {})
            pruned = built.manifest["passes"].get("prune")
            run_macs = pruned["macs"]["after"] if pruned else macs  # what the artifact computes
            if pruned:
                name = f"{precision}, pruned {pruned['ratio']:.0%} ({run_macs / 1e9:.2f} GMACs left)"
            peaks = int8_peak_gmacs(1.0) if precision == "int8" else {}
            peak = max(peaks.values()) if peaks else None
            gmacs_per_s = run_macs / (mine["interleaved"]["bundle_p50_ms"] / 1e3) / 1e9
            rows.append({
                "model": model, "target": target, "precision": name, "gmacs": macs / 1e9,
                "p50_ms": mine["interleaved"]["bundle_p50_ms"],
                "baseline_p50_ms": mine["interleaved"]["source_p50_ms"],
                "speedup": mine["speedup_vs_baseline"], "psnr_db": built.fidelity["psnr_db"],
                "ssim": built.fidelity["ssim"], "kept_float": len(quant.get("kept_float", [])),
                "execution": built.manifest["execution"],
                "lowered": {k: len(v) for k, v in built.manifest["passes"].get("lowered", {}).items()},
                "int8_gmacs_per_s": gmacs_per_s if peak else None, "int8_peak_gmacs": peak, "int8_peaks": peaks,
            })
            print(json.dumps(rows[-1]), flush=True)
    against_best_peak(rows)
    meta = {"command": "make bench (tools/bench_quant.py)", "date": dt.datetime.now(dt.timezone.utc).isoformat(
        timespec="seconds"), "host": platform.machine(), "threads": 1}
    write_text(args.out / "quant.json", json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    write_text(args.out / "quant.md", render(meta, rows))
    print((args.out / "quant.md").read_text())
    return 0


def against_best_peak(rows: list[dict]) -> None:
    """Each int8 row's throughput as a fraction of the best peak measured in the run: the CPU's peak is
    what it reaches at its best; a lower measurement is the shared machine's load at that moment (held
    against it, a model could pass 100%)."""
    peaks = [r["int8_peak_gmacs"] for r in rows if r.get("int8_peak_gmacs")]
    for r in rows:
        if r.get("int8_gmacs_per_s"):
            r["int8_peak_fraction"] = r["int8_gmacs_per_s"] / max(peaks)


def render(meta: dict, rows: list[dict]) -> str:
    """Markdown table of the quantization benchmark."""
    peaks = [r["int8_peak_gmacs"] for r in rows if r.get("int8_peak_gmacs")]
    span = f"{min(peaks):.0f}-{max(peaks):.0f}" if peaks else "-"
    lines = [f"Measured by `{meta['command']}` on {meta['date']}, 1 thread, batch 1. Baseline: the fp32 source in a "
             f"plain ONNX Runtime session, same run. int8 % of peak: the model's MACs / p50 against this CPU's int8 "
             f"peak, the best of the measurements taken right after each int8 model (each the faster of a 512-channel "
             f"int8 3x3 conv and a 2048^3 int8 GEMM in OpenVINO and ONNX Runtime; {span} GMAC/s in this run: a lower "
             "one is the shared machine's load, not the CPU).", "",
             "| model | GMACs | target | precision | p50 ms | fp32 ORT ms | speed-up | PSNR dB | SSIM | layers kept float "
             "| int8 % of peak | int8 ConvTranspose (ORT: as phase Convs) / InstanceNorm |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['target']} | {r['precision']} | floor not met: {r['error'][:80]} "
                         "| | | | | | | |")
            continue
        ex = r["execution"]["int8"] if r["execution"] else {}
        frac = f"{100 * r['int8_peak_fraction']:.0f}%" if r.get("int8_peak_fraction") else ""
        convt = ex.get("ConvTranspose", 0) + r.get("lowered", {}).get("conv_transpose", 0)
        counts = f"{convt} / {ex.get('InstanceNormalization', 0)}" if r["precision"] == "int8" else ""
        lines.append(f"| {r['model']} | {r['gmacs']:.2f} | {r['target']} | {r['precision']} | {r['p50_ms']:.2f} | "
                     f"{r['baseline_p50_ms']:.2f} | {r['speedup']:.2f}x | {r['psnr_db']:.1f} | {r['ssim']:.4f} | "
                     f"{r['kept_float']} | {frac} | {counts} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
