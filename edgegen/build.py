"""`edgegen build`: model + target -> verified bundle.

Load and clean the graph, refuse ops the target cannot run, compile with the target's
backend, run the artifact against the fp32 source on held-out inputs, and publish the
bundle atomically with its manifest.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__, backends, bundle, reference, targets
from .errors import BackendUnavailableError, BuildError, UnsupportedOpError
from .graph import Graph
from .inputs import run_batched, sample_feeds
from .metrics import compare
from .source import SourceSession

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
FP32_MAX_ABS = 1e-3
FP16_PSNR_MARGIN_DB = 6.0
VERIFY_SEED = 10_000


@dataclass
class BuildResult:
    """What a build produced."""

    out: Path
    manifest: dict[str, Any]

    @property
    def fidelity(self) -> dict[str, Any]:
        return self.manifest["fidelity"]


def build(
    model: str | Path | Graph,
    target: str,
    out: str | Path,
    precision: str | None = None,
    samples: int = 8,
    progress: Progress | None = None,
    graph_options: dict[str, Any] | None = None,
) -> BuildResult:
    """Build a bundle for one target. See the module docstring for the steps."""
    report = progress or (lambda stage, done, total: None)
    out = Path(out)
    tgt = targets.load(target)
    precision = precision or tgt.precision
    if precision not in tgt.precisions:
        raise BuildError(f"target {tgt.name} does not offer precision {precision!r}; it offers "
                         f"{', '.join(tgt.precisions)} (see {tgt.path})")
    bundle.check_output_dir(out)
    report("load", 0, 1)
    graph = model if isinstance(model, Graph) else Graph.load(model, **(graph_options or {}))
    compiler = backends.compiler_module(tgt.backend)
    missing = compiler.unsupported_nodes(graph, tgt)
    if missing:
        lines = "; ".join(f"node {n!r} (op {op}): {why}" for n, op, why in missing[:5])
        raise UnsupportedOpError(f"{graph.source}: {len(missing)} node(s) cannot run on target {tgt.name}: {lines}. "
                                 "Replace these ops in the model before export, or pick another target "
                                 "(`edgegen inspect MODEL` shows support per target).")
    staging = bundle.staging_dir(out)
    try:
        report("compile", 0, 1)
        compiled = compiler.compile(graph, tgt, precision, staging)
        report("verify", 0, samples)
        checks = _verify(graph, tgt, precision, staging, compiled["session"], samples, report)
        manifest = _manifest(graph, tgt, precision, compiled, checks)
        bundle.write_manifest(staging, manifest)
        bundle.publish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report("done", 1, 1)
    return BuildResult(out, bundle.read_manifest(out))


def _verify(graph: Graph, tgt: targets.Target, precision: str, staging: Path, session_cfg: dict,
            samples: int, report: Progress) -> dict[str, Any]:
    """Run source and artifact on held-out inputs; fail an fp32 build that drifts past FP32_MAX_ABS."""
    seeds = list(range(VERIFY_SEED, VERIFY_SEED + samples))
    feeds = sample_feeds(graph.inputs, seeds)
    source = SourceSession(graph.source)
    expected = run_batched(source.run, graph.inputs, feeds)
    report("verify", samples // 2, samples)
    session_mod = backends.session_module(tgt.backend)
    native, where = targets.runs_here(tgt)
    threads = tgt.threads
    try:
        session = session_mod.Session(staging, session_cfg, threads, host_fallback=True)
    except BackendUnavailableError:
        raise
    except Exception as exc:  # a runtime's own load error, reported with the artifact it concerns
        raise BuildError(f"the compiled {tgt.backend} artifact for {graph.source} does not load: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    actual = run_batched(session.run, graph.inputs, feeds)
    per_output = {}
    for spec in graph.outputs:
        ref, got = expected[spec.name], actual[spec.name].astype(np.float32)
        data_range = (spec.range[1] - spec.range[0]) if spec.range else float(np.ptp(ref)) or 1.0
        per_output[spec.name] = compare(ref, got, data_range)
    worst = min(per_output.values(), key=lambda r: r["psnr_db"])
    max_abs = max(r["max_abs"] for r in per_output.values())
    ran_on = where if native else f"build host fallback ({where}); device numerics not measured"
    if precision == "fp32" and max_abs > FP32_MAX_ABS:
        raise BuildError(f"fp32 artifact for {tgt.name} differs from the source model by {max_abs:.3g} max-abs "
                         f"(limit {FP32_MAX_ABS}) on {samples} held-out inputs; the build is refused. Report this "
                         "model to the edgegen developers with `edgegen inspect` output.")
    report("verify", samples, samples)
    first = {k: v[:1] for k, v in feeds.items()}
    ref_file = reference.save(staging, first, {k: v[:1] for k, v in expected.items()})
    tolerance = {"max_abs": FP32_MAX_ABS} if precision == "fp32" else \
        {"min_psnr_db": round(worst["psnr_db"] - FP16_PSNR_MARGIN_DB, 2)}
    return {
        "fidelity": {"samples": samples, "seed": VERIFY_SEED, "reference": source.describe,
                     "ran_on": ran_on, "outputs": per_output,
                     "psnr_db": worst["psnr_db"], "ssim": worst.get("ssim"), "max_abs": max_abs},
        "reference": {"file": ref_file, "tolerance": tolerance},
        "latency": _latency(session, first, threads, ran_on),
    }


def _latency(session, feeds: dict[str, np.ndarray], threads: int, where: str, runs: int = 20) -> dict[str, Any]:
    session.run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": round(statistics.median(times), 3), "runs": runs, "batch": 1, "threads": threads,
            "measured_on": where}


def _manifest(graph: Graph, tgt: targets.Target, precision: str, compiled: dict, checks: dict) -> dict[str, Any]:
    costs = graph.node_costs()
    return {
        "edgegen_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": graph.name,
            "source": str(graph.source.resolve()),
            "source_sha256": bundle.sha256_file(graph.source),
            "opset": graph.opset,
            "inputs": [s.to_json() for s in graph.inputs],
            "outputs": [s.to_json() for s in graph.outputs],
            "macs": sum(c.macs for c in costs),
            "param_bytes": sum(c.param_bytes for c in costs),
            "cleanup": graph.notes,
        },
        "target": tgt.to_json(),
        "backend": tgt.backend,
        "precision": precision,
        "session": compiled["session"],
        "tools": {"edgegen": __version__, **compiled["tools"]},
        **checks,
    }
