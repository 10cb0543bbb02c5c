"""`edgegen bench`: latency percentiles, throughput and peak memory of a bundle.

Each (subject, threads) configuration runs in its own process, so its peak RSS is its own
and one configuration's warm caches do not flatter the next. The baseline is the fp32
source model in a plain ONNX Runtime session, measured in the same run; the speed-up comes
from a third process that alternates bundle and baseline in short blocks (`interleaved`), so
load from elsewhere on a shared machine hits both alike.
"""

from __future__ import annotations

import json
import logging
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
from .inputs import run_batched
from .specs import TensorSpec, format_shape


def run(bundle_dir: str | Path, threads: list[int], batch: int | None = None, runs: int = 50, warmup: int = 5,
        baseline: bool = False, source: str | None = None, host_fallback: bool = False) -> dict[str, Any]:
    """Benchmark a bundle (and optionally its fp32 source) at each thread count, at `batch` images per call
    (default 1; a model exported with a fixed batch runs at that batch only)."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    fixed = next((s["shape"][0] for s in manifest["model"]["inputs"] if s["shape"] and s["shape"][0]), None)
    built = sorted(int(n) for n in manifest.get("serving", {}).get("batch_sizes", {}))  # --batch-sizes parts
    if fixed is not None and batch not in (None, fixed, *built):
        also = f" or one of the batch sizes it was built with ({', '.join(map(str, built))})" if built else \
            " (the default for it), or rebuild it with --batch-sizes"
        raise BundleError(f"{bundle_dir}: its model was exported with a fixed batch of {fixed}; bench it at "
                          f"--batch {fixed}{also}")
    batch = batch or fixed or 1
    if baseline:  # runs the ONNX source: onnx missing (a device install) is said here, not as a worker's last line
        from .source import SourceSession  # noqa: F401
    rows = []
    for n in threads:
        rows.append(_spawn({"kind": "bundle", "bundle": str(bundle_dir), "threads": n, "batch": batch, "runs": runs,
                            "warmup": warmup, "host_fallback": host_fallback}))
        if baseline:
            common = {"bundle": str(bundle_dir), "source": str(_source_path(manifest, source)), "threads": n,
                      "batch": batch, "runs": runs, "warmup": warmup, "host_fallback": host_fallback}
            rows.append(_spawn({**common, "kind": "source"}))
            pair = _spawn({**common, "kind": "pair"})
            rows[-2]["speedup_vs_baseline"] = pair["speedup"]
            rows[-2]["interleaved"] = pair
    return {"bundle": str(bundle_dir), "target": manifest["target"]["name"], "backend": manifest["backend"],
            "precision": manifest["precision"], "batch": batch, "runs": runs, "rows": rows}


def table(result: dict[str, Any]) -> str:
    """A Markdown table of a bench result."""
    lines = ["| subject | threads | batch | p50 ms | p95 ms | images/s | peak RSS MB | vs fp32 ORT | delegate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ratio = _ratio(r["speedup_vs_baseline"]) if "speedup_vs_baseline" in r else ""
        if ratio and busy_host(r.get("interleaved", {}), r["threads"]):
            ratio += "*"
        subject = f"{r['subject']} (host fallback)" if r.get("host_fallback") else r["subject"]
        lines.append(f"| {subject} | {r['threads']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p95_ms']:.3f} | "
                     f"{r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} | {ratio} | {_delegation(r.get('delegation'))} |")
    fallbacks = sorted({r["host_fallback"] for r in result["rows"] if r.get("host_fallback")})
    lines += ["", *fallbacks] if fallbacks else []
    if any("speedup_vs_baseline" in r for r in result["rows"]):
        lines += ["", f"vs fp32 ORT: the fp32 source's time over the bundle's, measured apart from the p50 columns in "
                      f"one process in alternating blocks of {BLOCK_RUNS} runs, each block started once the other "
                      "runtime's threads had stopped spinning (median of the block pairs' ratios)"]
        busy = [r for r in result["rows"] if busy_host(r.get("interleaved", {}), r["threads"])]
        if busy:
            loads = (f"{r['interleaved']['other_load_cores']:.1f} (at {r['threads']} thread"
                     f"{'s' if r['threads'] > 1 else ''})" for r in busy)
            lines.append(f"* measured while other processes kept {', '.join(loads)} of this host's "
                         f"{busy[0]['interleaved']['host_cpus']} cores busy, which can slow one runtime more than the "
                         "other: rerun on a quiet host")
    return "\n".join(lines)


def busy_host(measured: dict[str, Any], threads: int) -> bool:
    """Whether, during a paired measurement at `threads` threads (`measured`: its `other_load_cores` and
    `host_cpus`), other processes' load beyond the CPUs it left free reached BUSY_CORES: enough to distort
    the ratio. A 2-thread measurement on 2 CPUs competes with any load; on 16 CPUs, with little."""
    other = measured.get("other_load_cores")
    if other is None:
        return False
    return other - max(0, (measured.get("host_cpus") or threads) - threads) >= BUSY_CORES


def host_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _delegation(report: dict[str, Any] | None) -> str:
    """One cell: how much of the graph a delegate took (TFLite bundles), else empty."""
    if not report:
        return ""
    return ", ".join(f"{k}: {v}" for k, v in report.items() if isinstance(v, (int, float, str)))


def _ratio(value: float) -> str:
    """A speed ratio with two decimals, or two significant digits below 0.1 (an FPGA simulation's 0.0031x)."""
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _source_path(manifest: dict[str, Any], given: str | None) -> Path:
    from . import zoo

    path = Path(zoo.resolve(given) if given else manifest["model"]["source"])  # zoo:NAME as everywhere
    if not path.is_file():
        raise BuildError(f"baseline needs the fp32 source model; {path} is not there. Pass it with --source MODEL.")
    if sha256_file(path) == manifest["model"]["source_sha256"]:
        from .graph_load import read_model

        read_model(path)  # its external data too: a .data file moved away is a ModelError saying where it belongs
        return path
    if given is None:
        raise BuildError(f"{path} changed since the bundle was built (sha256 differs); pass --source explicitly.")
    from .graph_load import read_model

    # a model given in the source's place must take the bundle's inputs, no others, at shapes that fit them
    graph = read_model(path).graph  # a file that is no ONNX model (or a truncated one): a ModelError naming it
    weights = {t.name for t in graph.initializer}  # listed as inputs by keep_initializers_as_inputs
    takes = {i.name: [d.dim_value or None for d in i.type.tensor_type.shape.dim] for i in graph.input
             if i.name not in weights}
    wanted = {spec.name: spec.source_shape for spec in map(TensorSpec.from_json, manifest["model"]["inputs"])}
    differs = set(takes) != set(wanted) or any(
        len(takes[name]) != len(dims) or any(a and b and a != b for a, b in zip(takes[name][1:], dims[1:]))
        for name, dims in wanted.items())
    if differs:
        shapes = "; ".join(f"{name} {format_shape(dims)}" for name, dims in sorted(takes.items()))
        bundle = "; ".join(f"{name} {format_shape(dims)}" for name, dims in sorted(wanted.items()))
        raise BuildError(f"--source {path} is not the model this bundle was built from: its sha256 differs from "
                         f"{manifest['model']['source']}'s, and it takes inputs {shapes}, the bundle {bundle}. "
                         "Pass the model the bundle was built from.")
    logging.getLogger(__name__).warning(
        "--source %s is not the file the bundle was built from (its sha256 differs from %s's); it takes the same "
        "inputs, so the ratio is measured against it: a re-export of the same model, or another one", path,
        manifest["model"]["source"])
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
    """Measure one subject ('bundle' or 'source'), or both in alternating blocks ('pair'), in this process."""
    batch, threads = config["batch"], config["threads"]
    bundle_dir = Path(config["bundle"])
    manifest = read_manifest(bundle_dir)
    inputs, _ = reference.load(bundle_dir, manifest)
    feeds = {name: np.repeat(array[:1], batch, axis=0) for name, array in inputs.items()}
    # the reference inputs are in the form the bundle computes on; run() takes the model file's (NHWC, uint8, float16)
    specs = [TensorSpec.from_json(s) for s in manifest["model"]["inputs"]]
    file_feeds = {s.name: s.to_source(feeds[s.name]) for s in specs}
    if config["kind"] == "pair":
        gen = _open(config)
        source = _source_run(config, threads)
        with OtherLoad() as load:
            # the artifact itself, as build measures it (run() adds its checks of the inputs: a fixed cost
            # per call that made a 0.04 ms artifact read 0.55x beside build's 0.96x)
            bundle_times, source_times = interleaved(lambda: gen.run_prepared(feeds), lambda: source(feeds),
                                                     config["runs"], config["warmup"])
        return {"bundle_p50_ms": round(statistics.median(bundle_times), 4),
                "source_p50_ms": round(statistics.median(source_times), 4),
                "speedup": round(paired_speed(bundle_times, source_times), 3), "block_runs": BLOCK_RUNS,
                "other_load_cores": None if load.cores is None else round(load.cores, 2), "host_cpus": host_cpus()}
    delegation = None
    if config["kind"] == "bundle":
        gen = _open(config)
        runtime = getattr(gen.session, "runtime", gen.manifest["backend"])
        subject = f"{gen.manifest['target']['name']} {gen.manifest['precision']} ({runtime})"
        run_once, feeds = gen.run, file_feeds
        delegation = gen.session.delegation() if hasattr(gen.session, "delegation") else None
        fallback = host_fallback(gen.manifest) if config["host_fallback"] else None
    else:
        run_once = _source_run(config, threads)
        subject, fallback = "fp32 source, onnxruntime CPU", None
    times = measure(lambda: run_once(feeds), config["runs"], config["warmup"])
    p50 = statistics.median(times)
    return {"subject": subject, "threads": threads, "batch": batch, "p50_ms": round(p50, 4),
            "p95_ms": round(float(np.percentile(times, 95)), 4), "images_per_s": round(batch * 1e3 / p50, 2),
            "peak_rss_mb": round(_peak_rss_kb() / 1024, 1), "delegation": delegation,
            **({"host_fallback": fallback} if fallback else {})}


def host_fallback(manifest: dict[str, Any]) -> str | None:
    """What a --host-fallback run of the bundle ran in place of its target's hardware or runtime, absent on this
    host (None where they are present and it ran as on the target)."""
    from .backends import session_module

    session = manifest["session"]
    ok, why = session_module(manifest["backend"]).host_support(session)
    if ok:
        return None
    ran = f"CPU ran {session['entry']} instead of the Edge TPU" if session.get("edgetpu_entry") else \
        "CPU path ran instead"
    return f"host fallback (the bundle {why}): this host's {ran}; these are not the target's timings"


def _source_run(config: dict[str, Any], threads: int):
    """The fp32 source's run; a fixed-batch export's in chunks of its batch (a bundle built with
    --batch-sizes is benched at those)."""
    from .float16 import float32_reference  # the build host's onnx: a device benches the bundle alone
    from .source import SourceSession

    session = SourceSession(float32_reference(config["source"]), threads)
    specs = [TensorSpec.from_json(s) for s in read_manifest(Path(config["bundle"]))["model"]["inputs"]]
    return lambda feeds: run_batched(session.run, specs, feeds)


def _open(config: dict[str, Any]):
    from .runtime import Generator

    return Generator.open(config["bundle"], threads=config["threads"], host_fallback=config["host_fallback"])


# Paired measurement of two subjects in one process (`interleaved`): timed runs per block, untimed runs that
# start each block, and when a block may start (`settle`): once this process used under IDLE_SHARE of a core
# in IDLE_SLICES sleeps of SETTLE_SLICE_S in a row, or after SETTLE_LIMIT_S at most.
BLOCK_RUNS, BLOCK_WARMUP = 5, 2
IDLE_SHARE, IDLE_SLICES, SETTLE_SLICE_S, SETTLE_LIMIT_S = 0.1, 2, 0.005, 0.5
BUSY_CORES = 0.5  # other processes' load during a paired measurement that makes its ratio suspect


def interleaved(run_a, run_b, runs: int, warmup: int, block: int = BLOCK_RUNS) -> tuple[list[float], list[float]]:
    """Milliseconds of `runs` calls of each of two subjects, in alternating blocks of `block` timed runs; each
    block waits until this process is idle (`settle`) and starts with BLOCK_WARMUP untimed runs.

    Blocks, not single alternating runs, because the two subjects' runtimes disturb each other otherwise.
    After a call returns, ONNX Runtime's intra-op workers keep spinning for 40-60 ms on this 2-core host
    (`session.intra_op.allow_spinning`, on by default) and OpenVINO's TBB workers for ~5 ms: at 2 threads on
    2 cores, a run that starts right after the other runtime's gets half the cores. Run by run, OpenVINO bf16
    on a 0.5 ms U-Net measured 0.79x the fp32 source where each alone measured 1.0-1.4x (OpenVINO int8 on a
    MobileNetV3-style generator: 0.70x vs 1.07x); with a third process on one core, 0.2-0.3x. Switching also
    evicts the other model from the caches, which costs even at 1 thread (1.16x alternating vs 1.28x alone).
    Not the alternatives: turning the baseline's spinning off (`session.intra_op.allow_spinning` 0) slows
    ONNX Runtime's own runs (0.57 -> 0.76 ms there) and flatters the artifact, and neither it nor
    `session.force_spinning_stop` reaches an artifact's own runtime (an ONNX Runtime bundle spins as long);
    1 thread dodges the pools but does not measure the target's threads (that int8 generator: 1.28x at 1
    thread, 1.07x at 2). A subject in a block after the other's threads went idle runs as it does alone.
    Pairing is kept: blocks of the two alternate within a second, so load from elsewhere hits both alike."""
    block = max(1, min(block, runs))
    for fn in (run_a, run_b):
        for _ in range(warmup):
            fn()
    a: list[float] = []
    b: list[float] = []
    while len(a) < runs:
        count = min(block, runs - len(a))
        for fn, times in ((run_a, a), (run_b, b)):
            settle()
            for _ in range(BLOCK_WARMUP):
                fn()
            for _ in range(count):
                start = time.perf_counter()
                fn()
                times.append((time.perf_counter() - start) * 1e3)
    return a, b


def paired_speed(a: list[float], b: list[float], block: int = BLOCK_RUNS) -> float:
    """How many times faster subject a ran than b in `interleaved` measurements: the median over block
    pairs of b's block median over a's."""
    block = max(1, min(block, len(a)))
    return statistics.median(statistics.median(b[i:i + block]) / statistics.median(a[i:i + block])
                             for i in range(0, len(a), block))


class OtherLoad:
    """A context that measures how many cores other processes kept busy while it ran (host CPU time less
    this process's, steal time included; Linux /proc at 10 ms resolution): `cores`, None where /proc is not
    there. Paired runs cancel load that hits both subjects alike, not load that slows one runtime more (at
    2 threads on 2 cores with a third process on one core, OpenVINO's runs took 1-4 ms where ONNX Runtime's
    kept 0.7 ms)."""

    cores: float | None = None

    def __enter__(self) -> "OtherLoad":
        self._start, self._wall = _cpu_ticks(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        end, wall = _cpu_ticks(), time.perf_counter() - self._wall
        if self._start and end and wall > 0:
            host, own = (e - s for s, e in zip(self._start, end))
            self.cores = max(0.0, (host - own) / os.sysconf("SC_CLK_TCK") / wall)


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole host, ticks of this process), or None."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
        with open("/proc/self/stat") as own:
            utime, stime = own.read().rsplit(")", 1)[1].split()[11:13]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, int(utime) + int(stime)


def settle(limit_s: float = SETTLE_LIMIT_S) -> bool:
    """Sleep until this process's threads are idle (under IDLE_SHARE of a core over IDLE_SLICES slices of
    SETTLE_SLICE_S in a row: a spinning worker that other load kept off the CPU for one slice does not pass):
    the runtimes' worker threads that spin after a call have gone to sleep. False where they still spin
    after `limit_s` (a runtime that never stops spinning)."""
    start, idle = time.perf_counter(), 0
    while time.perf_counter() - start < limit_s:
        cpu, wall = time.process_time(), time.perf_counter()
        time.sleep(SETTLE_SLICE_S)
        idle = idle + 1 if time.process_time() - cpu < IDLE_SHARE * (time.perf_counter() - wall) else 0
        if idle >= IDLE_SLICES:
            return True
    return False


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
