"""Reading an image file (PNG, JPEG, ...) as the RGB uint8 pixels a request takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RequestError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def read_rgb(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 pixels of an image file; RequestError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(eight_bit(image).convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise RequestError(f"{path}: cannot read the image ({exc})") from None


def eight_bit(image):
    """A 16-bit or 32-bit integer grayscale PIL image as 8-bit ('L', 0..65535 scaled to 0..255), which
    Pillow's own convert() would clip at 255 instead; other images as they are."""
    from PIL import Image

    if image.mode not in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return image
    wide = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
