"""The fp32 source model in a plain ONNX Runtime CPU session: the ground truth of every build
and the baseline of every benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import BuildError, first_line, install_hint


class SourceSession:
    """Runs an ONNX file as exported, with ONNX Runtime's default CPU provider."""

    def __init__(self, path: str | Path | onnx.ModelProto, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BuildError("running the fp32 source model needs onnxruntime; "
                             f"{install_hint('onnxruntime', 'ort')}") from None
        options = ort.SessionOptions()
        options.log_severity_level = 4  # a failed run is reported as a BuildError, not logged as well
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if isinstance(path, onnx.ModelProto):
            self._session = ort.InferenceSession(path.SerializeToString(), options, providers=["CPUExecutionProvider"])
        else:
            self._session = _open_file(ort, Path(path), options)
        name = "transformed graph" if isinstance(path, onnx.ModelProto) else Path(path).name
        self.describe = f"fp32 {name} in onnxruntime {ort.__version__} (CPU)"
        self._names = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name; BuildError when the model cannot run at these input shapes."""
        try:
            return dict(zip(self._names, self._session.run(self._names, feeds)))
        except Exception as exc:  # onnxruntime raises its own exception types
            shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in feeds.items())
            raise SourceRunError(first_line(exc), f"the {self.describe} fails on inputs of shape {shapes}: "
                                 f"{first_line(exc)}. Where the size is the problem, choose with --input-shape one "
                                 "the model can run (an encoder-decoder needs sides divisible by 2 per downsampling "
                                 "step)") from None


class SourceRunError(BuildError):
    """The source model failed to run; `failure` is ONNX Runtime's own first line."""

    def __init__(self, failure: str, message: str):
        super().__init__(message)
        self.failure = failure

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickled whole (a fleet build's Ray task)
        return type(self), (self.failure, str(self))


def _open_file(ort, path: Path, options):
    """The file by path; where ONNX Runtime cannot load it so (a small constant it must read at load time
    kept in external data), from memory with its external data loaded; else a clear error."""
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as by_path:  # onnxruntime raises its own exception types
        try:
            model = onnx.load(str(path), load_external_data=True)
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:
            raise BuildError(f"{path}: ONNX Runtime cannot run the model as exported ({first_line(by_path)}), so "
                             "there is no fp32 reference to check a build against. Re-export the model, or "
                             "check it with onnxruntime.InferenceSession.") from None
