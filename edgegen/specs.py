"""Plain descriptions of model inputs and outputs, shared by the build host and the device.

Only the standard library and numpy: the on-device runtime reads these from the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

ROLES = ("latent", "label", "image", "condition", "tensor")


@dataclass
class TensorSpec:
    """One model input or output as the runtime sees it.

    shape: declared dims, None where dynamic; default_shape: the concrete shape used for
    reference runs and benchmarks (batch 1). range: the value range of image tensors (range_assumed: why,
    where neither the model nor the user gave it). source_form: how
    the model file itself takes or gives an image tensor the build took into NCHW float (layout "NHWC",
    dtype "uint8"; see edgegen.io_forms), or a tensor a float16 export declares float16 (dtype "float16"),
    converted at `Generator.run`'s boundary.
    """

    name: str
    dtype: str
    shape: list[int | None]
    role: str
    default_shape: list[int] = field(default_factory=list)
    range: list[float] | None = None
    num_classes: int | None = None
    source_form: dict[str, str] | None = None
    range_assumed: str | None = None  # where an image input's range came from when nothing declared it

    @property
    def one_hot(self) -> bool:
        """A label input given as one float per class ([N, classes]): a label is fed as a one-hot vector."""
        return self.role == "label" and self.dtype.startswith("float") and len(self.shape) == 2 \
            and self.num_classes is not None and self.shape[1] == self.num_classes

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    @property
    def nhwc(self) -> bool:
        return bool(self.source_form) and self.source_form.get("layout") == "NHWC"

    @property
    def source_dtype(self) -> str:
        """The dtype the model file declares (run() takes and gives arrays of it)."""
        return (self.source_form or {}).get("dtype", self.dtype)

    @property
    def source_shape(self) -> list[int | None]:
        """The shape the model file declares."""
        return self.source_dims(self.shape)

    def source_dims(self, dims) -> list:
        """A shape of this tensor as the bundle computes on it (batch axis first) as the model file gives it."""
        return [dims[i] for i in (0, 2, 3, 1)] if self.nhwc else list(dims)

    def from_source(self, array: np.ndarray) -> np.ndarray:
        """An array in the model file's form (batch axis first) as the bundle computes on it."""
        if self.nhwc:
            array = array.transpose(0, 3, 1, 2) if array.ndim == 4 else array.transpose(2, 0, 1)
        return np.ascontiguousarray(array, dtype=self.dtype)

    @property
    def truncates(self) -> bool:
        """Whether the model file makes its integer pixels by truncating (a Cast with no Round before it)."""
        return (self.source_form or {}).get("rounding") == "toward zero"

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """A computed output (batch axis first) in the model file's form: NHWC, integer pixels rounded as the
        file rounds them and clipped to their type."""
        if self.nhwc:
            array = array.transpose(0, 2, 3, 1)
        dtype = np.dtype(self.source_dtype)
        if dtype.kind in "iu" and array.dtype != dtype:
            info = np.iinfo(dtype)
            array = np.clip(np.trunc(array) if self.truncates else np.rint(array), info.min, info.max)
        return np.ascontiguousarray(array, dtype=dtype)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(**data)


def spec_problem(data: Any) -> str | None:
    """What keeps a manifest's tensor spec from being read as a TensorSpec the runtime can use, or None."""
    def count(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))

    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("shape"), list):
        return "not a tensor spec (name, shape)"
    name, shape = data["name"], data["shape"]
    unknown = set(data) - set(TensorSpec.__dataclass_fields__)
    if unknown:
        return f"{name!r} has unknown key(s) {sorted(unknown)}"
    if not all(d is None or count(d, 0) for d in shape):
        return f"{name!r}: shape {shape!r} is not a list of integers >= 0 or null"
    if data.get("role") not in ROLES:
        return f"{name!r}: role {data.get('role')!r} is not one of {', '.join(ROLES)}"
    try:
        kind = np.dtype(data.get("dtype")).kind if isinstance(data.get("dtype"), str) else ""
    except TypeError:
        kind = ""
    if kind not in ("b", "i", "u", "f"):
        return f"{name!r}: dtype {data.get('dtype')!r} is not a numeric numpy type name"
    default = data.get("default_shape", [])
    if not (isinstance(default, list) and len(default) == len(shape) and all(count(d, 1) for d in default)
            and all(d is None or d == c for d, c in zip(shape, default))):
        return f"{name!r}: default_shape {default!r} is not a shape of positive integers that fits shape {shape!r}"
    value_range = data.get("range")
    if value_range is not None and not (isinstance(value_range, list) and len(value_range) == 2
                                        and all(number(v) for v in value_range) and value_range[0] < value_range[1]):
        return f"{name!r}: range {value_range!r} is not [low, high] with finite low < high"
    if data.get("num_classes") is not None and not count(data["num_classes"], 1):
        return f"{name!r}: num_classes {data['num_classes']!r} is not an integer >= 1"
    form = data.get("source_form")
    if form is not None and not (isinstance(form, dict) and all(isinstance(v, str) for v in form.values())):
        return f"{name!r}: source_form {form!r} is not a mapping of names"
    return None


def format_shape(dims) -> str:
    """A shape as people write it: 1x3x?x? (? for a dynamic dim)."""
    return "x".join("?" if d is None else str(d) for d in dims)
