"""Benchmark edgegen emulate on the zoo generator (glyphgen) for every CPU target: the bundle's time
on this host without constraints vs emulated (x86 targets: in a child process under the target's
thread count and memory ceiling; aarch64 targets: in the arm64 userland under QEMU user-mode), the
QEMU slowdown factor, whether arm64 gives the same images, the roofline estimate, and the time it
took to build the arm64 userland (from its stamp, or measured now with --fresh-userland).

    .venv/bin/python tools/bench_emulate.py --out bench      # writes bench/emulate.json and bench/emulate.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgegen import targets  # noqa: E402
from edgegen.build import build  # noqa: E402
from edgegen.emulate import process, userland  # noqa: E402
from edgegen.emulate.device import emulate  # noqa: E402
from edgegen.errors import EdgegenError  # noqa: E402
from edgegen.fileio import write_text  # noqa: E402

MODEL = "zoo:glyphgen"
CPU_BACKENDS = ("tflite", "onnxruntime", "openvino")


def measure_target(target: targets.Target, work: Path, runs: int) -> dict:
    """Build glyphgen for the target at its precision and emulate it; a row of the table."""
    bundle = work / target.name
    try:
        build(MODEL, target.name, bundle)
    except EdgegenError as exc:
        return {"target": target.name, "skipped": f"build failed: {exc}"}
    plain = process.run(bundle, process.Settings(threads=target.threads, memory_mb=None, runs=runs,
                                                 host_fallback=True))
    report = emulate(bundle, runs=runs)
    arm = report.get("aarch64") or {}
    emulated = arm if arm else report["host"]
    row = {"target": target.name, "arch": target.arch, "precision": report["precision"],
           "threads": target.threads, "memory_mb": target.memory_mb, "runtime": emulated.get("runtime"),
           "host_p50_ms": plain["latency_ms"]["p50"], "emulated_p50_ms": emulated["latency_ms"]["p50"],
           "emulated_runs": emulated["latency_ms"]["runs"], "emulated_on": "QEMU aarch64" if arm else
           "this host, under the target's limits", "ratio": round(emulated["latency_ms"]["p50"] /
                                                                   plain["latency_ms"]["p50"], 2),
           "peak_rss_mb": report["host"]["peak_rss_mb"], "estimate_ms": report["estimate"]["latency_ms"],
           "estimate_bound": report["estimate"]["bound"], "pass": report["pass"],
           "checks": report["checks"]}
    if arm:
        row.update(match=arm.get("match"), qemu_peak_rss_mb=arm.get("peak_rss_mb"), qemu_load_s=arm.get("load_s"))
    return row


def markdown(result: dict) -> str:
    lines = [f"Measured by `{result['command']}` on {result['date']} ({result['machine']}, {result['cores']} cores; "
             "the machine was shared with other jobs, so absolute times are noisy; each ratio comes from one run).",
             "",
             f"Model: {MODEL}, batch 1, each target's own precision and thread count. host = the bundle on this "
             "host in a child process without limits; emulated = x86 targets under the target's memory ceiling, "
             "aarch64 targets in the arm64 userland under QEMU (QEMU_CPU=cortex-a72). estimate = roofline from the "
             "target's cited peaks: the device at its peak, a lower bound, not a measurement. For x86 targets "
             "host and emulated run the same runtime one after the other (not interleaved), so their ratio shows "
             "the machine's load more than the limits; for aarch64 targets it is QEMU's slowdown.",
             "",
             "| target | precision | threads | runtime (emulated) | host p50 ms | emulated p50 ms | emulated / host |"
             " arm64 vs x86 | estimate ms (bound) | peak RSS MB | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['target']} | | | skipped: {r['skipped'][:140]} | | | | | | | |")
            continue
        match = f"{r['match']['rule']}: max-abs {r['match']['max_abs']:.2g}" if r.get("match") else "-"
        ratio = f"{r['ratio']:.0f}x (QEMU slowdown)" if r["arch"] == "aarch64" else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['target']} | {r['precision']} | {r['threads']} | {r['runtime']} | {r['host_p50_ms']:.2f} | "
                     f"{r['emulated_p50_ms']:.2f} | {ratio} | {match} | {r['estimate_ms']:.3g} "
                     f"({r['estimate_bound']}) | {r['peak_rss_mb']:.0f} | {'PASS' if r['pass'] else 'FAIL'} |")
    u = result["userland"]
    lines += ["", f"arm64 userland ({u['suite']}, {u['root']}): built in {u['build_s']:.0f} s "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in u['steps_s'].items())}; {u['how']}); "
                  f"{', '.join(f'{k} {v}' for k, v in u['packages'].items())}; {u['size_mb']:.0f} MB."]
    slowdowns = [r["ratio"] for r in result["rows"] if r.get("arch") == "aarch64" and "ratio" in r]
    if slowdowns:
        lines.append(f"QEMU slowdown factor (emulated p50 / host p50) over the aarch64 targets: "
                     f"{min(slowdowns):.0f}x to {max(slowdowns):.0f}x.")
    return "\n".join(lines) + "\n"


def _size_mb(path: Path) -> float:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2 ** 20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--fresh-userland", action="store_true", help="build the arm64 userland anew and time it")
    args = parser.parse_args()
    root = userland.default_root()
    if args.fresh_userland:
        start = time.perf_counter()
        stamp = userland.ensure(root, rebuild=True)
        how = f"measured now ({time.perf_counter() - start:.0f} s wall)"
    else:
        existed = userland.info(root) is not None
        stamp = userland.ensure(root)
        how = "timed when it was built (its stamp)" if existed else "built and timed now"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-emulate-") as tmp:
        for target in targets.load_all():
            if target.backend in CPU_BACKENDS:
                print(f"emulating {MODEL} on {target.name} ...", file=sys.stderr, flush=True)
                rows.append(measure_target(target, Path(tmp), args.runs))
    flags = " --fresh-userland" if args.fresh_userland else ""
    command = f".venv/bin/python tools/bench_emulate.py --out {args.out}{flags}"
    result = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
              "machine": platform.machine(), "cores": os.cpu_count(), "model": MODEL, "runs": args.runs,
              "userland": {"root": str(root), "suite": stamp["suite"], "build_s": stamp["build_s"],
                           "steps_s": stamp["steps_s"], "packages": stamp["packages"], "how": how,
                           "size_mb": round(_size_mb(root), 1)},
              "rows": rows}
    out = Path(args.out)
    write_text(out / "emulate.json", json.dumps(result, indent=2, default=str) + "\n")
    write_text(out / "emulate.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
