"""Write the calibration images that `zoo:upscale2x` ships (`--calibration zoo`): low-resolution
128x128 crops of the scikit-image photographs the upscaler was trained on (not its held-out photo),
made the way its training inputs were (x2 area downsampling).

Run:  .venv/bin/python tools/make_zoo_calibration.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_upscaler import TRAIN_IMAGES, downsample, load_photo  # noqa: E402  (a sibling script)

OUT = Path(__file__).resolve().parents[1] / "edgegen" / "zoo" / "upscale2x.calib"
CROP = 256  # high-resolution crop; the calibration input is its 128x128 downsampled version
PER_PHOTO = 2


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    count = 0
    for name in TRAIN_IMAGES:
        photo = load_photo(name)
        h, w = photo.shape[:2]
        if h < CROP or w < CROP:
            continue
        for i in range(PER_PHOTO):
            y, x = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
            low = downsample(np.ascontiguousarray(photo[y:y + CROP, x:x + CROP]), "area")
            Image.fromarray(np.rint(low * 255).astype(np.uint8)).save(OUT / f"{name}_{i}.png", optimize=True)
            count += 1
    print(f"wrote {count} calibration images to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
