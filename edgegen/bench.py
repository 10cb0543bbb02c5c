"""`edgegen bench`: latency percentiles, throughput and peak memory of a bundle.

Each (subject, threads) configuration runs in its own process, so its peak RSS is its own
and one configuration's warm caches do not flatter the next. The baseline is the fp32
source model in a plain ONNX Runtime session, measured in the same run.
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
from .source import SourceSession


def run(bundle_dir: str | Path, threads: list[int], batch: int = 1, runs: int = 50, warmup: int = 5,
        baseline: bool = False, source: str | None = None, host_fallback: bool = False) -> dict[str, Any]:
    """Benchmark a bundle (and optionally its fp32 source) at each thread count."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    rows = []
    for n in threads:
        rows.append(_spawn({"kind": "bundle", "path": str(bundle_dir), "threads": n, "batch": batch, "runs": runs,
                            "warmup": warmup, "host_fallback": host_fallback}))
        if baseline:
            src = _source_path(manifest, source)
            base = _spawn({"kind": "source", "path": str(src), "bundle": str(bundle_dir), "threads": n,
                           "batch": batch, "runs": runs, "warmup": warmup})
            rows.append(base)
            rows[-2]["speedup_vs_baseline"] = round(base["p50_ms"] / rows[-2]["p50_ms"], 3)
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
        raise BundleError(f"benchmark of {config['path']} ({config['kind']}, {config['threads']} threads) failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(run_once, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    from .runtime import Generator

    batch = config["batch"]
    if config["kind"] == "bundle":
        gen = Generator.open(config["path"], threads=config["threads"], host_fallback=config["host_fallback"])
        runtime = getattr(gen.session, "runtime", gen.manifest["backend"])
        subject = f"{gen.manifest['target']['name']} {gen.manifest['precision']} ({runtime})"
        bundle_dir, run_once = gen.path, gen.run
    else:
        bundle_dir, run_once = Path(config["bundle"]), SourceSession(config["path"], config["threads"]).run
        subject = "fp32 source, onnxruntime CPU"
    inputs, _ = reference.load(bundle_dir, read_manifest(bundle_dir))
    feeds = {name: np.repeat(array, batch, axis=0) for name, array in inputs.items()}
    times = _measure(lambda: run_once(feeds), config["runs"], config["warmup"])
    p50 = statistics.median(times)
    delegation = gen.session.delegation() if config["kind"] == "bundle" and hasattr(gen.session, "delegation") else None
    return {"subject": subject, "threads": config["threads"], "batch": batch, "p50_ms": round(p50, 4),
            "delegation": delegation,
            "p95_ms": round(float(np.percentile(times, 95)), 4), "images_per_s": round(batch * 1e3 / p50, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
