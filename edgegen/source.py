"""The fp32 source model in a plain ONNX Runtime CPU session: the ground truth of every build
and the baseline of every benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import BuildError


class SourceSession:
    """Runs an ONNX file as exported, with ONNX Runtime's default CPU provider."""

    def __init__(self, path: str | Path | onnx.ModelProto, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BuildError("running the fp32 source model needs onnxruntime; `pip install edgegen[ort]`") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        model = path.SerializeToString() if isinstance(path, onnx.ModelProto) else str(path)
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        name = "transformed graph" if isinstance(path, onnx.ModelProto) else Path(path).name
        self.describe = f"fp32 {name} in onnxruntime {ort.__version__} (CPU)"
        self._names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name."""
        return dict(zip(self._names, self._session.run(self._names, feeds)))
