"""`make bench`, TFLite part: fidelity and speed of the TFLite backend on the zoo models and the
PyTorch-exported generator families.

For every model: fp32 / fp16 / int8 bundles for x86-litert (int8 from the project's quantize pass);
fp32 max-abs error against the fp32 source in ONNX Runtime (the build's 8 held-out inputs) and
against PyTorch's own outputs; int8 and fp16 PSNR; the XNNPACK delegation and Edge TPU reports.
Speed at 1 thread, medians of interleaved runs in one process: the fp32 source in plain ONNX
Runtime (the baseline) and LiteRT fp32 / fp16 / int8; then tflite-runtime 2.14 fp32 / int8 in its
own environment (numpy < 2). Writes bench/tflite.json and bench/tflite.md.

    .venv/bin/python tools/bench_tflite.py --out bench [--models-dir bench/models]

--models-dir adds the product-sized exports of tools/export_bench_models.py (as `make bench` does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["dcgan__legacy_b1", "cgan_dcgan__legacy_b1", "pix2pix_unet__legacy_b1", "espcn__legacy_b1",
            "cyclegan_resnet__legacy_b1", "tiny_decoder__legacy_b1", "mobilenet_resnet__legacy_b1",
            "fast_style__legacy_b1"]
# the upscaler is measured where a product would use it: 128x128 -> 256x256
INPUT_SHAPES = {"upscale2x": {"image": [1, 3, 128, 128]}}
PRECISIONS = ("fp32", "fp16", "int8")


def interleaved(runs: dict, feeds: dict, seconds: float) -> dict[str, float]:
    """Median ms of each callable, timed in interleaved rounds (warm-up first) for ~`seconds` in all."""
    for fn in runs.values():
        for _ in range(3):
            fn(feeds)
    start = time.perf_counter()
    for fn in runs.values():
        fn(feeds)
    rounds = int(min(300, max(15, seconds / max(time.perf_counter() - start, 1e-4))))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn(feeds)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: round(statistics.median(values), 4) for name, values in times.items()}


def worker(config: dict) -> dict:
    """Time TFLite bundles (and optionally the fp32 source) in this process at 1 thread."""
    from edgegen import reference
    from edgegen.backends.tflite.session import Session
    from edgegen.bundle import read_manifest

    runs, runtime, delegated = {}, None, {}
    for name, path in config["bundles"].items():
        session = Session(Path(path), read_manifest(Path(path))["session"], threads=1)
        runs[name], runtime = session.run, session.runtime
        report = session.delegation()
        delegated[name] = f"{report['delegated']}/{report['ops']}"
    if config.get("source"):
        from edgegen.source import SourceSession

        runs["ort_fp32"] = SourceSession(config["source"], threads=1).run
    first = next(iter(config["bundles"].values()))
    feeds, _ = reference.load(Path(first), read_manifest(Path(first)))
    return {"runtime": runtime, "ms": interleaved(runs, feeds, config["seconds"]), "delegated": delegated}


def _tflite_runtime(bundles: dict[str, str], seconds: float) -> dict:
    sys.path.insert(0, str(ROOT / "tools"))
    from tflite_runtime_env import ensure

    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEGEN_TFLITE_RUNTIME": "tflite-runtime", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(ensure()), __file__, "--worker", json.dumps({"bundles": bundles, "seconds": seconds})],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _pytorch_max_abs(model: str, bundle: Path) -> float | None:
    """Max-abs of the fp32 bundle against PyTorch's outputs stored beside a family export."""
    import numpy as np

    from edgegen.runtime import Generator

    npz = ROOT / "tests" / "data" / "families" / f"{model}.npz"
    if not npz.is_file():
        return None
    data = np.load(npz)
    got = Generator.open(bundle).run({k: data[k] for k in data.files if not k.startswith("output:")})
    return float(max(np.abs(got[k[7:]] - data[k]).max() for k in data.files if k.startswith("output:")))


def _source(model: str, models_dir: Path | None) -> tuple[str | Path, str]:
    """Where a model name comes from: the families fixtures, --models-dir, or the zoo."""
    family = ROOT / "tests" / "data" / "families" / f"{model}.onnx"
    if family.is_file():
        return family, "families"
    if models_dir is not None and (models_dir / f"{model}.onnx").is_file():
        return models_dir / f"{model}.onnx", str(models_dir)
    return f"zoo:{model}", "zoo"


