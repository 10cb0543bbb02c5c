"""ACT banks (`act_banks: 2`, the UP5K's single-port SPRAM): the compiler puts every layer's output in
the other bank than its inputs (copying an input where it must), the RTL with two single-port ACT
banks and a single-port WGT is bit-identical to the functional model, and a layer that reads the
bank it writes sets the NPU's error bit."""

import numpy as np
import onnx
import pytest
from fpga_models import dense_decoder, mobile_block

from edgegen.backends.fpga import hostio
from edgegen.backends.fpga.alloc import allocate, encode
from edgegen.backends.fpga.compile import lower_graph
from edgegen.backends.fpga.emit import Phase, Program
from edgegen.backends.fpga.isa import NpuConfig
from edgegen.backends.fpga.model import FunctionalNpu
from edgegen.backends.fpga.tensors import Buffer, Tensor
from edgegen.emulate import fpga as emu
from edgegen.graph import Graph

from conftest import verilator_or_skip

OPTIONS = {"lanes": 2, "act_kb": 16, "wgt_kb": 16, "par_entries": 256, "lut_tables": 4, "tap_entries": 256,
           "prog_layers": 32}
BANKED = NpuConfig.from_options({**OPTIONS, "act_banks": 2, "wgt_single_port": True})
FLAT = NpuConfig.from_options(OPTIONS)


def _qdq(tmp_path, model) -> Graph:
    onnx.save(model(), str(tmp_path / "model.onnx"))
    return emu.quantize(Graph.load(tmp_path / "model.onnx"))


def _bank_of(config: NpuConfig, tensor: Tensor) -> int:
    """The bank of every word the tensor's buffer spans (a buffer never straddles the boundary)."""
    half = config.act_words // 2
    first, last = tensor.buffer.base, tensor.buffer.base + tensor.buffer.words - 1
    assert first // half == last // half, f"{tensor.buffer.name} straddles the bank boundary"
    return first // half


@pytest.mark.parametrize("model", [mobile_block, dense_decoder], ids=lambda m: m.__name__)
def test_every_layer_writes_the_other_bank_than_it_reads(tmp_path, model):
    lowered, memory, _ = lower_graph(_qdq(tmp_path, model), BANKED)
    program = lowered.program
    for layer, refs in zip(program.layers, program.refs):
        out = _bank_of(BANKED, refs["out"])
        for role in ("in", "b"):
            if role in refs:
                assert _bank_of(BANKED, refs[role]) != out, f"{layer.name}: {role} in the bank it writes"
    assert len(memory["act_bank_bytes"]) == 2
    if model is mobile_block:  # the residual Add of a conv and its own input: one copy
        assert memory["bank_copies"] >= 1
        assert any(layer.op == "Copy" for layer in program.layers)


def test_bank_copies_are_exact(tmp_path):
    """The same codes with and without banks (a bank copy is weight 1, multiplier 1.0, one grid)."""
    qdq = _qdq(tmp_path, mobile_block)
    outs = []
    for config, name in ((FLAT, "flat"), (BANKED, "banked")):
        compiled = emu.compile_for(qdq, config, tmp_path / name)
        session = compiled.open("functional")
        feeds = emu.sample_feeds(qdq.inputs, [3])
        outs.append(session.run_codes(session.input_codes(feeds, 0))[0])
        session.close()
    assert outs[0].keys() == outs[1].keys()
    for key in outs[0]:
        np.testing.assert_array_equal(outs[0][key], outs[1][key])


@pytest.mark.parametrize("model", [mobile_block, dense_decoder], ids=lambda m: m.__name__)
def test_banked_rtl_is_bit_identical_to_the_functional_model(tmp_path, model):
    verilator_or_skip()
    compiled = emu.compile_for(_qdq(tmp_path, model), BANKED, tmp_path / "npu")
    result = emu.rtl_identical(compiled, samples=2)  # run_codes raises if the RTL flags a bank conflict
    assert result["identical"], result["runs"]


def _sum_program(config: NpuConfig, out_bank: int) -> tuple[Program, Tensor, Tensor]:
    """A depthwise layer y = 4 x with x in bank 0 and y in `out_bank`."""
    lanes, groups = config.lanes, 4
    src = Tensor("x", groups * lanes, 2, 2, 1.0, 0, np.arange(groups * lanes), groups, Buffer("x", 4 * groups, -1),
                 groups)
    dst = Tensor("y", groups * lanes, 2, 2, 1.0, 0, np.arange(groups * lanes), groups, Buffer("y", 4 * groups),
                 groups)
    src.buffer.bank, dst.buffer.bank = 0, out_bank
    program = Program(config)
    count = groups * lanes
    params = (np.zeros(count, np.int64), np.full(count, 1 << 30, np.int64), np.ones(count, np.int64))
    taps = 4  # 4 reads per group: reads overlap the writes of earlier groups
    phase = Phase([(0, 0, 0)] * taps, np.ones((groups, taps, 1, lanes), np.int8))
    program.conv("sum", "Conv", src, dst, [phase], params,
                 depthwise=True, up=False, stride=1, oh=2, ow=2, out_gs=groups, groups=groups, cin=1, macs=0)
    allocate(program, [src.buffer, dst.buffer], "test")
    return program, src, dst


@pytest.mark.parametrize("out_bank", [1, 0], ids=["other-bank", "same-bank"])
def test_rtl_flags_a_layer_that_reads_the_bank_it_writes(out_bank):
    verilator_or_skip()
    from edgegen.backends.fpga.rtlsim import RtlNpu

    program, src, dst = _sum_program(BANKED, out_bank)
    assert _bank_of(BANKED, src) == 0 and _bank_of(BANKED, dst) == out_bank
    images = encode(program)
    codes = np.arange(-32, 32, 2, dtype=np.int8).reshape(src.c, 2, 2)
    for device in (FunctionalNpu(BANKED), RtlNpu(BANKED)):
        for address, data in images.host_writes():
            device.write(address, data)
        device.write(*hostio.to_words(src.placement(), codes, BANKED.lanes))
        device.start()
        status = device.wait(1 << 20)
        device.close()
        flagged = isinstance(device, RtlNpu) and out_bank == 0  # the functional model has no banks
        assert status.ok != flagged, (type(device).__name__, status)
