"""The extra artifacts of a bundle (trunk, head, ROI pre/post, preview, size tiers, batch-N), each a
backend artifact in `parts/NAME/` with its own session settings and I/O specs in the manifest.
Sessions load on first use; "main" is the bundle's whole-model session."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends
from ..bundle import verify_files
from ..errors import BundleError
from ..inputs import run_batched
from ..specs import TensorSpec

MAIN = "main"


class Parts:
    """Named backend sessions of one bundle, loaded lazily and run with their batch rules."""

    def __init__(self, path: Path, manifest: dict[str, Any], threads: int, host_fallback: bool, main,
                 verify: bool = True):
        """verify: check a part's files against the manifest's sha256 when it loads (the bundle was checked
        when it was opened; a part loads later, when the bundle on disk may have been replaced)."""
        self._path = Path(path)
        self._files = manifest.get("files", {}) if verify else {}
        self._entries = manifest.get("parts", {})
        self._backend = manifest["backend"]
        self._threads = threads
        self._host_fallback = host_fallback
        self._sessions = {MAIN: main}
        self._specs = {MAIN: ([TensorSpec.from_json(s) for s in manifest["model"]["inputs"]],
                              [TensorSpec.from_json(s) for s in manifest["model"]["outputs"]])}
        for name, entry in self._entries.items():
            self._specs[name] = ([TensorSpec.from_json(s) for s in entry["inputs"]],
                                 [TensorSpec.from_json(s) for s in entry["outputs"]])
        self._macs = manifest["model"].get("macs", 0)
        self._lock = threading.Lock()

    def inputs(self, name: str) -> list[TensorSpec]:
        return self._specs[name][0]

    def outputs(self, name: str) -> list[TensorSpec]:
        return self._specs[name][1]

    def macs(self, name: str) -> int:
        """Multiply-accumulates of one sample through a part (the whole model for "main")."""
        return self._entries[name]["macs"] if name != MAIN else self._macs

    def session(self, name: str):
        """The session of a part, loaded on first use."""
        with self._lock:
            if name not in self._sessions:
                if name not in self._entries:
                    raise BundleError(f"{self._path}: the bundle has no part {name!r}; rebuild it with the "
                                      "serving options that need it")
                entry = self._entries[name]
                self._check_files(name, entry["dir"])
                self._sessions[name] = backends.open_session(
                    self._backend, self._path / entry["dir"], entry["session"], self._threads,
                    [spec.name for spec in self.outputs(name)], self._host_fallback)
            return self._sessions[name]

    def _check_files(self, name: str, directory: str) -> None:
        prefix = directory.rstrip("/") + "/"
        try:
            verify_files(self._path, {"files": {k: v for k, v in self._files.items() if k.startswith(prefix)}})
        except BundleError as exc:
            raise BundleError(f"part {name!r}, loaded on its first use: {exc} If the bundle was rebuilt or "
                              "replaced since it was opened, open it again") from None

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a part on batched feeds (extra keys are ignored; fixed-batch parts run in chunks)."""
        specs = self.inputs(name)
        return run_batched(self.session(name).run, specs, {s.name: feeds[s.name] for s in specs})
