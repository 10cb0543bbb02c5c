"""`make bench`: measure the zoo models on every target this host runs, against the fp32 source
in plain ONNX Runtime measured in the same run. Writes JSON and a Markdown table."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

from edgegen import bench, bundle, targets, zoo
from edgegen.build import build
from edgegen.errors import EdgegenError
from edgegen.fileio import write_text

# the upscaler is measured where a product would use it: 128x128 -> 256x256
INPUT_SHAPES = {"upscale2x": {"image": [1, 3, 128, 128]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    threads = [int(t) for t in args.threads.split(",")]
    results = []
    for name in zoo.names():
        for target in targets.runnable_here():
            for precision in target.precisions:
                dest = out / "bundles" / f"{name}-{target.name}-{precision}"
                try:
                    built = build(f"zoo:{name}", target.name, dest, precision=precision, bitstream=False,
                                  graph_options={"input_shapes": INPUT_SHAPES.get(name, {})})
                except EdgegenError as exc:
                    print(f"skip {name} on {target.name} {precision}: {str(exc)[:160]}...", file=sys.stderr)
                    continue
                result = bench.run(dest, threads, runs=args.runs, baseline=True)
                result.update(model=name, psnr_db=built.fidelity["psnr_db"], ssim=built.fidelity["ssim"],
                              bundle_bytes=bundle.bundle_bytes(dest, built.manifest))
                results.append(result)
                print(f"{name} {target.name} {precision}\n{bench.table(result)}\n", flush=True)
    meta = {"command": "make bench", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": f"{platform.machine()} {platform.processor() or ''}".strip(), "runs": args.runs}
    write_text(out / "results.json", json.dumps({**meta, "results": results}, indent=2) + "\n")
    write_text(out / "results.md", render(meta, results))
    print((out / "results.md").read_text())
    return 0


def render(meta: dict, results: list[dict]) -> str:
    """One Markdown table: each model x target x precision x threads, with the baseline ratio."""
    lines = [f"Measured by `{meta['command']}` on {meta['date']} ({meta['host']}), {meta['runs']} runs each, "
             "batch 1; baseline = the fp32 source in a plain ONNX Runtime CPU session in the same run; the speed-up "
             "comes from bundle and baseline alternating in blocks of 5 runs in one process, each block once the other "
             "runtime's threads have stopped spinning.",
             "",
             "| model | target | precision | threads | p50 ms | p95 ms | images/s | peak RSS MB | interleaved p50 ms: "
             "bundle / fp32 ORT | speed-up | PSNR dB | bundle KB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows = r["rows"]
        for subject in rows[::2]:
            pair = subject["interleaved"]
            lines.append(f"| {r['model']} | {r['target']} | {r['precision']} | {subject['threads']} | "
                         f"{subject['p50_ms']:.3f} | {subject['p95_ms']:.3f} | {subject['images_per_s']:.1f} | "
                         f"{subject['peak_rss_mb']:.0f} | {pair['bundle_p50_ms']:.3f} / {pair['source_p50_ms']:.3f} | "
                         f"{subject['speedup_vs_baseline']:.2f}x | "
                         f"{r['psnr_db']:.1f} | {r['bundle_bytes'] / 1024:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
