"""Plain descriptions of model inputs and outputs, shared by the build host and the device.

Only the standard library and numpy: the on-device runtime reads these from the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ROLES = ("latent", "label", "image", "condition", "tensor")


@dataclass
class TensorSpec:
    """One model input or output as the runtime sees it.

    shape: declared dims, None where dynamic; default_shape: the concrete shape used for
    reference runs and benchmarks (batch 1). range: the value range of image tensors.
    """

    name: str
    dtype: str
    shape: list[int | None]
    role: str
    default_shape: list[int] = field(default_factory=list)
    range: list[float] | None = None
    num_classes: int | None = None

    @property
    def one_hot(self) -> bool:
        """A label input given as one float per class ([N, classes]): a label is fed as a one-hot vector."""
        return self.role == "label" and self.dtype.startswith("float") and len(self.shape) == 2 \
            and self.num_classes is not None and self.shape[1] == self.num_classes

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.shape) and self.shape[0] is None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(**data)


def format_shape(dims) -> str:
    """A shape as people write it: 1x3x?x? (? for a dynamic dim)."""
    return "x".join("?" if d is None else str(d) for d in dims)
