"""`make bench`: edgegen's Ray executor against the local one, measured in one run.

Builds zoo:glyphgen for x86-onnxruntime, then measures (medians of --repeats runs):
- precompute throughput (assets/s) of --assets requests: the local executor (`edgegen precompute`,
  the target's threads), the local render loop alone (what one Ray worker does, without Ray: at the target's
  threads too),
  and the Ray executor with 1 and 2 workers (Ray already running, as on a cluster);
- Ray's fixed costs: ray.init + ray.shutdown of a local instance, and a precompute of --small
  requests on Ray minus the same locally (actor start, bundle transfer and open, shard merge);
- the per-asset overhead Ray adds: the marginal cost per asset (from --small to --assets) with 1
  worker minus that of the render loop;
- a fleet build of every CPU target that runs here (targets.runnable_here, FPGA boards left out),
  local (one after the other) against Ray (one task per target).
Writes OUT/ray.json and OUT/ray.md.

    .venv/bin/python tools/bench_ray.py --out bench [--assets 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ray

from edgegen import targets
from edgegen.build import BuildOptions, build
from edgegen.bundle import read_manifest
from edgegen.fileio import write_text
from edgegen.precompute import add_assets, load_requests, render_assets, render_threads, rendered_on
from edgegen.runtime import Generator
from edgegen.scale.fleet import build_fleet

MODEL = "zoo:glyphgen"
TARGET = "x86-onnxruntime"
CPUS = 2


def seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, list[float]]:
    times = [seconds(fn) for _ in range(repeats)]
    return statistics.median(times), [round(t, 3) for t in times]


def request_file(directory: Path, count: int) -> Path:
    """count requests: seeds 0.. x the 10 labels."""
    path = directory / f"requests-{count}.yaml"
    path.write_text(f"grid: {{seed: '0..{max(0, count // 10 - 1)}', label: '0..{min(count, 10) - 1}'}}\n")
    assert len(load_requests(path)) == count, "count must be a multiple of 10 or below 10"
    return path


def precompute_runs(base: Path, work: Path, requests: Path, repeats: int, **executor: Any) -> tuple[float, list]:
    """Median seconds of `add_assets` on a fresh copy of the bundle (no assets yet) per run."""
    def timed_run() -> float:
        copy = work / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(base, copy)
        return seconds(lambda: add_assets(copy, requests, **executor))

    times = [timed_run() for _ in range(repeats)]
    return statistics.median(times), [round(t, 3) for t in times]


def loop_runs(base: Path, work: Path, requests: Path, repeats: int) -> tuple[float, list]:
    """Median seconds of the local render loop (render_assets) at the target's threads, bundle opened once."""
    gen = Generator.open(base, threads=render_threads(read_manifest(base)), host_fallback=True, cache_bytes=0,
                         feature_cache_bytes=0, assets=False)
    listed, where = load_requests(requests), rendered_on(gen.manifest)
    out = work / "loop"

    def run() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        render_assets(gen, listed, out, where, lambda *_: None)

    return median_of(repeats, run)


