"""Reading an image file (PNG, JPEG, ...) as the RGB uint8 pixels a request takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RequestError


def read_rgb(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 pixels of an image file; RequestError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise RequestError(f"{path}: cannot read the image ({exc})") from None
