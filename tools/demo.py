"""`make demo`: build the shipped generator for every target this host can run, write sample
images to out/, and print one row per target and precision."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from edgegen import bench, bundle, targets
from edgegen.build import build
from edgegen.errors import EdgegenError
from edgegen.runtime import Generator, to_pil


def image_grid(images: np.ndarray, cols: int) -> np.ndarray:
    """NxHxWxC uint8 -> one grid image, `cols` per row."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = img
    return grid


def samples(gen: Generator, output: str) -> np.ndarray:
    """A grid: one row per label (or seed row for unconditional models), six seeds per row."""
    label = next((s for s in gen.inputs if s.role == "label"), None)
    labels = range(label.num_classes or 1) if label else [None]
    requests = [{"seed": seed, **({"label": lab} if lab is not None else {})} for lab in labels for seed in range(6)]
    return image_grid(gen.generate_batch(requests, output=output), cols=6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="zoo:glyphgen")
    parser.add_argument("--out", default="out")
    args = parser.parse_args()
    out = Path(args.out)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("edgegen.targets").setLevel(logging.INFO)
    rows = []
    for target in targets.runnable_here():
        for precision in target.precisions:
            dest = out / "bundles" / f"{target.name}-{precision}"
            try:
                result = build(args.model, target.name, dest, precision=precision)
            except EdgegenError as exc:
                print(f"skipping {target.name} {precision}: {str(exc)[:160]}...", file=sys.stderr)
                continue
            gen = Generator.open(dest)
            for name in gen.image_outputs:
                path = out / f"{target.name}-{precision}-{name}.png"
                to_pil(samples(gen, name)).save(path)
            timing = bench.run(dest, threads=[target.threads], runs=30)["rows"][0]
            rows.append((target.name, result.manifest["backend"], precision, timing["p50_ms"],
                         result.fidelity["psnr_db"], bundle.bundle_bytes(dest, result.manifest)))
    print(f"\nsample images in {out}/\n")
    print(f"| {'target':<22} | {'backend':<11} | precision | p50 ms | PSNR vs fp32 source dB | bundle KB |")
    print(f"|{'-' * 24}|{'-' * 13}|-----------|--------|------------------------|-----------|")
    for name, backend, precision, p50, psnr, size in rows:
        print(f"| {name:<22} | {backend:<11} | {precision:<9} | {p50:6.2f} | {psnr:22.1f} | {size / 1024:9.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
