"""Reading an image file (PNG, JPEG, ...) as the RGB uint8 pixels a request takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RequestError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def read_image(path: str | Path, channels: int = 3, data: bytes | None = None) -> np.ndarray:
    """H x W x 3 uint8 pixels of an image file (H x W x 4, its alpha kept, for a 4-channel input), or of its
    bytes `data` read elsewhere (on another machine); RequestError naming the file when it cannot be read."""
    import io

    from PIL import Image

    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            return np.asarray(eight_bit(image).convert("RGBA" if channels == 4 else "RGB"))
    except read_errors() as exc:
        raise RequestError(f"{path}: cannot read the image ({exc})") from None


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a picture raises for a file that is not one Pillow can take: unreadable (UnidentifiedImageError
    is an OSError), a float image (eight_bit), or one past Pillow's decompression-bomb limit (179 megapixels)."""
    from PIL import Image

    return OSError, ValueError, Image.DecompressionBombError


def eight_bit(image):
    """A 16-bit or 32-bit integer grayscale PIL image as 8-bit ('L', 0..65535 scaled to 0..255), which
    Pillow's own convert() would clip at 255 instead; other images as they are. ValueError for a float one
    (mode F): Pillow's convert() truncates its 0..1 values to a black picture, and no scale is given."""
    from PIL import Image

    if image.mode == "F":
        raise ValueError("a 32-bit float image, whose value range the file does not give; save it as an 8- or "
                         "16-bit image, or give the arrays in an .npz file")
    if image.mode not in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return image
    wide = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
