"""The FPGA emulation ladder on the build host: the same QDQ graph in ONNX Runtime, the NPU's
functional model and its RTL simulation, compared on the int8 codes of every NPU output tensor.

`agreement` measures the functional model against ONNX Runtime (how many codes differ, by how
much); `rtl_identical` runs the RTL and the functional model on the same inputs and requires
bit-identical outputs, reporting cycles and simulation speed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..backends.fpga import compile as fpga_compile
from ..backends.fpga import hostio
from ..backends.fpga.isa import NpuConfig
from ..backends.fpga.session import Session
from ..graph import Graph
from ..inputs import sample_feeds
from ..passes.calibration import load_calibration
from ..passes.quantize import Quantizer
from ..targets import Target

SEED = 20_000  # emulation inputs: neither calibration (0..) nor build verification (10000..) seeds


def quantize(graph: Graph, calibration_count: int = 16) -> Graph:
    """The project's QDQ graph of a float graph (spec calibration, minmax)."""
    calibration = load_calibration(graph.inputs, None, calibration_count)
    return graph.with_model(Quantizer(graph, calibration).emit(), ["quantized to int8 QDQ (minmax)"])


def target_for(config: NpuConfig, name: str = "emulated") -> Target:
    """An fpga Target holding an NPU configuration (what compile reads)."""
    options = {"lanes": config.lanes, "act_kb": config.act_bytes // 1024, "wgt_kb": config.wgt_bytes // 1024,
               "par_entries": config.par_entries, "lut_tables": config.lut_bytes // 256,
               "tap_entries": config.tap_entries, "prog_layers": config.prog_words // 16,
               "act_banks": config.act_banks, "wgt_single_port": config.wgt_single_port}
    return Target(name, "emulation", "edgegen NPU", "x86_64", "fpga", "int8", 1, 512, ["int8"], options)


@dataclass
class Compiled:
    """A QDQ graph compiled for an NPU configuration, in a directory laid out like a bundle."""

    graph: Graph
    directory: Path
    session: dict[str, Any]

    def open(self, mode: str = "functional", transport=None) -> Session:
        return Session(self.directory, self.session, 1, mode=mode, transport=transport)


def compile_for(qdq: Graph, config: NpuConfig, directory: Path | None = None, target: str = "emulated") -> Compiled:
    """Compile a QDQ graph for an NPU configuration into `directory` (a temporary one by default)."""
    directory = Path(directory or tempfile.mkdtemp(prefix="edgegen-npu-"))
    (directory / "reports").mkdir(parents=True, exist_ok=True)
    out = fpga_compile.compile(qdq, target_for(config, target), "int8", directory)
    return Compiled(qdq, directory, out["session"])


