"""Calibration data for quantization and pruning.

Sources: the model's own input spec (seeded latents, labels cycled, smooth synthetic images),
a folder of images (for image inputs), `.npy`/`.npz` arrays, or `zoo` (the calibration images a
zoo model ships). Calibration seeds (0..n-1) never overlap the build's held-out verification seeds.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RequestError, first_line
from ..host_memory import MEMORY_SHARE, over_share
from ..image_files import IMAGE_SUFFIXES, eight_bit, read_errors
from ..inputs import check_label, chunks, sample_feeds
from ..specs import TensorSpec
from ..zoo import ZOO_DIR

MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # the picture mode a folder's images are read in, by input channels


@dataclass
class Calibration:
    """A batch of calibration inputs (by input name) and where it came from."""

    feeds: dict[str, np.ndarray]
    source: str

    @property
    def count(self) -> int:
        return len(next(iter(self.feeds.values())))

    def samples(self, batch: int = 1) -> list[dict[str, np.ndarray]]:
        """Feed dicts of `batch` samples each (a model exported with a fixed batch takes only that many;
        the last one is padded by repeating its final sample, which leaves min/max ranges as they are)."""
        return [chunk for chunk, _ in chunks(self.feeds, batch)]

    def report(self) -> dict:
        return {"source": self.source, "count": self.count}


def load_calibration(specs: list[TensorSpec], source: str | None, count: int, model_name: str = "",
                     activation_bytes: int = 0) -> Calibration:
    """Calibration inputs from `source` (None/'spec', 'zoo', an image folder, or an .npy/.npz file);
    activation_bytes: what the model's tensors take per sample, which calibration keeps too."""
    if count < 1:
        raise RequestError(f"calibration count must be >= 1, got {count}")
    if source in (None, "spec"):
        check_memory(specs, count, activation_bytes)
        return Calibration(sample_feeds(specs, list(range(count))), f"input spec (seeds 0..{count - 1})")
    if source == "zoo":
        folder = ZOO_DIR / f"{model_name}.calib"
        if not folder.is_dir():
            raise RequestError(f"zoo model {model_name!r} ships no calibration images ({folder}); use "
                               "--calibration spec, a folder of images or an .npz file")
        return _from_images(specs, folder, count, f"zoo:{model_name} calibration images", activation_bytes)
    path = Path(source)
    if path.is_dir():
        return _from_images(specs, path, count, str(path), activation_bytes)
    if path.suffix in (".npy", ".npz") and path.is_file():
        return _from_arrays(specs, path, count)
    if not path.exists() and (path.suffix in (".npy", ".npz") or len(path.parts) > 1):
        raise RequestError(f"calibration source {source!r}: no such file or folder")
    raise RequestError(f"calibration source {source!r} is neither 'spec', 'zoo', a folder of images nor an "
                       ".npy/.npz file")


