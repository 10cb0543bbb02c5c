"""`edgegen verify`: on the device itself, check an installed bundle: its files' sha256, that it
loads with the target's runtime (no fallback), its self-test (reference input -> reference output
within the precision's tolerance) and its latency. numpy, the backend and edgegen's runtime only."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from . import reference, targets
from .bundle import verify_files
from .errors import BackendUnavailableError
from .runtime.assets import PACK
from .emulate.worker import runtime_name, sample_ms


def verify(bundle: str | Path, threads: int | None = None, runs: int = 10) -> dict[str, Any]:
    """The self-test result of a bundle on this machine, with its numbers."""
    from .runtime import Generator

    try:
        gen = Generator.open(bundle, threads=threads)
    except BackendUnavailableError as exc:  # its advice to fall back to this CPU is not verify's to take
        if exc.absent is None:
            raise
        raise BackendUnavailableError(f"{exc.absent}. verify checks a bundle with its target's own runtime, on the "
                                      "device; to try it on this host instead, run `edgegen emulate BUNDLE` (or "
                                      "generate / bench with --host-fallback)") from None
    _refuse_another_arch(gen.manifest)
    packed = {k: v for k, v in gen.manifest["files"].items() if k == PACK}  # serving checks it entry by entry
    verify_files(gen.path, {"files": packed})
    test = gen.self_test()
    feeds, _ = reference.load(gen.path, gen.manifest)
    times = sample_ms(lambda: gen.session.run(feeds), runs, 2)
    return {"bundle": str(bundle), "target": gen.manifest["target"]["name"], "backend": gen.manifest["backend"],
            "precision": gen.manifest["precision"], "machine": platform.machine(), "threads": gen.threads,
            "runtime": runtime_name(gen), "self_test": test,
            "latency_ms": times, "pass": bool(test["pass"])}


def _refuse_another_arch(manifest: dict[str, Any]) -> None:
    """BackendUnavailableError for a bundle whose target has another architecture than this host (an rpi4 bundle
    on x86 loads in the x86 wheel of its runtime and would pass with this host's numbers), as `edgegen targets`
    says it cannot run here."""
    device = targets.recorded(manifest["target"])
    native, why = targets.runs_here(device, manifest["precision"])
    if not native and device.arch != targets.host_arch():
        raise BackendUnavailableError(f"cannot run this bundle here: it {why}. verify checks a bundle on its device; "
                                      "to try it on this host instead, run `edgegen emulate BUNDLE` (aarch64 targets "
                                      "also run there under QEMU)")