def measure(model: str, out: Path, seconds: float, models_dir: Path | None) -> dict:
    from edgegen.build import build

    source, origin = _source(model, models_dir)
    name = model if origin != str(models_dir) else f"{model} (bench/models)"
    bundles, row = {}, {"model": name, "from": origin}
    for precision in PRECISIONS:
        bundles[precision] = out / "bundles" / "tflite" / Path(origin).name / f"{model}-{precision}"
        built = build(source, "x86-litert", bundles[precision], precision=precision,
                      graph_options={"input_shapes": INPUT_SHAPES.get(model, {})})
        fid, session = built.fidelity, built.manifest["session"]
        row[precision] = {"max_abs": fid["max_abs"], "psnr_db": fid["psnr_db"], "ssim": fid["ssim"],
                          "delegation": session["delegation"],
                          "bytes": (bundles[precision] / "model.tflite").stat().st_size}
        if precision == "int8":
            row["int8"]["edgetpu"] = session["edgetpu"]
        row["source"] = built.manifest["model"]["source"]
    row["fp32"]["max_abs_vs_pytorch"] = _pytorch_max_abs(model, bundles["fp32"])
    litert = worker({"bundles": {f"litert_{p}": str(bundles[p]) for p in PRECISIONS}, "source": row["source"],
                     "seconds": seconds})
    legacy = _tflite_runtime({f"tflite_runtime_{p}": str(bundles[p]) for p in ("fp32", "int8")}, seconds)
    ms = {**litert["ms"], **legacy["ms"]}
    row.update(ms=ms, runtimes={"litert": litert["runtime"], "tflite_runtime": legacy["runtime"]},
               delegated={**litert["delegated"], **legacy["delegated"]},
               speedup={"int8_vs_fp32_litert": round(ms["litert_fp32"] / ms["litert_int8"], 2),
                        "int8_litert_vs_ort_fp32": round(ms["ort_fp32"] / ms["litert_int8"], 2),
                        "fp32_litert_vs_ort_fp32": round(ms["ort_fp32"] / ms["litert_fp32"], 2),
                        "int8_vs_fp32_tflite_runtime": round(ms["tflite_runtime_fp32"] / ms["tflite_runtime_int8"], 2)})
    return row


def render(meta: dict, rows: list[dict]) -> str:
    lines = [f"Measured by `{meta['command']}` on {meta['date']} ({meta['host']}); {meta['runtimes']}. "
             "Fidelity: the build's 8 held-out inputs against the fp32 source in ONNX Runtime (fp32 also against "
             "PyTorch's own outputs). Speed: 1 thread, batch 1, medians of interleaved runs in one process; baseline = "
             "the fp32 source in a plain ONNX Runtime session, same run.", "",
             "| model | fp32 max-abs vs ORT | vs PyTorch | fp16 PSNR dB | int8 PSNR dB | ORT fp32 ms | LiteRT fp32 ms "
             "| LiteRT fp16 ms | LiteRT int8 ms | int8 vs fp32 LiteRT | int8 LiteRT vs ORT fp32 | tflite-runtime fp32 ms "
             "| tflite-runtime int8 ms | XNNPACK int8 (LiteRT / tflite-runtime) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, up, d = r["ms"], r["speedup"], r["delegated"]
        torch = f"{r['fp32']['max_abs_vs_pytorch']:.1e}" if r["fp32"]["max_abs_vs_pytorch"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['fp32']['max_abs']:.1e} | {torch} | {r['fp16']['psnr_db']:.1f} | "
            f"{r['int8']['psnr_db']:.1f} | {ms['ort_fp32']:.3f} | {ms['litert_fp32']:.3f} | {ms['litert_fp16']:.3f} | "
            f"{ms['litert_int8']:.3f} | {up['int8_vs_fp32_litert']:.2f}x | {up['int8_litert_vs_ort_fp32']:.2f}x | "
            f"{ms['tflite_runtime_fp32']:.3f} | {ms['tflite_runtime_int8']:.3f} | "
            f"{d['litert_int8']} / {d['tflite_runtime_int8']} |")
    lines += ["", "int8 delegation and Edge TPU compatibility:", ""]
    for r in rows:
        lines.append(f"- {r['model']}: {r['int8']['delegation']}. {r['int8']['edgetpu']}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench")
    parser.add_argument("--models", help="comma-separated zoo names and family files (default: all zoo + families)")
    parser.add_argument("--models-dir", type=Path, help="also every .onnx here (product-sized exports)")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per model and runtime")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    import datetime as dt
    import logging

    from edgegen import zoo
    from edgegen.fileio import write_text

    logging.disable(logging.WARNING)
    os.environ["OMP_NUM_THREADS"] = "1"
    out = Path(args.out)
    models = args.models.split(",") if args.models else [*zoo.names(), *FAMILIES]
    if args.models_dir and not args.models:
        models += sorted(p.stem for p in args.models_dir.glob("*.onnx"))
    rows = []
    for model in models:
        rows.append(measure(model, out, args.seconds, args.models_dir))
        print(json.dumps({k: rows[-1][k] for k in ("model", "ms", "speedup")}), flush=True)
    command = "make bench" if os.environ.get("MAKELEVEL") else " ".join([".venv/bin/python", "tools/bench_tflite.py",
                                                                        *sys.argv[1:]])
    meta = {"command": command, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": f"{platform.machine()}, {os.cpu_count()} cores", "runtimes": ", ".join(sorted(
                {r["runtimes"]["litert"] for r in rows} | {r["runtimes"]["tflite_runtime"] for r in rows}))}
    write_text(out / "tflite.json", json.dumps({**meta, "results": rows}, indent=2) + "\n")
    write_text(out / "tflite.md", render(meta, rows))
    print((out / "tflite.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
