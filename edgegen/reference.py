"""A bundle's reference data: one input batch and the fp32 source's outputs for it (numpy only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DamagedBundle

FILE = "reference.npz"
OWN_PSNR = "output_min_psnr_db"  # tolerance key: {output: dB} for the outputs the images' min_psnr_db does not cover
OWN_MAX_ABS = "output_max_abs"  # tolerance key: {output: max-abs} where an output's own differs from max_abs


def save(directory: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> str:
    """Write the reference file into a bundle directory; return its name."""
    np.savez(directory / FILE, **{f"input:{k}": v for k, v in inputs.items()},
             **{f"output:{k}": v for k, v in outputs.items()})
    return FILE


def delivered(spec: Any, array: np.ndarray) -> np.ndarray:
    """An output as run() gives it (a float16 export's in float16, a uint8 export's pixels rounded), back in the
    bundle's layout as float32: the form the build measures fidelity in (passes.floor.delivered, numpy only)."""
    return spec.from_source(spec.to_source(array)).astype(np.float32)


def criteria(tolerance: dict[str, Any], names: list[str], covered: set[str]) -> dict[str, dict[str, float]]:
    """Each output's self-test criteria from a manifest's tolerance: max_abs on every output (its own in
    output_max_abs where it has one: an fp32 [0, 255] image's); min_psnr_db on the
    outputs it covers (the images: metrics.quality_outputs), each other output (a score beside an image) its own
    figure in output_min_psnr_db. A bundle built before that was recorded has none: that output is unchecked ({})."""
    own, own_max_abs = tolerance.get(OWN_PSNR, {}), tolerance.get(OWN_MAX_ABS, {})
    result = {}
    for name in names:
        wanted = {"max_abs": own_max_abs.get(name, tolerance["max_abs"])} if "max_abs" in tolerance else {}
        psnr = tolerance.get("min_psnr_db") if name in covered else own.get(name)
        result[name] = wanted if psnr is None else {**wanted, "min_psnr_db": psnr}
    return result


def meets(report: dict[str, float], wanted: dict[str, float]) -> bool:
    """Whether an output's numbers (compare's) meet its criteria (NaN meets none)."""
    return bool(report["max_abs"] <= wanted.get("max_abs", float("inf"))
                and report["psnr_db"] >= wanted.get("min_psnr_db", float("-inf")))


def load(directory: Path, manifest: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, outputs) of a bundle's reference file."""
    path = Path(directory) / manifest["reference"]["file"]
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        # numpy reads what is not an .npz as a pickle, which allow_pickle=False refuses: a damaged file, not a pickle
        why = "not a numpy .npz archive" if "allow_pickle" in str(exc) else str(exc)
        raise DamagedBundle(f"{path}: reference data unreadable ({why}); rebuild the bundle") from None
    split: dict[str, dict[str, np.ndarray]] = {"input": {}, "output": {}}
    for key, value in arrays.items():
        kind, _, name = key.partition(":")
        if kind not in split or not name:
            _damaged(path, f"entry {key!r} is neither input:NAME nor output:NAME")
        split[kind][name] = value
    for kind in ("input", "output"):
        for spec in manifest["model"].get(f"{kind}s", []):
            array = split[kind].get(spec["name"])
            if array is None:
                _damaged(path, f"{kind} {spec['name']!r} is missing (it holds {kind}s {sorted(split[kind])})")
            if not _fits(array.shape, spec.get("shape")):
                _damaged(path, f"{kind} {spec['name']!r} has shape {_dims(array.shape)}, the manifest says "
                               f"{_dims(spec.get('shape'))}")
            if kind == "input" and spec.get("dtype") and array.dtype != np.dtype(spec["dtype"]):
                _damaged(path, f"input {spec['name']!r} is {array.dtype}, the manifest says {spec['dtype']}")
    return split["input"], split["output"]


def _fits(shape: tuple[int, ...], declared: list | None) -> bool:
    """Whether an array's shape is one the manifest's shape allows (a dimension not an integer: any size)."""
    return declared is None or (len(shape) == len(declared) and
                                all(not isinstance(d, int) or d == n for n, d in zip(shape, declared)))


def _dims(shape) -> str:
    return "x".join(str(d) if isinstance(d, int) else "?" for d in shape) if shape is not None else "any"


def _damaged(path: Path, what: str) -> None:
    raise DamagedBundle(f"{path}: the reference data does not match manifest.json: {what}; rebuild the bundle")
