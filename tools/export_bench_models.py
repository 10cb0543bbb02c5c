"""Export product-sized generator models for `make bench` (not committed: bench/models/).

The same faithful PyTorch re-implementations as tools/export_families.py, at the widths and
resolutions people deploy (random seeded weights, BatchNorm statistics warmed up, outputs
scaled like a trained generator's), exported with the legacy exporter: dynamic batch, fixed
resolution (so every benchmark runs at the size the MACs are counted for).

Run:  .venv/bin/python tools/export_bench_models.py --out bench/models
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export_families as ef  # noqa: E402  (a sibling script, not a package)

BENCH_FAMILIES = [
    dataclasses.replace(ef.FAMILY_BY_NAME["cyclegan_resnet"],
                        build=lambda: ef.ResnetGenerator(3, 3, ngf=16, norm_layer=nn.InstanceNorm2d, n_blocks=6),
                        inputs=[ef.InputSpec("input", "input", (1, 3, 128, 128), "image_pm1")]),
    dataclasses.replace(ef.FAMILY_BY_NAME["fast_style"], build=lambda: ef.TransformerNet(w=32),
                        inputs=[ef.InputSpec("X", "input", (1, 3, 64, 64), "image_255")]),
    dataclasses.replace(ef.FAMILY_BY_NAME["pix2pix_unet"],
                        build=lambda: ef.UnetGenerator(3, 3, num_downs=7, ngf=16, norm_layer=nn.BatchNorm2d,
                                                       use_dropout=True),
                        inputs=[ef.InputSpec("input", "input", (1, 3, 128, 128), "image_pm1")]),
    dataclasses.replace(ef.FAMILY_BY_NAME["mobilenet_resnet"],
                        build=lambda: ef.MobileResnetGenerator(3, 3, ngf=32, n_blocks=6),
                        inputs=[ef.InputSpec("x", "input", (1, 3, 128, 128), "image_pm1")]),
    dataclasses.replace(ef.FAMILY_BY_NAME["tiny_decoder"], build=lambda: ef.TinyDecoder(latent_channels=4, c=64),
                        inputs=[ef.InputSpec("input", "latent", (1, 4, 32, 32), "normal")]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/models"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for fam in (dataclasses.replace(f, spatial_dynamic=False) for f in BENCH_FAMILIES):
        path = args.out / f"{fam.name}.onnx"
        if path.exists():
            print(f"{path} exists", flush=True)
            continue
        model = ef.build_model(fam)
        gen = ef.torch.Generator().manual_seed(ef.stable_seed(fam.name, "macs"))
        inputs = ef.make_inputs(fam, 1, gen)
        macs = ef.count_macs(model, inputs)
        ef.export_legacy(model, inputs, path, 17, fam, dynamic=True, caught=[])
        print(f"{path}: {macs / 1e9:.2f} GMACs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
