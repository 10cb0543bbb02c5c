"""The board top (hw/boards/npu_board.v) in Verilator behind its UART pins: a model's memories come
from the bitstream's $readmemh images (sized and padded as the bitstream flow writes them), the host
sends only the input over the UART frames, and the output equals the functional model's. With the
UP5K's SPRAM configuration (banked ACT, single-port WGT) the weights are not in the images: the session
uploads them over the UART when it opens."""

import subprocess
from pathlib import Path

import numpy as np
import onnx
from test_bitstream import tiny_decoder

from edgegen.backends.fpga import bitstream, hostio
from edgegen.backends.fpga.isa import Images, NpuConfig
from edgegen.backends.fpga.model import FunctionalNpu
from edgegen.backends.fpga.session import Session
from edgegen.backends.fpga.transport import FramedTransport
from edgegen.emulate import fpga as emu
from edgegen.graph import Graph

from conftest import verilator_or_skip

HARNESS = bitstream.fpga_parts.BOARDS_DIR / "sim" / "board_tb.cpp"
DIV = 4  # clock cycles per UART bit in the simulation


def _board_sim(tmp_path: Path, config: NpuConfig, sizes: dict[str, int]) -> Path:
    params = {"CLK_HZ": DIV, "BAUD": 1, "LANES": config.lanes, "ACT_BANKS": config.act_banks,
              "WGT_SINGLE_PORT": int(config.wgt_single_port), **sizes,
              **{param: f"mem/{name}.hex" for name, param in bitstream.HEX.items()}}
    args = [*verilator_or_skip(), "--cc", "--exe", "--build", "-O2", "--top-module", "npu_board", "-Wno-fatal",
            "-Wno-WIDTH", *(f"-G{k}={v}" if isinstance(v, int) else f'-G{k}="{v}"' for k, v in params.items()),
            "-CFLAGS", f"-DDIV={DIV}", "-Mdir", "obj", "-o", "board_sim", *(str(p) for p in bitstream.RTL),
            str(HARNESS)]
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return tmp_path / "obj" / "board_sim"


OPTIONS = {"lanes": 2, "act_kb": 4, "wgt_kb": 4, "par_entries": 256, "lut_tables": 4, "tap_entries": 256,
           "prog_layers": 16}


def test_board_top_runs_the_baked_in_model_over_uart(tmp_path):
    onnx.save(tiny_decoder(1), str(tmp_path / "m.onnx"))
    config = NpuConfig.from_options(OPTIONS)
    compiled = emu.compile_for(emu.quantize(Graph.load(tmp_path / "m.onnx")), config, tmp_path / "npu")
    images = Images.load(tmp_path / "npu" / "npu" / "program.npz")
    summary = compiled.session["summary"]
    sizes = bitstream.depths(config, summary, "ice40")
    bitstream.padded_hex(images, config.lanes, sizes, tmp_path / "mem")  # what the bitstream's RAMs hold
    binary = _board_sim(tmp_path, config, sizes)

    placement = compiled.session["inputs"][0]["placement"]
    codes = np.random.default_rng(0).integers(-128, 128, (placement["c"], placement["h"], placement["w"]))
    address, data = hostio.to_words(placement, codes, config.lanes)
    out_address, count = hostio.span(compiled.session["outputs"][0]["placement"], config.lanes)

    reference = FunctionalNpu(config)
    for where, blob in images.host_writes():
        reference.write(where, blob)
    reference.write(address, data)
    reference.start()
    assert reference.wait(1 << 30).ok
    expected = reference.read(out_address, count)

    process = subprocess.Popen([str(binary)], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        board = FramedTransport(process.stdin, process.stdout)
        assert board.read(0x000010, 4) == config.lanes.to_bytes(4, "little")  # LANES register
        board.write(address, data)  # only the input: weights and program are in the RAM images
        board.start()
        status = board.wait(1 << 30)
        assert status.ok and status.layers == summary["layers"] and status.cycles > 0 and status.clock > 0
        assert board.read(out_address, count) == expected
    finally:
        process.stdin.close()
        process.wait(timeout=60)
        process.stdout.close()


def test_spram_board_top_gets_its_weights_from_the_session_over_uart(tmp_path):
    onnx.save(tiny_decoder(1), str(tmp_path / "m.onnx"))
    config = NpuConfig.from_options({**OPTIONS, "act_banks": 2, "wgt_single_port": True})
    compiled = emu.compile_for(emu.quantize(Graph.load(tmp_path / "m.onnx")), config, tmp_path / "npu")
    images = Images.load(tmp_path / "npu" / "npu" / "program.npz")
    sizes = bitstream.depths(config, compiled.session["summary"], "ice40")
    bitstream.padded_hex(images, config.lanes, sizes, tmp_path / "mem")
    binary = _board_sim(tmp_path, config, sizes)
    session_config = {**compiled.session, "bitstream": {"built": True, "host_loads": bitstream.host_loaded(config)}}

    functional = compiled.open("functional")
    codes = functional.input_codes(emu.sample_feeds(compiled.graph.inputs, [4]), 0)
    expected, _ = functional.run_codes(codes)
    functional.close()
    process = subprocess.Popen([str(binary)], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        link = FramedTransport(process.stdin, process.stdout)
        board = Session(compiled.directory, session_config, 1, transport=link)  # uploads WGT only
        assert board.uploads(session_config) == ["wgt"]
        got, status = board.run_codes(codes)
        assert status.ok and status.layers == compiled.session["summary"]["layers"]
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
    finally:
        process.stdin.close()
        process.wait(timeout=60)
        process.stdout.close()
