"""Conversions between model tensors and 8-bit images (numpy only; Pillow imported on demand, by `pillow_image`)."""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np

from ..errors import BundleError, EdgegenError, RequestError


class PillowMissing(EdgegenError):
    """Pillow, which picture I/O needs (to_pil, the server's image uploads), is not installed here."""


def pillow_image(purpose: str) -> ModuleType:
    """Pillow's PIL.Image, or PillowMissing saying that `purpose` needs it and how to install it (the runtime
    itself needs only numpy and the bundle's backend)."""
    try:
        from PIL import Image
    except ModuleNotFoundError as exc:
        if exc.name != "PIL":
            raise
        raise PillowMissing(f"{purpose} needs Pillow, which is not installed here (the runtime itself needs only "
                            "numpy and the bundle's backend); `pip install pillow`") from None
    return Image


def tensor_to_uint8(batch: np.ndarray, value_range: list[float], truncate: bool = False) -> np.ndarray:
    """NCHW float tensor in value_range -> NHWC uint8 (rounded, or truncated as a model that casts its own
    pixels does, and clipped)."""
    lo, hi = value_range
    scaled = (batch.astype(np.float32) - lo) * (255.0 / (hi - lo))
    if not np.isfinite(scaled).all():  # would be cast to 0s (NaN) or clipped (infinity): a picture that is not
        bad = int(np.count_nonzero(~np.isfinite(scaled)))
        raise BundleError(f"the model gave NaN or infinity in {bad} of the {scaled.size} output values, so no "
                          "image was made from them: the artifact overflows on this input (a reduced precision's "
                          "range exceeded); rebuild the bundle in fp32 or int8")
    return np.clip(np.trunc(scaled) if truncate else np.rint(scaled), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def image_to_tensor(image, channels: int, value_range: list[float], dtype: str) -> np.ndarray:
    """A uint8 HWC/HW array or a PIL image -> CHW tensor in value_range."""
    lo, hi = value_range
    return (model_pixels(image, channels).astype(np.float32).transpose(2, 0, 1) * ((hi - lo) / 255.0) + lo).astype(dtype)


def not_pixels(image) -> str | None:
    """Why `image` is not a picture when it is a file name or nothing (None otherwise)."""
    if image is None or isinstance(image, (str, bytes, os.PathLike)):
        return (f"image must be pixels (a uint8 HxWxC array or a PIL image), got "
                f"{'None' if image is None else 'a ' + type(image).__name__}; open a file first, e.g. with "
                "PIL.Image.open(path)")
    return None


def picture_array(image) -> np.ndarray:
    """A uint8 array or a PIL image as an array; a PIL image of a mode other than L, RGB or RGBA (palette,
    CMYK, 1-bit, 16-bit grey, grey + alpha) converted to grey or RGB as an image file is read."""
    why = not_pixels(image)
    if why:
        raise RequestError(why)
    if hasattr(image, "getbands") and image.mode not in ("L", "RGB", "RGBA"):
        from ..image_files import eight_bit

        image = eight_bit(image)
        image = image if image.mode == "L" else image.convert("RGB")
    return np.asarray(image)


def model_pixels(image, channels: int) -> np.ndarray:
    """A uint8 HWC/HW array or a PIL image as the HxWxC uint8 pixels a model of `channels` channels takes
    (grey repeated to RGB, RGB to grey by luma, alpha dropped): what a request's cache key is made of, so
    one picture keys alike whatever its mode."""
    array = picture_array(image)
    if array.dtype != np.uint8:
        raise RequestError(f"image must be uint8 HxWxC (or a PIL image), got dtype {array.dtype}; pass float "
                           "tensors by input name instead")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise RequestError(f"image must be HxWxC or HxW, got shape {array.shape}")
    if 0 in array.shape[:2]:
        raise RequestError(f"image is {array.shape[1]}x{array.shape[0]} pixels; give an image with pixels in it")
    if array.shape[2] != channels:
        if channels == 3 and array.shape[2] in (1, 4):
            array = np.repeat(array[:, :, :1], 3, axis=2) if array.shape[2] == 1 else array[:, :, :3]
        elif channels == 1 and array.shape[2] in (3, 4):
            array = np.rint(array[:, :, :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114]))[:, :, None]
        else:
            raise RequestError(f"image has {array.shape[2]} channels; the model takes {channels}")
    return array.astype(np.uint8, copy=False)


def to_pil(image: np.ndarray):
    """A uint8 HWC array as a PIL image (needs Pillow: PillowMissing without it)."""
    return pillow_image("to_pil").fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