def fleet_runs(model: str, names: list[str], work: Path, repeats: int, executor: str) -> tuple[float, list]:
    def run() -> None:
        out = work / f"fleet-{executor}"
        shutil.rmtree(out, ignore_errors=True)
        for _ in build_fleet(model, names, out, BuildOptions(), executor):
            pass

    return median_of(repeats, run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench")
    parser.add_argument("--assets", type=int, default=2000, help="requests precomputed per run (a multiple of 10)")
    parser.add_argument("--small", type=int, default=10, help="requests of the fixed-cost run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgegen-bench-ray-") as tmp:
        work = Path(tmp)
        base = work / "glyphgen"
        build(MODEL, TARGET, base)
        big, small = request_file(work, args.assets), request_file(work, args.small)
        r = args.repeats

        init_times = []
        for _ in range(r):
            init_times.append(seconds(lambda: ray.init(num_cpus=CPUS, logging_level="ERROR", log_to_driver=False)))
            init_times[-1] += seconds(ray.shutdown)
        ray.init(num_cpus=CPUS, logging_level="ERROR", log_to_driver=False)
        runs = {
            "local": precompute_runs(base, work, big, r),
            "loop": loop_runs(base, work, big, r),
            "ray_1": precompute_runs(base, work, big, r, executor="ray", workers=1),
            "ray_2": precompute_runs(base, work, big, r, executor="ray", workers=2),
            "small_local": precompute_runs(base, work, small, r),
            "small_loop": loop_runs(base, work, small, r),
            "small_ray_1": precompute_runs(base, work, small, r, executor="ray", workers=1),
        }
        cpu_targets = [t.name for t in targets.runnable_here() if t.backend != "fpga"]
        runs["fleet_local"] = fleet_runs(MODEL, cpu_targets, work, r, "local")
        runs["fleet_ray"] = fleet_runs(MODEL, cpu_targets, work, r, "ray")
        ray.shutdown()

    n, m = args.assets, args.small
    med = {k: v[0] for k, v in runs.items()}
    per_asset_ray = (med["ray_1"] - med["small_ray_1"]) / (n - m)
    per_asset_loop = (med["loop"] - med["small_loop"]) / (n - m)
    result = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "ray": ray.__version__,
                 "loadavg_before": [round(x, 2) for x in load_before],
                 "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "model": MODEL, "target": TARGET, "assets": n, "small": m, "repeats": r, "ray_cpus": CPUS,
        "precompute": {
            name: {"median_s": round(med[key], 3), "assets_per_s": round(n / med[key], 1), "runs_s": runs[key][1]}
            for name, key in [("local executor (target threads)", "local"), ("local render loop alone", "loop"),
                              ("ray, 1 worker", "ray_1"), ("ray, 2 workers", "ray_2")]},
        "ray_fixed": {
            "init_shutdown_s": round(statistics.median(init_times), 3), "init_shutdown_runs_s": [round(t, 3) for t in init_times],
            "run_s": round(med["small_ray_1"] - med["small_local"], 3),
            "small_runs_s": {"ray_1": runs["small_ray_1"][1], "local": runs["small_local"][1]}},
        "per_asset_ms": {"ray_1_worker": round(per_asset_ray * 1e3, 3), "loop": round(per_asset_loop * 1e3, 3),
                         "ray_overhead": round((per_asset_ray - per_asset_loop) * 1e3, 3)},
        "fleet": {"targets": cpu_targets,
                  "local_s": round(med["fleet_local"], 2), "ray_s": round(med["fleet_ray"], 2),
                  "speedup": round(med["fleet_local"] / med["fleet_ray"], 2),
                  "runs_s": {"local": runs["fleet_local"][1], "ray": runs["fleet_ray"][1]}},
    }
    out = Path(args.out)
    write_text(out / "ray.json", json.dumps(result, indent=2) + "\n")
    write_text(out / "ray.md", markdown(result))
    print(markdown(result))
    return 0


def markdown(res: dict[str, Any]) -> str:
    pre, fixed, per, fleet, host = res["precompute"], res["ray_fixed"], res["per_asset_ms"], res["fleet"], res["host"]
    local = pre["local executor (target threads)"]["assets_per_s"]
    lines = [
        "# Ray executor vs local",
        "",
        f"`{res['command']}` on {host['machine']} with {host['cpus']} CPUs, Ray {host['ray']} "
        f"(`ray.init(num_cpus={res['ray_cpus']})` on this machine); {res['model']} built for {res['target']}; "
        f"median of {res['repeats']} runs. Load average {host['loadavg_before'][0]} before, "
        f"{host['loadavg_after'][0]} after: other work shared the 2 cores, so read ratios, not absolutes.",
        "",
        f"## Precompute of {res['assets']} assets (Ray already running)",
        "",
        "| executor | median s | assets/s | vs local executor |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in pre.items():
        lines.append(f"| {name} | {row['median_s']} | {row['assets_per_s']} | {row['assets_per_s'] / local:.2f}x |")
    lines += [
        "",
        f"- Ray's start-up: `ray.init` + `ray.shutdown` of a local instance: {fixed['init_shutdown_s']} s "
        "(paid once per `edgegen precompute --executor ray` without `--ray-address`; a running cluster does not pay it).",
        f"- Ray's fixed cost per run: {fixed['run_s']} s ({res['small']} requests on 1 Ray worker minus the local "
        "executor: actor start, bundle transfer and open, merge).",
        f"- Per asset: {per['ray_1_worker']} ms on 1 Ray worker against {per['loop']} ms in the local render "
        f"loop (marginal cost from {res['small']} to {res['assets']} requests): Ray adds {per['ray_overhead']} ms per "
        "asset (shipping pixels through the object store, shard packs, merge).",
        "",
        f"## Fleet build: {', '.join(fleet['targets'])}",
        "",
        "| executor | median s |",
        "| --- | ---: |",
        f"| local (one after the other) | {fleet['local_s']} |",
        f"| ray (one task per target, {res['ray_cpus']} CPUs) | {fleet['ray_s']} |",
        "",
        f"Ray / local speed-up: {fleet['speedup']}x.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
