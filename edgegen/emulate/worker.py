"""One emulated run, in its own process: `python -m edgegen.emulate.worker CONFIG.json`.

It caps its own address space (the target's memory ceiling) before loading anything, opens the
bundle with the target's thread count, runs the bundle's self-test, saves the outputs of the
reference input, times that input and reports its peak resident memory. It imports numpy, the
bundle's backend and edgegen's runtime only, so it runs the same inside the arm64 userland.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

MiB = 1 << 20
_OOM_WORDS = ("bad_alloc", "out of memory", "cannot allocate memory", "failed to allocate", "memoryerror")


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    if config.get("memory_mb"):
        limit = config["memory_mb"] * MiB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result = run(config)
    except MemoryError:
        result = {"ok": False, "error": "memory", "message": "MemoryError (allocation refused)"}
    except Exception as exc:  # report what the device would have seen, classified
        message = f"{type(exc).__name__}: {exc}"
        is_oom = any(word in message.lower() for word in _OOM_WORDS)
        kind = "memory" if is_oom else _kind(exc)
        result = {"ok": False, "error": kind, "message": str(exc) if kind == "unavailable" else message}
    memory = memory_kb()
    result.update(machine=platform.machine(), peak_rss_mb=round(memory.get("VmHWM", 0) / 1024, 1),
                  peak_vm_mb=round(memory.get("VmPeak", 0) / 1024, 1))
    Path(config["result"]).write_text(json.dumps(result))


def _kind(exc: Exception) -> str:
    """"unavailable" (this host cannot run it: a runtime or simulator absent), "bundle" (another error the user
    can fix) or "crash"."""
    from ..errors import BackendUnavailableError, EdgegenError

    if isinstance(exc, BackendUnavailableError):
        return "unavailable"
    return "bundle" if isinstance(exc, EdgegenError) else "crash"


def run(config: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from .. import reference
    from ..runtime import Generator

    start = time.perf_counter()
    gen = Generator.open(config["bundle"], threads=config["threads"], host_fallback=config.get("host_fallback", False))
    load_s = time.perf_counter() - start
    test = gen.self_test()
    feeds, _ = reference.load(gen.path, gen.manifest)
    outputs = gen.session.run(feeds)
    np.savez(config["outputs"], **outputs)
    times = sample_ms(lambda: gen.session.run(feeds), config["runs"], config["warmup"])
    result = {"ok": True, "self_test": test, "load_s": round(load_s, 3), "latency_ms": times,
              "runtime": runtime_name(gen), "threads": gen.threads, "packages": _versions()}
    if hasattr(gen.session, "execution_report"):
        try:
            result["execution"] = gen.session.execution_report()
        except ImportError:  # a build-host introspection (ONNX Runtime's needs onnx): not on a device
            pass
    return result


def _versions() -> dict[str, str]:
    """The versions of the device runtimes installed where this runs (those the arm64 userland holds)."""
    from importlib import metadata

    from .userland import PACKAGES

    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def runtime_name(gen) -> str:
    """What ran the bundle: the session's runtime and version, else its backend (and NPU mode)."""
    session = gen.session
    return getattr(session, "runtime", None) or " ".join(filter(None, [gen.manifest["backend"],
                                                                       getattr(session, "mode", None)]))


def sample_ms(call, runs: int, warmup: int) -> dict[str, Any]:
    """Median, min and max milliseconds of `runs` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    samples.sort()
    mid = len(samples) // 2
    median = samples[mid] if len(samples) % 2 else (samples[mid - 1] + samples[mid]) / 2
    return {"p50": round(median, 4), "min": round(samples[0], 4), "max": round(samples[-1], 4), "runs": runs}


def memory_kb() -> dict[str, int]:
    """Peak resident (VmHWM) and peak address space (VmPeak, what RLIMIT_AS caps) of this process,
    in KiB; under QEMU the emulator's own process, translator included. Empty when /proc is absent."""
    try:
        with open("/proc/self/status") as status:
            rows = [line.split() for line in status]
    except OSError:
        return {}
    return {row[0].rstrip(":"): int(row[1]) for row in rows if row and row[0] in ("VmHWM:", "VmPeak:")}


if __name__ == "__main__":
    main(sys.argv[1])
