"""Measure structured pruning on the zoo models and the PyTorch-exported generator families (tests/data/families).

For each family and ratio: MACs and parameters before/after, PSNR/SSIM of the pruned model against the
unpruned one on held-out inputs with and without least-squares reconstruction, the time pruning took,
and ONNX Runtime latency (1 thread, batch 1) of the unpruned and pruned models measured interleaved in
the same run. Where a ratio with reconstruction stays below --sensitivity-below dB, each channel group is
also pruned alone at that ratio (reconstructed) to show whether one group or every group costs the quality.
Writes JSON and Markdown tables.

    .venv/bin/python tools/bench_prune.py --out bench
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgegen import zoo
from edgegen.fileio import write_text
from edgegen.graph import Graph
from edgegen.passes.calibration import load_calibration
from edgegen.passes.prune import HELD_OUT_COUNT, HELD_OUT_SEED, Pruner, prune

FAMILIES = Path(__file__).resolve().parent.parent / "tests" / "data" / "families"
NAMES = ["dcgan", "cgan_dcgan", "pix2pix_unet", "cyclegan_resnet", "espcn", "fast_style", "tiny_decoder",
         "mobilenet_resnet"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench")
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--variant", default="dynamo_dyn", help="fixture variant (legacy_dyn, dynamo_dyn, ...)")
    parser.add_argument("--calibration-count", type=int, default=32)
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model for latency")
    parser.add_argument("--sensitivity-below", type=float, default=30.0,
                        help="prune each group alone where the reconstructed PSNR is below this (dB)")
    args = parser.parse_args()
    rows = []
    models = [(f"zoo:{name}", f"zoo:{name}") for name in zoo.names()] + \
        [(f"{name}__{args.variant}", FAMILIES / f"{name}__{args.variant}.onnx") for name in NAMES]
    for label, path in models:
        graph = Graph.load(path)
        source = "zoo" if label.startswith("zoo:") and (zoo.ZOO_DIR / f"{label[4:]}.calib").is_dir() else None
        calibration = load_calibration(graph.inputs, source, args.calibration_count, graph.name)
        for ratio in (float(r) for r in args.ratios.split(",")):
            start = time.perf_counter()
            pruned, report = prune(graph, ratio, calibration)
            seconds = time.perf_counter() - start
            base_ms, pruned_ms = latency([graph.model, pruned.model], calibration.samples()[0], args.runs)
            quality = report["quality"]
            rows.append({
                "model": label, "calibration": calibration.source, "ratio": ratio, "macs": report["macs"],
                "params": report["params"],
                "groups_pruned": len(report["groups"]), "groups_excluded": len(report["excluded"]),
                "refit_layers": len(report["reconstruction"]["layers"]),
                "psnr_db": {"with_reconstruction": quality["with_reconstruction"]["psnr_db"],
                            "without_reconstruction": quality["without_reconstruction"]["psnr_db"]},
                "allocation": report["allocation"],
                "ssim": {"with_reconstruction": quality["with_reconstruction"]["ssim"],
                         "without_reconstruction": quality["without_reconstruction"]["ssim"]},
                "prune_seconds": round(seconds, 2), "ort_ms": {"unpruned": base_ms, "pruned": pruned_ms}})
            print(render_row(rows[-1]), flush=True)
            if quality["with_reconstruction"]["psnr_db"] < args.sensitivity_below:
                rows[-1]["groups_alone"] = groups_alone(graph, calibration, ratio)
    meta = {"command": f".venv/bin/python tools/bench_prune.py --out {args.out} --ratios {args.ratios} "
                       f"--variant {args.variant} --calibration-count {args.calibration_count} --runs {args.runs} "
                       f"--sensitivity-below {args.sensitivity_below:g}",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
            "calibration": f"{args.calibration_count} samples: the zoo model's calibration images where it ships "
                           "them, else the input spec (seeds from 0)",
            "held_out": f"input spec, seeds {HELD_OUT_SEED}..{HELD_OUT_SEED + HELD_OUT_COUNT - 1}"}
    out = Path(args.out)
    write_text(out / "prune.json", json.dumps({**meta, "results": rows}, indent=2) + "\n")
    write_text(out / "prune.md", render(meta, rows))
    print((out / "prune.md").read_text())
    return 0


def groups_alone(graph: Graph, calibration, ratio: float) -> list[dict]:
    """PSNR with reconstruction when only one channel group is pruned at `ratio`, for every group."""
    pruner = Pruner(graph, calibration)
    evaluator = pruner.default_evaluator()
    return [{"layers": g.producers, "channels": [g.size, len(pruner.keep(ratio)[g.root])],
             "psnr_db": evaluator.quality(model)["psnr_db"]} for g, model in pruner.each_group_alone(ratio)]


def latency(models: list[onnx.ModelProto], feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    """Median ms per model, 1 thread, runs interleaved so load on the host hits every model alike."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for m in models]
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(runs + 5):
        for session, spent in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, feeds)
            if i >= 5:
                spent.append((time.perf_counter() - start) * 1000)
    return [round(statistics.median(t), 3) for t in times]


