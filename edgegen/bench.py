"""`edgegen bench`: latency percentiles, throughput and peak memory of a bundle.

Each (subject, threads) configuration runs in its own process, so its peak RSS is its own
and one configuration's warm caches do not flatter the next. The baseline is the fp32
source model in a plain ONNX Runtime session, measured in the same run; the speed-up comes
from a third process that alternates bundle and baseline runs, so load from elsewhere on a
shared machine hits both alike.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import reference
from .bundle import read_manifest, sha256_file
from .errors import BuildError, BundleError
from .float16 import float32_reference
from .source import SourceSession


def run(bundle_dir: str | Path, threads: list[int], batch: int | None = None, runs: int = 50, warmup: int = 5,
        baseline: bool = False, source: str | None = None, host_fallback: bool = False) -> dict[str, Any]:
    """Benchmark a bundle (and optionally its fp32 source) at each thread count, at `batch` images per call
    (default 1; a model exported with a fixed batch runs at that batch only)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    fixed = next((s["shape"][0] for s in manifest["model"]["inputs"] if s["shape"] and s["shape"][0]), None)
    if fixed is not None and batch not in (None, fixed):
        raise BundleError(f"{bundle_dir}: its model was exported with a fixed batch of {fixed}; bench it at "
                          f"--batch {fixed} (the default for it)")
    batch = fixed or batch or 1
    rows = []
    for n in threads:
        rows.append(_spawn({"kind": "bundle", "bundle": str(bundle_dir), "threads": n, "batch": batch, "runs": runs,
                            "warmup": warmup, "host_fallback": host_fallback}))
        if baseline:
            common = {"bundle": str(bundle_dir), "source": str(_source_path(manifest, source)), "threads": n,
                      "batch": batch, "runs": runs, "warmup": warmup, "host_fallback": host_fallback}
            rows.append(_spawn({**common, "kind": "source"}))
            pair = _spawn({**common, "kind": "pair"})
            rows[-2]["speedup_vs_baseline"] = round(pair["source_p50_ms"] / pair["bundle_p50_ms"], 3)
            rows[-2]["interleaved"] = pair
    return {"bundle": str(bundle_dir), "target": manifest["target"]["name"], "backend": manifest["backend"],
            "precision": manifest["precision"], "batch": batch, "runs": runs, "rows": rows}


def table(result: dict[str, Any]) -> str:
    """A Markdown table of a bench result."""
    lines = ["| subject | threads | batch | p50 ms | p95 ms | images/s | peak RSS MB | vs fp32 ORT | delegate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ratio = f"{r['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in r else ""
        lines.append(f"| {r['subject']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | "
                     f"{r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {ratio} | {_delegation(r.get('delegation'))} |")
    return "\n".join(lines)


def _delegation(report: dict[str, Any] | None) -> str:
    """One cell: how much of the graph a delegate took (TFLite bundles), else empty."""
    if not report:
        return ""
    return ", ".join(f"{k}: {v}" for k, v in report.items() if isinstance(v, (int, float, str)))


def _source_path(manifest: dict[str, Any], given: str | None) -> Path:
    path = Path(given or manifest["model"]["source"])
    if not path.is_file():
        raise BuildError(f"baseline needs the fp32 source model; {path} is not there. Pass it with --source MODEL.")
    if given is None and sha256_file(path) != manifest["model"]["source_sha256"]:
        raise BuildError(f"{path} changed since the bundle was built (sha256 differs); pass --source explicitly.")
    return path


def _spawn(config: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "edgegen.bench", json.dumps(config)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": str(config["threads"])})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BundleError(f"benchmark of {config['bundle']} ({config['kind']}, {config['threads']} threads) "
                          f"failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(run_once, runs: int, warmup: int) -> list[float]:
    """Milliseconds of `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    """Measure one subject ('bundle' or 'source'), or both alternating ('pair'), in this process."""
    batch, threads = config["batch"], config["threads"]
    bundle_dir = Path(config["bundle"])
    inputs, _ = reference.load(bundle_dir, read_manifest(bundle_dir))
    feeds = {name: np.repeat(array[:1], batch, axis=0) for name, array in inputs.items()}
    if config["kind"] == "pair":
        gen = _open(config)
        source = SourceSession(float32_reference(config["source"]), threads)
        bundle_times, source_times = interleaved(lambda: gen.run(feeds), lambda: source.run(feeds),
                                                 config["runs"], config["warmup"])
        return {"bundle_p50_ms": round(statistics.median(bundle_times), 4),
                "source_p50_ms": round(statistics.median(source_times), 4)}
    delegation = None
    if config["kind"] == "bundle":
        gen = _open(config)
        runtime = getattr(gen.session, "runtime", gen.manifest["backend"])
        subject = f"{gen.manifest['target']['name']} {gen.manifest['precision']} ({runtime})"
        run_once = gen.run
        delegation = gen.session.delegation() if hasattr(gen.session, "delegation") else None
    else:
        run_once = SourceSession(float32_reference(config["source"]), threads).run
        subject = "fp32 source, onnxruntime CPU"
    times = measure(lambda: run_once(feeds), config["runs"], config["warmup"])
    p50 = statistics.median(times)
    return {"subject": subject, "threads": threads, "batch": batch, "p50_ms": round(p50, 4),
            "p95_ms": round(float(np.percentile(times, 95)), 4), "images_per_s": round(batch * 1e3 / p50, 2),
            "peak_rss_mb": round(_peak_rss_kb() / 1024, 1), "delegation": delegation}


def _open(config: dict[str, Any]):
    from .runtime import Generator

    return Generator.open(config["bundle"], threads=config["threads"], host_fallback=config["host_fallback"])


def interleaved(run_a, run_b, runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Alternate two subjects run by run (load from elsewhere hits both alike); milliseconds of each."""
    for _ in range(warmup):
        run_a()
        run_b()
    a, b = [], []
    for _ in range(runs):
        for fn, times in ((run_a, a), (run_b, b)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return a, b


def _peak_rss_kb() -> int:
    """This process's peak resident set. Linux's VmHWM belongs to the process image (ru_maxrss is
    inherited from the parent across fork and exec, so it would report the parent's peak)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
