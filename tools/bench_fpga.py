"""Benchmark the edgegen NPU: RTL cycles per image, MAC-lane utilization, simulator speed, and how
closely the functional model follows the same QDQ graph in ONNX Runtime.

For every model: quantize (spec calibration), compile for an NPU configuration, run the functional
model against ONNX Runtime on 4 held-out inputs (int8 codes of every output), then run the RTL in
Verilator on one input, require bit-identical outputs and record cycles (total and per layer).
Utilization = ideal cycles (MACs / lanes) / RTL cycles. Latency = cycles / the target's Fmax.
Each layer is also run alone on ONNX Runtime's codes of its inputs; layers that are not bit-exact
alone are listed (a generator amplifies every code they change through the layers after them).
The zoo generators also get a picture: the int8 QDQ graph in ONNX Runtime, the functional model and
the RTL simulation side by side (docs/fpga/<name>_npu.png).

    .venv/bin/python tools/bench_fpga.py --out bench        # writes bench/fpga.json and bench/fpga.md
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgegen import targets, zoo  # noqa: E402
from edgegen.backends.fpga.isa import NpuConfig  # noqa: E402
from edgegen.emulate import fpga as emu  # noqa: E402
from edgegen.errors import EdgegenError  # noqa: E402
from edgegen.graph import Graph  # noqa: E402

FAMILIES = ROOT / "tests" / "data" / "families"
WIDE = NpuConfig.from_options({"lanes": 8, "act_kb": 512, "wgt_kb": 256, "par_entries": 4096, "tap_entries": 2048,
                               "lut_tables": 32, "prog_layers": 128})
TINY = "glyphtiny"  # the zoo generator sized for the iCE40 UP5K
LARGE = {"act_kb": 1024, "wgt_kb": 1024, "par_entries": 16384, "tap_entries": 2048, "lut_tables": 32,
         "prog_layers": 128}


def small_dcgan(latent: int = 32, widths: tuple[int, ...] = (32, 32, 16, 16), seed: int = 0) -> onnx.ModelProto:
    """A DCGAN-style 32x32 generator sized for the iCE40 UP5K's RAM (seeded random weights, like the
    test families): latent -> dense 4x4 -> three ConvTranspose x2 (ReLU) -> conv 3x3 -> Tanh."""
    rng = np.random.default_rng(seed)

    def init(name, *shape, fan_in):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    c0 = widths[0]
    inits = [init("fc_w", latent, c0 * 16, fan_in=latent), init("fc_b", c0 * 16, fan_in=64),
             numpy_helper.from_array(np.array([1, c0, 4, 4], np.int64), "shape")]
    nodes = [helper.make_node("Gemm", ["latent", "fc_w", "fc_b"], ["fc"]),
             helper.make_node("Reshape", ["fc", "shape"], ["h0"]), helper.make_node("Relu", ["h0"], ["a0"])]
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
        inits += [init(f"up{i}_w", cin, cout, 4, 4, fan_in=cin * 4), init(f"up{i}_b", cout, fan_in=64)]
        nodes += [helper.make_node("ConvTranspose", [f"a{i}", f"up{i}_w", f"up{i}_b"], [f"u{i}"], strides=[2, 2],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"u{i}"], [f"a{i + 1}"])]
    last = len(widths) - 1
    inits += [init("rgb_w", 3, widths[-1], 3, 3, fan_in=widths[-1] * 9), init("rgb_b", 3, fan_in=64)]
    nodes += [helper.make_node("Conv", [f"a{last}", "rgb_w", "rgb_b"], ["rgb"], pads=[1, 1, 1, 1]),
              helper.make_node("Tanh", ["rgb"], ["image"])]
    size = 4 * 2 ** last
    graph = helper.make_graph(nodes, "small_dcgan", [helper.make_tensor_value_info("latent", TensorProto.FLOAT,
                                                                                  [1, latent])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _load(name: str, work: Path) -> Graph:
    if name == "small_dcgan":
        onnx.save(small_dcgan(), str(work / "small_dcgan.onnx"))
        return Graph.load(work / "small_dcgan.onnx")
    if name.startswith(zoo.PREFIX):
        return Graph.load(name)
    return Graph.load(FAMILIES / f"{name}.onnx")


def bench_one(name: str, config: NpuConfig, config_name: str, fmax_mhz: float | None, work: Path) -> dict:
    row: dict = {"model": name, "config": config_name, "lanes": config.lanes}
    graph = _load(name, work)
    start = time.perf_counter()
    try:
        compiled = emu.compile_for(emu.quantize(graph), config, work / f"{name}-{config.lanes}-{config_name}",
                                   target=config_name)
    except EdgegenError as exc:
        row["error"] = str(exc)
        return row, None
    row["compile_s"] = round(time.perf_counter() - start, 2)
    summary = compiled.session["summary"]
    row.update(macs=summary["macs"], layers=summary["layers"], act_bytes=summary["act_bytes"],
               wgt_bytes=summary["wgt_bytes"])
    agreement = emu.agreement(compiled, samples=4)
    row["agreement"] = agreement
    per_layer = emu.layer_agreement(compiled)
    row["layer_agreement"] = {k: v for k, v in per_layer.items() if k != "layers"}
    row["inexact_layers"] = [r for r in per_layer["layers"] if r["exact"] < r["values"]]
    rtl = emu.rtl_identical(compiled, samples=1, per_layer=True)
    run = rtl["runs"][0]
    row.update(rtl_identical=rtl["identical"], cycles=run["cycles"], ideal_cycles=summary["macs"] / config.lanes,
               utilization=summary["macs"] / config.lanes / run["cycles"], rtl_s=run["rtl_s"],
               sim_cycles_per_s=run["rtl_cycles_per_s"], functional_s=agreement["functional_s_per_image"],
               sim_build=rtl["build"])
    report = json.loads((compiled.directory / "reports" / "npu.json").read_text())
    row["per_layer"] = [{**layer, "cycles": cycles} for layer, cycles in zip(report["layers"], run["layer_cycles"])]
    if fmax_mhz:
        row["fmax_mhz"] = fmax_mhz
        row["latency_ms"] = run["cycles"] / (fmax_mhz * 1e3)
    return row, compiled


def side_by_side(compiled: emu.Compiled, path: Path, requests=((1, 0), (2, 3), (3, 5), (4, 8))) -> list[dict]:
    """A grid of images (rows: seed/label requests; columns: the int8 QDQ graph in ONNX Runtime, the NPU's
    functional model, the NPU's RTL simulation); returns how far the columns are apart."""
    import onnxruntime as ort
    from PIL import Image

    from edgegen.inputs import latent_from_seed

    graph = compiled.graph
    latent, label = graph.input("latent"), graph.input("label")
    largest = max(o.default_shape[2:] for o in graph.outputs)
    image = next(o.name for o in graph.outputs if o.default_shape[2:] == largest)
    ort_session = ort.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])
    functional, rtl = compiled.open("functional"), compiled.open("rtl")
    rows, facts = [], []
    try:
        for seed, cls in requests:
            feeds = {latent.name: latent_from_seed(seed, [1, *latent.default_shape[1:]]),
                     label.name: np.array([cls], np.int64)}
            columns = [dict(zip([o.name for o in ort_session.get_outputs()], ort_session.run(None, feeds)))[image][0],
                       functional.run(feeds)[image][0], rtl.run(feeds)[image][0]]
            facts.append({"seed": seed, "label": cls,
                          "rtl_equals_functional": bool(np.array_equal(columns[1], columns[2])),
                          "max_abs_vs_ort": float(np.abs(columns[1] - columns[0]).max())})
            tiles = [np.clip((c.transpose(1, 2, 0) + 1) * 127.5, 0, 255).round().astype(np.uint8) for c in columns]
            rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1))
    finally:
        rtl.close()
    grid = np.concatenate(rows, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    zoom = max(2, 128 // largest[0])  # a 32x32 generator is drawn 4x, a 64x64 one 2x
    Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(path)
    return facts


def markdown(rows: list[dict]) -> str:
    lines = ["| model | NPU | MMACs | layers | RTL cycles | ideal | lane utilization | latency at Fmax | "
             "RTL = functional | within 1 LSB of ORT (exact / off by 1 / more, max) | each layer alone: worst "
             "layer within 1 LSB | functional ms | RTL sim M cycles/s |", "|" + "---|" * 13]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['config']} | - | - | - | - | - | - | - | does not compile: "
                         f"{r['error']} | - | - | - |")
            continue
        a = r["agreement"]
        latency = f"{r['latency_ms']:.2f} ms @ {r['fmax_mhz']:g} MHz" if "latency_ms" in r else "-"
        lines.append(
            f"| {r['model']} | {r['config']} ({r['lanes']} lanes) | {r['macs'] / 1e6:.2f} | {r['layers']} | "
            f"{r['cycles']:,} | {r['ideal_cycles']:,.0f} | {r['utilization']:.0%} | {latency} | "
            f"{'yes' if r['rtl_identical'] else 'NO'} | {a['within_1_lsb']:.4%} ({a['exact']} / {a['off_by_1']} / "
            f"{a['over_1']}, max {a['max_lsb']}) | {r['layer_agreement']['worst_within_1_lsb']:.2%} of "
            f"{r['layer_agreement']['isolated_layers']} | {r['functional_s'] * 1e3:.1f} | "
            f"{r['sim_cycles_per_s'] / 1e6:.2f} |")
    lines += ["", "Layers that are not bit-exact with ONNX Runtime when run alone on its codes of their inputs:", "",
              "| model | NPU | layer | op | codes equal | within 1 LSB |", "|---|---|---|---|---|---|"]
    for r in rows:
        for layer in r.get("inexact_layers", []):
            lines.append(f"| {r['model']} | {r['config']} | {layer['layer']} | {layer['op']} | "
                         f"{layer['exact'] / layer['values']:.2%} | {layer['within_1_lsb']:.2%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench"))
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "fpga", help="where <zoo name>_npu.png go")
    parser.add_argument("--models", nargs="*", default=["dcgan__legacy_b1", "cgan_dcgan__legacy_b1",
                                                        "pix2pix_unet__legacy_b1", "espcn__legacy_b1",
                                                        "tiny_decoder__legacy_b1", "mobilenet_resnet__legacy_b1"])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    up5k, ecp5 = targets.load("ice40-up5k-8lane"), targets.load("ecp5-85f")
    on_up5k = (NpuConfig.from_options(up5k.backend_options), "ice40-up5k-8lane", up5k.backend_options.get("fmax_mhz"))
    on_ecp5 = (NpuConfig.from_options(ecp5.backend_options), "ecp5-85f", ecp5.backend_options.get("fmax_mhz"))
    plans = [("small_dcgan", *on_up5k), (f"{zoo.PREFIX}{TINY}", *on_up5k)]
    plans += [(m, WIDE, "8-lane, 512 KB", None) for m in args.models]
    for name in (f"{zoo.PREFIX}{n}" for n in zoo.names() if n not in ("upscale2x", TINY)):
        plans.append((name, *on_ecp5))
        for lanes in (8, 32):
            plans.append((name, NpuConfig.from_options({"lanes": lanes, **LARGE}), "1 MB + 1 MB RAM (emulated)", None))
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgegen-bench-fpga-") as tmp:
        for name, config, config_name, fmax in plans:
            row, compiled = bench_one(name, config, config_name, fmax, Path(tmp))
            if compiled is not None and name.startswith(zoo.PREFIX) and config.lanes == 8:
                picture = args.images / f"{name[len(zoo.PREFIX):]}_npu.png"
                row["images"] = {"file": str(picture.resolve().relative_to(ROOT)),
                                 "requests": side_by_side(compiled, picture)}
            rows.append(row)
            brief = row.get("error") or f"{row['cycles']:,} cycles, {row['utilization']:.0%}, identical " \
                                         f"{row['rtl_identical']}, within 1 LSB {row['agreement']['within_1_lsb']:.4%}"
            print(f"{name} on {config_name}: {brief}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fpga.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "fpga.md").write_text("# edgegen NPU (hw/npu): RTL cycles, utilization, agreement\n\n"
                                      "Produced by `.venv/bin/python tools/bench_fpga.py --out bench`; see its docstring for the "
                                      "method. Cycles are the RTL's; the speeds (functional ms, simulated "
                                      "cycles/s) are this 2-core host's, shared with other jobs.\n\n"
                                      + markdown(rows))
    print(markdown(rows))
    return 0 if all(r.get("rtl_identical", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