def render_row(r: dict) -> str:
    macs, params, psnr, ssim, ms = r["macs"], r["params"], r["psnr_db"], r["ssim"], r["ort_ms"]
    alloc = r["allocation"]
    uniform = (f"{alloc['uniform_psnr_db']:.1f} ({alloc['uniform_macs'] / 1e6:.2f} M)" if "uniform_psnr_db" in alloc
               else "-")
    return (f"| {r['model']} | {r['ratio']:.0%} | {macs['before'] / 1e6:.2f} -> {macs['after'] / 1e6:.2f} "
            f"({macs['after'] / macs['before']:.2f}x) | {params['before']:,} -> {params['after']:,} | "
            f"{uniform} | {'yes' if alloc['used'] else 'no'} | "
            f"{psnr['without_reconstruction']:.1f} | {psnr['with_reconstruction']:.1f} | "
            f"{ssim['without_reconstruction']:.3f} | {ssim['with_reconstruction']:.3f} | "
            f"{r['groups_pruned']} / {r['groups_excluded']} | {r['refit_layers']} | {r['prune_seconds']:.1f} | "
            f"{ms['unpruned']:.3f} -> {ms['pruned']:.3f} |")


def render(meta: dict, rows: list[dict]) -> str:
    lines = [f"Measured by `{meta['command']}` on {meta['date']} ({meta['host']}; onnxruntime "
             f"{meta['versions']['onnxruntime']}). PSNR/SSIM: the pruned model against the unpruned one on 8 "
             f"held-out inputs ({meta['held_out']}) over each output's range (declared, widened to what the "
             f"reference spans); calibration: {meta['calibration']}. "
             "Latency: ONNX Runtime CPU, 1 thread, batch 1, medians of interleaved runs in one process. "
             "Uniform: the ratio in every group, reconstructed (PSNR dB and MMACs); allocated: those MACs "
             "re-allocated across groups by measured sensitivity, used when better (the PSNR columns are the "
             "result's).",
             "",
             "| model | ratio | MMACs | params | uniform, LS refit | allocated | PSNR dB, no refit | PSNR dB, LS refit "
             "| SSIM, no refit | SSIM, LS refit | groups pruned / excluded | layers refit | prune s "
             "| ORT ms unpruned -> pruned |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [render_row(r) for r in rows]
    alone = [r for r in rows if r.get("groups_alone")]
    if alone:
        lines += ["", "Where the reconstructed PSNR stays low, each channel group pruned alone at the same ratio "
                  "(reconstructed), against the unpruned model:", "",
                  "| model | ratio | group (its layers) | channels kept | PSNR dB, this group alone |", "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['ratio']:.0%} | {', '.join(g['layers'][:3])} | {g['channels'][1]} of "
                  f"{g['channels'][0]} | {g['psnr_db']:.1f} |" for r in alone for g in r["groups_alone"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