def check_memory(specs: list[TensorSpec], count: int, activation_bytes: int = 0) -> None:
    """Refuse a calibration count whose samples, and the tensors the calibrator collects from each (up to the
    model's activations: the histogram methods keep them all), would not fit in this host's memory (arrays
    from a file give at most the samples they hold, so only the spec and image folders are checked)."""
    per_sample = sum(v.nbytes for v in sample_feeds(specs, [0]).values()) + activation_bytes
    available = over_share(count * per_sample)
    if available:
        most = max(1, int(available * MEMORY_SHARE // per_sample))
        raise RequestError(f"--calibration-count {count}: calibration holds every sample and what it collects "
                           "from it in memory, about "
                           f"{count * per_sample / 1e9:,.1f} GB ({per_sample / 1e6:.2f} MB per sample), and this "
                           f"host has {available / 1e9:.1f} GB available; use at most {most} (32-512 samples are "
                           "typical)")


def _from_images(specs: list[TensorSpec], folder: Path, count: int, label: str,
                 activation_bytes: int = 0) -> Calibration:
    check_memory(specs, count, activation_bytes)
    spec, files = _image_files(specs, folder)
    # fewer samples than files: spread over the sorted folder (its first N were one class: cat_*, dog_*)
    chosen = [files[i % len(files)] for i in range(count)] if count >= len(files) else _spread(files, count)
    c, h, w = spec.default_shape[1:]
    taken = f"{len(files)} files, repeated to {count} samples" if count > len(files) else \
        f"{count} of its {len(files)} files, spread over their sorted names" if count < len(files) else \
        f"{len(files)} files"
    return Calibration(_image_feeds(specs, spec, chosen, 0), f"{label} ({taken}, resized to {w}x{h})")


def held_out_images(specs: list[TensorSpec], folder: Path, calibrated: int, count: int, skip: int = 0,
                    seed: int = 0) -> Calibration | None:
    """`count` inputs from the folder's image files that calibration with `calibrated` samples does not read,
    spread over their sorted names (after leaving out the `skip` the held-out inputs take the same way), other
    inputs seeded from `seed`; None where the folder holds fewer."""
    spec, files = _image_files(specs, folder)
    used = set(files if calibrated >= len(files) else _spread(files, calibrated))
    rest = [f for f in files if f not in used]
    unread = len(rest)
    if skip:
        held = set(_spread(rest, skip)) if len(rest) > skip else set(rest)
        rest = [f for f in rest if f not in held]
    if len(rest) < count:
        return None
    after = f", besides the {skip} held-out ones" if skip else ""
    return Calibration(_image_feeds(specs, spec, _spread(rest, count), seed),
                       f"{count} of the {unread} images in {folder.name}/ calibration did not read{after}")


def _spread(files: list[Path], count: int) -> list[Path]:
    return [files[i * len(files) // count] for i in range(count)]


def _image_files(specs: list[TensorSpec], folder: Path) -> tuple[TensorSpec, list[Path]]:
    """The model's one image input and the folder's image files, sorted by name."""
    image_specs = [s for s in specs if s.role == "image"]
    if len(image_specs) != 1:
        raise RequestError(f"calibration from images needs a model with exactly one image input; this one has "
                           f"{[s.name for s in image_specs] or 'none'}. Use an .npz file keyed by input name.")
    spec = image_specs[0]
    if spec.default_shape[1] not in MODES:
        raise RequestError(f"calibration from images fills 1 (grey), 3 (RGB) or 4 (RGBA) channels; input "
                           f"{spec.name!r} has {spec.default_shape[1]}. Use an .npz file keyed by input name.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise RequestError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return spec, files


def _image_feeds(specs: list[TensorSpec], spec: TensorSpec, files: list[Path], seed: int) -> dict[str, np.ndarray]:
    """The files as the image input's samples (resized, in its range), the other inputs seeded from `seed`."""
    from PIL import Image

    c, h, w = spec.default_shape[1:]
    lo, hi = spec.range or [0.0, 1.0]
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                img = eight_bit(img).convert(MODES[c]).resize((w, h), Image.Resampling.BICUBIC)
                array = np.asarray(img, dtype=np.float32).reshape(h, w, c).transpose(2, 0, 1)
        except read_errors() as exc:
            raise RequestError(f"{file}: not a readable image ({exc}); remove it from the calibration folder") from None
        images.append(lo + array * ((hi - lo) / 255.0))
    feeds = sample_feeds([s for s in specs if s is not spec], list(range(seed, seed + len(files))))
    feeds[spec.name] = np.stack(images).astype(spec.dtype)
    return feeds


def _check_image_range(path: Path, spec: TensorSpec, array: np.ndarray) -> None:
    """Refuse an image input's float arrays that reach past its value range by more than the range's width (0..255
    pixels for a [0, 1] input): the int8 grid would be set, and the build verified, for inputs the model never
    gets (such a build reported 40.9 dB and served photos at 12 dB)."""
    if spec.role != "image" or not spec.range or array.dtype.kind != "f" or not array.size:
        return
    lo, hi = spec.range
    low, high = float(array.min()), float(array.max())
    if low >= lo - (hi - lo) and high <= hi + (hi - lo):
        return
    source = f"assumed: {spec.range_assumed}" if spec.range_assumed else "as the model or --input-range gives it"
    raise RequestError(f"{path}: array {spec.name!r} holds values {low:g}..{high:g}, far outside the image input's "
                       f"range [{lo:g}, {hi:g}] ({source}). Scale the arrays to that range (pixels 0..255 for "
                       f"[0, 1]: divide by 255), or give the range the model takes with --input-range "
                       "LO,HI")


def _from_arrays(specs: list[TensorSpec], path: Path, count: int) -> Calibration:
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            if len(specs) != 1:
                raise RequestError(f"{path}: an .npy file calibrates single-input models only; this model has "
                                   f"inputs {[s.name for s in specs]}: use an .npz keyed by input name")
            arrays = {specs[0].name: data}
        else:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        why = "not an array file numpy wrote" if "pickle" in str(exc) else first_line(exc)
        raise RequestError(f"{path}: cannot read calibration arrays ({why}); save them with numpy.save or "
                           "numpy.savez (keyed by input name)") from None
    feeds = {}
    for spec in specs:
        if spec.name not in arrays:
            raise RequestError(f"{path}: no array for input {spec.name!r} (has {sorted(arrays)})")
        array = arrays[spec.name]
        if not isinstance(array, np.ndarray):  # a member numpy could not read as .npy: it hands back its bytes
            raise RequestError(f"{path}: member {spec.name!r} is not a numpy array; save the arrays with "
                               "numpy.savez (keyed by input name)")
        want = spec.default_shape[1:]
        in_file = spec.source_dims(spec.default_shape)[1:]  # the model file's form (a uint8 NHWC export's)
        also = f" (or {spec.source_dtype} [N, {', '.join(map(str, in_file))}], as the model file declares it)" \
            if (spec.source_dtype, in_file) != (spec.dtype, want) else ""
        if (array.dtype, list(array.shape[1:])) == (np.dtype(spec.source_dtype), list(in_file)) and also:
            array = spec.from_source(array)
        if array.dtype != np.dtype(spec.dtype):
            raise RequestError(f"{path}: array {spec.name!r} is {array.dtype}; the input is {spec.dtype}{also} "
                               f"(numpy: array.astype(np.{spec.dtype}))")
        if list(array.shape[1:]) != list(want):
            raise RequestError(f"{path}: array {spec.name!r} has shape {list(array.shape)}; expected "
                               f"[N, {', '.join(map(str, want))}] (N samples of the input's shape){also}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RequestError(f"{path}: array {spec.name!r} holds NaN or infinite values")
        _check_image_range(path, spec, array)
        if spec.role == "label" and spec.one_hot and array.size and (array.min() < 0 or array.max() > 1):
            raise RequestError(f"{path}: array {spec.name!r} holds values outside [0, 1] ({float(array.min()):g}.."
                               f"{float(array.max()):g}); a one-hot label of {spec.num_classes} classes takes rows of "
                               "0s and a 1 (or class weights between 0 and 1)")
        if spec.role == "label" and not spec.one_hot and array.size:
            for value in (int(array.min()), int(array.max())):
                try:
                    check_label(spec, value)
                except RequestError as exc:
                    raise RequestError(f"{path}: array {spec.name!r}: {exc}") from None
        feeds[spec.name] = array
    counts = {name: len(array) for name, array in feeds.items()}
    if min(counts.values()) == 0 or len(set(counts.values())) > 1:
        raise RequestError(f"{path}: the arrays must hold the same number of samples, at least one: {counts}")
    feeds = {name: array[:count] for name, array in feeds.items()}
    return Calibration(feeds, f"{path} ({min(count, len(next(iter(feeds.values()))))} samples)")