def ort_codes(qdq: Graph, placements: dict[str, dict], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's int8 codes of the given tensors of the QDQ graph (batch of feeds) -> [N, C, H, W]."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(qdq.model.SerializeToString())
    inits = {t.name for t in model.graph.initializer}
    exposed = {}
    for name in placements:
        q = next((n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name
                  and n.input[0] not in inits), None)
        exposed[name] = q.output[0] if q is not None else name
        elem = TensorProto.INT8 if q is not None else TensorProto.FLOAT
        if exposed[name] not in {o.name for o in model.graph.output}:
            model.graph.output.append(helper.make_tensor_value_info(exposed[name], elem, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(feeds.values())))
    runs = [dict(zip(names, session.run(None, {k: v[i:i + 1] for k, v in feeds.items()}))) for i in range(count)]
    result = {name: np.concatenate([r[name] for r in runs]) for name in names}
    codes = {}
    for name, placement in placements.items():
        value = result[exposed[name]]
        if value.dtype != np.int8:  # a data-movement output that keeps its input's grid: exact multiples
            value = np.clip(np.rint(value / np.float32(placement["scale"])) + placement["zero_point"], -128, 127)
        shape = (len(value), placement["c"], placement["h"], placement["w"])
        if value.size == int(np.prod(shape)):  # a broadcast view of a smaller tensor keeps that tensor's codes
            codes[name] = value.astype(np.int8).reshape(shape)
    return codes


def agreement(compiled: Compiled, samples: int = 4, seed: int = SEED) -> dict[str, Any]:
    """Functional model vs ONNX Runtime on the int8 codes of every NPU output, over `samples` inputs."""
    graph = compiled.graph
    feeds = sample_feeds(graph.inputs, list(range(seed, seed + samples)))
    session = compiled.open("functional")
    tensors = {o["name"]: o for o in compiled.session["outputs"]}
    sources = {o["name"]: o["tensor"] for o in compiled.session["outputs"]}
    reference = ort_codes(graph, {sources[k]: v["placement"] for k, v in tensors.items()}, feeds)
    diffs = []
    start = time.perf_counter()
    for i in range(samples):
        got, _ = session.run_codes(session.input_codes(feeds, i))
        for name in tensors:
            diffs.append(np.abs(got[name].astype(np.int32) - reference[sources[name]][i].astype(np.int32)).ravel())
    seconds = (time.perf_counter() - start) / samples
    d = np.concatenate(diffs)
    histogram = {str(k): int(v) for k, v in zip(*np.unique(d, return_counts=True))}
    return {"values": int(d.size), "exact": int((d == 0).sum()), "off_by_1": int((d == 1).sum()),
            "over_1": int((d > 1).sum()), "max_lsb": int(d.max()), "within_1_lsb": float((d <= 1).mean()),
            "histogram": histogram, "functional_s_per_image": seconds, "samples": samples}


def rtl_identical(compiled: Compiled, samples: int = 1, seed: int = SEED, per_layer: bool = False) -> dict[str, Any]:
    """RTL simulation vs functional model on the same int8 inputs: bit-identical outputs required
    (per_layer: also the cycles of every layer, from the simulation harness)."""
    feeds = sample_feeds(compiled.graph.inputs, list(range(seed, seed + samples)))
    functional = compiled.open("functional")
    start = time.perf_counter()
    rtl = compiled.open("rtl")
    setup_s = time.perf_counter() - start
    runs = []
    try:
        for i in range(samples):
            codes = functional.input_codes(feeds, i)
            t0 = time.perf_counter()
            want, _ = functional.run_codes(codes)
            t1 = time.perf_counter()
            got, status = rtl.run_codes(codes)
            t2 = time.perf_counter()
            same = all(np.array_equal(want[k], got[k]) for k in want)
            mismatches = {k: int((want[k] != got[k]).sum()) for k in want}
            runs.append({"identical": same, "mismatches": mismatches, "cycles": status.cycles,
                         "layers": status.layers, "functional_s": t1 - t0, "rtl_s": t2 - t1,
                         "rtl_cycles_per_s": status.cycles / max(rtl.device.last_wall_s, 1e-9)})
            if per_layer:
                runs[-1]["layer_cycles"] = rtl.device.layer_cycles()
        build = rtl.device.build_facts
    finally:
        rtl.close()
    return {"identical": all(r["identical"] for r in runs), "runs": runs, "build": build, "setup_s": setup_s}


def layer_agreement(compiled: Compiled, seed: int = SEED) -> dict[str, Any]:
    """Each layer on its own: ONNX Runtime's int8 codes of a layer's inputs are written into ACT, the
    layer runs on the functional model, its output is compared with ONNX Runtime's codes. This
    separates the NPU's per-layer rounding from differences that deep networks amplify."""
    from ..backends.fpga.compile import lower_graph

    graph = compiled.graph
    lowered, _, images = lower_graph(graph, NpuConfig(**compiled.session["npu"]))
    lanes = lowered.program.config.lanes
    tensors = {t.name: t for refs in lowered.program.refs for t in refs.values() if t.gs}
    quantized = {n.input[0] for n in graph.model.graph.node if n.op_type == "QuantizeLinear"}
    placements = {name: t.placement() for name, t in tensors.items() if name in quantized}
    feeds = sample_feeds(graph.inputs, [seed])
    reference = ort_codes(graph, placements, feeds)
    session = compiled.open("functional")
    device = session.device
    for entry, codes in zip(session.inputs, session.input_codes(feeds, 0).values()):
        device.write(*hostio.to_words(entry["placement"], codes, lanes))
    rows = []
    for meta, layer, refs in zip(lowered.program.layers, device.program(), lowered.program.refs):
        def known(t) -> bool:
            return t.gs > 0 and t.name in reference and reference[t.name].shape[1:] == (t.c, t.h, t.w)

        inputs = [refs[r] for r in ("in", "b") if r in refs]
        for t in filter(known, inputs):
            _inject(device, t.placement(), reference[t.name][0], lanes)
        device.run_layer(layer)
        out = refs["out"]
        if not known(out) or not all(map(known, inputs)):
            continue
        got = hostio.from_words(out.placement(), device.read(*hostio.span(out.placement(), lanes)), lanes)
        d = np.abs(got.astype(np.int32) - reference[out.name][0].astype(np.int32))
        rows.append({"layer": meta.name, "op": meta.op, "values": int(d.size), "exact": int((d == 0).sum()),
                     "within_1_lsb": float((d <= 1).mean()), "max_lsb": int(d.max())})
    return {"layers": rows, "isolated_layers": len(rows),
            "worst_within_1_lsb": min((r["within_1_lsb"] for r in rows), default=1.0),
            "within_1_lsb": sum(r["within_1_lsb"] * r["values"] for r in rows) / max(sum(r["values"] for r in rows), 1)}


def _inject(device, placement: dict, codes: np.ndarray, lanes: int) -> None:
    """Write a tensor's codes into its words, leaving the other bytes of those words alone."""
    address, count = hostio.span(placement, lanes)
    raw = np.frombuffer(device.read(address, count), np.uint8).copy()
    gs, cmap = placement["gs"], np.asarray(placement["cmap"])
    pixels = np.arange(placement["h"] * placement["w"])
    index = (pixels[:, None] * gs * lanes + cmap[None, :]).ravel()
    raw[index] = np.asarray(codes, np.int8).reshape(placement["c"], -1).T.ravel().view(np.uint8)
    device.write(address, raw.tobytes())
