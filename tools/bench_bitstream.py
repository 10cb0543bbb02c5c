"""Bitstream benchmark: models built to real bitstreams for FPGA board targets with the open flow
(Yosys, nextpnr, icepack/ecppack from YoWASP); per model: resources, Fmax, cycles per image (RTL
simulation), images/s = Fmax / cycles, the time of each stage, and the weight swap (same architecture,
new weights, patched with icebram/ecpbram) against a full rebuild, which must give the same bytes.

Writes bench/bitstream.json and bench/bitstream.md. Usage: python tools/bench_bitstream.py --out bench
[--only ice40|ecp5] [--targets ice40-up5k,...] [--models dcgan,...] [--full-only] [--no-rebuild]. Each row
records the run (command, date, load) that measured it; a run replaces its own rows and keeps the others (runs of disjoint rows may go at the same time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_bitstream import tiny_decoder  # noqa: E402  (the same small decoder the tests build)

from edgegen import zoo  # noqa: E402
from edgegen.backends.fpga import bitstream  # noqa: E402
from edgegen.build import build  # noqa: E402
from edgegen.errors import EdgegenError  # noqa: E402
from edgegen.fileio import write_text  # noqa: E402

FAMILIES = ROOT / "tests" / "data" / "families"
SPRAM_TARGET = "ice40-up5k"  # the UP5K with weights and activations in SPRAM


def reweighted(source: Path, dest: Path, seed: int) -> Path:
    """The same architecture with new weights: every float initializer scaled and jittered."""
    model = onnx.load(str(source))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 1:
            new = array * rng.uniform(0.8, 1.2, array.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(new.astype(np.float32), init.name))
    onnx.save(model, str(dest))
    return dest


def one(label: str, model_a: Path, model_b: Path, target: str, work: Path, rebuild: bool, swap: bool = True) -> dict:
    """Full build of A (empty cache), weight swap to B (unless not swap), and (optionally) B rebuilt from
    scratch."""
    row: dict = {"model": label, "target": target}
    bitstream.CACHE = work / "cache-shared"
    start = time.perf_counter()
    try:
        a = build(model_a, target, work / f"{label}-{target}-a", precision="int8").manifest["session"]["bitstream"]
    except EdgegenError as exc:
        return {**row, "error": str(exc)}
    row["build_s"] = round(time.perf_counter() - start, 1)
    if not a.get("built"):
        return {**row, "error": a.get("reason")}
    row.update({k: a.get(k) for k in ("part", "lanes", "fmax_mhz", "cycles_per_image", "latency_ms", "images_per_s",
                                      "clock_mhz", "latency_ms_at_board_clock", "resources", "stages_s", "pll",
                                      "oscillator_mhz", "timing_met")})
    row["bitstream_bytes"] = (work / f"{label}-{target}-a" / a["bitstream"]).stat().st_size
    if not swap:
        shutil.rmtree(work / "cache-shared", ignore_errors=True)
        return row
    start = time.perf_counter()
    b = build(model_b, target, work / f"{label}-{target}-b", precision="int8").manifest["session"]["bitstream"]
    row["swap_build_s"] = round(time.perf_counter() - start, 1)
    row["weight_swap"] = b["weight_swap"]
    swapped = (work / f"{label}-{target}-b" / b["bitstream"]).read_bytes()
    # a third set of weights: a second swap, with the patcher's WebAssembly already compiled
    model_c = reweighted(model_b, work / f"{label}-{target}-c.onnx", 5)
    warm = build(model_c, target, work / f"{label}-{target}-a2", precision="int8").manifest["session"]["bitstream"]
    row["warm_swap_s"] = warm["weight_swap"].get("seconds")  # None: not a swap (the reason is in weight_swap)
    if rebuild:
        bitstream.CACHE = work / "cache-fresh"
        start = time.perf_counter()
        c = build(model_b, target, work / f"{label}-{target}-c", precision="int8").manifest["session"]["bitstream"]
        row["rebuild_s"] = round(time.perf_counter() - start, 1)
        row["swap_equals_rebuild"] = (work / f"{label}-{target}-c" / c["bitstream"]).read_bytes() == swapped
        shutil.rmtree(work / "cache-fresh", ignore_errors=True)
    shutil.rmtree(work / "cache-shared", ignore_errors=True)
    return row


def render(meta: dict, rows: list[dict]) -> str:
    runs = list(dict.fromkeys(json.dumps(r["run"], sort_keys=True) for r in rows))
    measured = "; ".join(f"[{i + 1}] `{run['command']}` on {run['date']}"
                         + (f" (load average {run['load']} on {meta['host']})" if run.get("load") else "")
                         for i, run in enumerate(map(json.loads, runs)))
    lines = [f"Measured by {measured}; YoWASP {meta['tools']}. "
             "The build machine was shared with other jobs, so stage times are "
             "upper bounds. Fmax: nextpnr's timing analysis of the routed design; cycles: the RTL in Verilator; "
             "images/s = Fmax / cycles. Swap: the same architecture with new weights, patched into the placed "
             "design's block RAM and packed (no synthesis, no place-and-route); the first swap on a machine includes "
             "YoWASP compiling the patcher's WebAssembly once, the warm one patches a third set of weights; "
             "`= rebuild`: the patched bitstream equals a full rebuild "
             "of the new weights byte for byte.", "",
             "| model | target (part, lanes) | logic | block RAM | SPRAM | DSP | Fmax MHz | cycles/image | images/s at "
             "Fmax | NPU clock on the board | synth s | P&R s | patch + pack s | full build s | swap s (first, warm) | "
             "swap build s | = rebuild |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        model = f"{r['model']} [{runs.index(json.dumps(r['run'], sort_keys=True)) + 1}]"
        if "error" in r:
            lines.append(f"| {model} | {r['target']} | does not build: {r['error'][:300]} |" + " - |" * 14)
            continue
        res = r["resources"]
        logic = res.get("logic_cells") or res.get("luts")
        cell = lambda x: f"{x['used']}/{x['available']}" if x else "-"  # noqa: E731
        st = r["stages_s"]
        swap = r.get("weight_swap") or {}
        lines.append(f"| {model} | {r['target']} ({r['part']}, {r['lanes']}) | {cell(logic)} | "
                     f"{cell(res.get('bram'))} | {cell(res.get('spram'))} | {cell(res.get('dsp'))} | {r['fmax_mhz']} | "
                     f"{r['cycles_per_image']} | "
                     f"{r['images_per_s']} | {_clock(r)} | {st['synthesis']:.1f} | {st['place_and_route']:.1f} | "
                     f"{st.get('patch_and_pack', st.get('pack')):.1f} | "
                     f"{r['build_s']} | {swap.get('seconds', '-')}, {r.get('warm_swap_s', '-')} | "
                     f"{r.get('swap_build_s', '-')} | "
                     f"{r.get('swap_equals_rebuild', 'not checked')} |")
    return "\n".join(lines) + "\n"


def _clock(row: dict) -> str:
    """The NPU's clock on the board: a PLL's output (timing met or not) or the oscillator."""
    if not row.get("pll"):
        return f"{row.get('clock_mhz')} MHz oscillator"
    met = "timing met" if row.get("timing_met") else "timing NOT met"
    return f"{row['clock_mhz']} MHz (PLL from {row['oscillator_mhz']}; {met})"


def _kept(previous: Path, planned: set[tuple[str, str]]) -> list[dict]:
    """The rows of the last results this run does not measure, each with the run that measured it."""
    if not previous.is_file():
        return []
    last = json.loads(previous.read_text())
    old_run = {"command": last.get("command"), "date": last.get("date")}
    return [{**r, "run": r.get("run", old_run)} for r in last["results"] if (r["model"], r["target"]) not in planned]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench-bitstream",
                        help="work directory (not under /tmp: YoWASP tools cannot see it)")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the byte-for-byte full rebuild check")
    parser.add_argument("--only", choices=["ice40", "ecp5"], help="one family only")
    parser.add_argument("--models", help="comma-separated model labels only (tiny_decoder, zoo:NAME, dcgan)")
    parser.add_argument("--targets", help="comma-separated target names only (ice40-up5k-bram, ...)")
    parser.add_argument("--full-only", action="store_true", help="full builds only: no weight swaps, no rebuild")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    plans = []
    if args.only in (None, "ice40"):
        for seed in (1, 2):
            onnx.save(tiny_decoder(seed), str(work / f"tiny{seed}.onnx"))
        plans.append(("tiny_decoder (tests)", work / "tiny1.onnx", work / "tiny2.onnx", "ice40-up5k-bram"))
        for name in zoo.names():  # the zoo generators, or why they do not fit the UP5K's block RAM
            source = zoo.resolve(f"{zoo.PREFIX}{name}")
            plans.append((f"zoo:{name}", source, source, "ice40-up5k-bram"))
        for name in zoo.names():  # weights and activations in the UP5K's SPRAM
            source = zoo.resolve(f"{zoo.PREFIX}{name}")
            plans.append((f"zoo:{name}", source, reweighted(source, work / f"{name}-b.onnx", 3), SPRAM_TARGET))
    if args.only in (None, "ecp5"):
        for name in zoo.names():  # the zoo generators; one that does not fit is reported with the reason
            source = zoo.resolve(f"{zoo.PREFIX}{name}")
            plans.append((f"zoo:{name}", source, reweighted(source, work / f"{name}-b.onnx", 3), "ecp5-85f"))
        dcgan = FAMILIES / "dcgan__legacy_b1.onnx"
        plans.append(("dcgan (families)", dcgan, reweighted(dcgan, work / "dcgan-b.onnx", 3), "ecp5-85f"))
    if args.models:
        wanted = set(args.models.split(","))
        plans = [p for p in plans if p[0].split(" ")[0] in wanted]
    if args.targets:
        plans = [p for p in plans if p[3] in set(args.targets.split(","))]
    run = {"command": "python tools/bench_bitstream.py --out bench" + (" --no-rebuild" if args.no_rebuild else "")
           + (f" --only {args.only}" if args.only else "") + (f" --models {args.models}" if args.models else "")
           + (f" --targets {args.targets}" if args.targets else "")
           + (" --full-only" if args.full_only else ""),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "load": " / ".join(f"{x:.1f}" for x in os.getloadavg()[:2])}
    meta = {"host": f"{platform.machine()}, {os.cpu_count()} cores", "tools": bitstream.openflow.versions()}
    planned = {(label.split(" ")[0], target) for label, *_, target in plans}
    rows: list[dict] = []
    for label, a, b, target in plans:
        print(f"{label} on {target} ...", file=sys.stderr, flush=True)
        rows.append({**one(label.split(" ")[0], a, b, target, work, not (args.no_rebuild or args.full_only),
                           not args.full_only), "run": run})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        merged = [*_kept(args.out / "bitstream.json", planned), *rows]
        write_text(args.out / "bitstream.json", json.dumps({**meta, "results": merged}, indent=2) + "\n")
        write_text(args.out / "bitstream.md", render(meta, merged))
    shutil.rmtree(work, ignore_errors=True)
    print((args.out / "bitstream.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
