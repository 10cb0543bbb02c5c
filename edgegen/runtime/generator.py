"""Generator: a verified bundle behind a request API (seed, label, image -> uint8 pixels)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import backends, reference
from ..bundle import read_manifest, verify_files
from ..errors import RequestError
from ..inputs import check_label, latent_from_seed, run_batched
from ..metrics import compare, value_range
from ..specs import TensorSpec
from .images import image_to_tensor, tensor_to_uint8

Request = dict[str, Any]


class Generator:
    """Serves generation requests from one bundle. Create it with `Generator.open(path)`."""

    def __init__(self, path: Path, manifest: dict[str, Any], session, threads: int):
        self.path = path
        self.manifest = manifest
        self.session = session
        self.threads = threads
        self.inputs = [TensorSpec.from_json(s) for s in manifest["model"]["inputs"]]
        self.outputs = [TensorSpec.from_json(s) for s in manifest["model"]["outputs"]]
        self.image_outputs = [s.name for s in self.outputs if s.role == "image"]

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, verify: bool = True,
             host_fallback: bool = False) -> "Generator":
        """Open a bundle: check every file's sha256 (unless verify=False) and load its backend session.

        threads: intra-op threads (default: the target's, capped at this machine's cores).
        host_fallback: run a bundle built for absent hardware on this host's CPU instead.
        """
        path = Path(path)
        manifest = read_manifest(path)
        if verify:
            verify_files(path, manifest)
        threads = threads or min(manifest["target"]["threads"], os.cpu_count() or 1)
        session_mod = backends.session_module(manifest["backend"])
        session = session_mod.Session(path, manifest["session"], threads, host_fallback=host_fallback)
        return cls(path, manifest, session, threads)

    # -- requests -----------------------------------------------------------------------------
    def generate(self, seed: int | None = None, label: int | None = None, image=None,
                 output: str | None = None, **arrays: np.ndarray) -> np.ndarray:
        """One image as a uint8 HxWxC array. Inputs come from seed (latents), label, image
        (uint8 HxWxC or PIL), or arrays passed by input name without the batch axis."""
        request = {k: v for k, v in dict(seed=seed, label=label, image=image, **arrays).items() if v is not None}
        return self.generate_batch([request], output=output)[0]

    def generate_batch(self, requests: list[Request], output: str | None = None) -> np.ndarray:
        """Images for many requests (dicts with the keyword arguments of `generate`) as NxHxWxC uint8."""
        if not requests:
            raise RequestError("generate_batch needs at least one request")
        name = self._image_output(output)
        spec = next(s for s in self.outputs if s.name == name)
        feeds = self.feeds(requests)
        result = run_batched(self.session.run, self.inputs, feeds)
        return tensor_to_uint8(result[name], spec.range or [0.0, 1.0])

    def feeds(self, requests: list[Request]) -> dict[str, np.ndarray]:
        """Model inputs (with batch axis) for a list of requests."""
        samples = {s.name: [self._sample(s, r, i) for i, r in enumerate(requests)] for s in self.inputs}
        feeds = {}
        for name, items in samples.items():
            if len({a.shape for a in items}) > 1:
                raise RequestError(f"requests in one batch give input {name!r} different shapes "
                                   f"({sorted({a.shape for a in items})}); batch only same-sized requests")
            feeds[name] = np.stack(items)
        return feeds

    def _sample(self, spec: TensorSpec, request: Request, index: int) -> np.ndarray:
        known = {s.name for s in self.inputs} | {"seed", "label", "image"}
        unknown = set(request) - known
        if unknown:
            raise RequestError(f"request {index} has unknown key(s) {sorted(unknown)}; use seed, label, image or "
                               f"input names {[s.name for s in self.inputs]}")
        if spec.name in request and not (spec.role == "label" and np.ndim(request[spec.name]) == 0):
            return self._check_array(spec, np.asarray(request[spec.name]), batched=False)
        if spec.role == "latent":
            if "seed" not in request:
                raise RequestError(f"request {index} needs a seed (or a {spec.name!r} array) for the latent input")
            return latent_from_seed(request["seed"], spec.default_shape[1:]).astype(spec.dtype)
        if spec.role == "label":
            label = request.get("label", request.get(spec.name))
            if label is None:
                top = f"0..{spec.num_classes - 1}" if spec.num_classes else "an integer"
                raise RequestError(f"request {index} needs a label ({top}) for input {spec.name!r}")
            check_label(spec, label)
            return np.full(spec.default_shape[1:], label, dtype=spec.dtype)
        if spec.role == "image" and "image" in request:
            return self._check_array(spec, image_to_tensor(request["image"], spec.default_shape[1],
                                                           spec.range or [0.0, 1.0], spec.dtype), batched=False)
        raise RequestError(f"request {index} gives nothing for input {spec.name!r} (role {spec.role}); pass "
                           f"{'image=' if spec.role == 'image' else spec.name + '='} an array")

    def _image_output(self, output: str | None) -> str:
        if output is None:
            if not self.image_outputs:
                raise RequestError("this model has no image output; use run() for raw tensors")
            return self.image_outputs[0]
        if output not in self.image_outputs:
            raise RequestError(f"no image output named {output!r}; image outputs: {self.image_outputs}")
        return output

    # -- raw tensors ----------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on explicit batched input arrays, checked against the model's spec."""
        names = {s.name for s in self.inputs}
        if set(feeds) != names:
            raise RequestError(f"run() needs exactly the inputs {sorted(names)}; got {sorted(feeds)}")
        checked = {s.name: self._check_array(s, np.asarray(feeds[s.name]), batched=True) for s in self.inputs}
        return run_batched(self.session.run, self.inputs, checked)

    @staticmethod
    def _check_array(spec: TensorSpec, array: np.ndarray, batched: bool) -> np.ndarray:
        declared = spec.shape if batched else spec.shape[1:]
        wanted = "x".join("N" if (d is None and batched and i == 0) else ("?" if d is None else str(d))
                          for i, d in enumerate(declared))
        if array.dtype != np.dtype(spec.dtype):
            raise RequestError(f"input {spec.name!r} must be {spec.dtype}, got {array.dtype}; "
                               f"convert with .astype(np.{spec.dtype})")
        if array.ndim != len(declared) or any(d is not None and d != s for d, s in zip(declared, array.shape)):
            raise RequestError(f"input {spec.name!r} must have shape {wanted or 'scalar'}"
                               f"{' (with the batch axis)' if batched else ' (without the batch axis)'}, "
                               f"got {'x'.join(map(str, array.shape)) or 'scalar'}")
        if spec.role == "label":
            for value in np.unique(array):
                check_label(spec, int(value))
        return array

    # -- self-test --------------------------------------------------------------------------------
    def self_test(self) -> dict[str, Any]:
        """Run the bundle's reference input and compare with its reference output within tolerance."""
        feeds, expected_outputs = reference.load(self.path, self.manifest)
        got = self.session.run(feeds)
        tolerance = self.manifest["reference"]["tolerance"]
        outputs, passed = {}, True
        for spec in self.outputs:
            expected = expected_outputs[spec.name]
            report = compare(expected, got[spec.name].astype(np.float32), value_range(spec.range, expected))
            ok = report["max_abs"] <= tolerance.get("max_abs", float("inf")) and \
                report["psnr_db"] >= tolerance.get("min_psnr_db", float("-inf"))
            outputs[spec.name] = {**report, "pass": ok}
            passed = passed and ok
        return {"pass": passed, "tolerance": tolerance, "outputs": outputs}
