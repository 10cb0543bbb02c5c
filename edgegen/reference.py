"""A bundle's reference data: one input batch and the fp32 source's outputs for it (numpy only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DamagedBundle

FILE = "reference.npz"


def save(directory: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> str:
    """Write the reference file into a bundle directory; return its name."""
    np.savez(directory / FILE, **{f"input:{k}": v for k, v in inputs.items()},
             **{f"output:{k}": v for k, v in outputs.items()})
    return FILE


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
    split = {"input": {}, "output": {}}
    for key, value in arrays.items():
        kind, name = key.split(":", 1)
        split[kind][name] = value
    return split["input"], split["output"]
