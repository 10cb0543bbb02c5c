"""The latency an FPGA session and `edgegen emulate` quote for a run: at a built bitstream's achieved Fmax (and at
the board's NPU clock only where the bitstream meets timing there), else at the target's fmax_mhz, each labelled."""

import json

import numpy as np
import onnx
import pytest

from edgegen.backends.fpga import session as fpga_session
from edgegen.backends.fpga.model import FunctionalNpu
from edgegen.backends.fpga.transport import RunStatus
from edgegen.build import build
from edgegen.emulate import render
from test_bitstream import tiny_decoder

CYCLES = 2534


class CountingNpu(FunctionalNpu):
    """The functional model reporting the RTL's cycle count for the tiny decoder on the UP5K."""

    def wait(self, limit_cycles: int) -> RunStatus:
        return RunStatus(self.status, CYCLES, self.layers_run)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latency")
    onnx.save(tiny_decoder(1), str(tmp / "tiny.onnx"))
    build(tmp / "tiny.onnx", "fpga-sim", tmp / "b", precision="int8")
    return tmp / "b"


BITSTREAMS = {  # reports/bitstream.json as the build writes it (the iCEBreaker, 24 and 48 MHz PLL clocks)
    "met": {"built": True, "fmax_mhz": 36.19, "clock_mhz": 24.0, "timing_met": True},
    "fails": {"built": True, "fmax_mhz": 36.19, "clock_mhz": 48.0, "timing_met": False},
    "not built": {"built": False, "reason": "vivado is not installed"},
}


@pytest.mark.parametrize("case,fmax,source,at_board,says", [
    ("met", 36.19, "bitstream", 0.106, "0.106 ms at the board's 24 MHz NPU clock, which the bitstream meets (0.07 ms "
                                       "at the bitstream's Fmax 36.19 MHz, its headroom)"),
    ("fails", 36.19, "bitstream", None, "0.07 ms at the bitstream's Fmax 36.19 MHz (it fails timing at the board's "
                                        "48 MHz NPU clock: no latency quoted there)"),
    ("not built", 30, "target", None, "0.084 ms at the target's fmax_mhz 30 MHz (no bitstream built: timing not "
                                      "checked)"),
    (None, 30, "target", None, "0.084 ms at the target's fmax_mhz 30 MHz (no bitstream built")])
def test_latency_is_quoted_at_the_bitstreams_fmax_and_never_at_a_clock_it_fails(bundle, monkeypatch, case, fmax,
                                                                                 source, at_board, says):
    """A bitstream that fails timing at its 48 MHz clock: its latency at the achieved 36.19 MHz (2534 cycles:
    0.070 ms), never 0.053 ms at 48 MHz labelled "at Fmax"; one that meets 24 MHz: also 0.106 ms there."""
    monkeypatch.setattr(fpga_session, "open_device", lambda mode, config: CountingNpu(config))
    manifest = json.loads((bundle / "manifest.json").read_text())
    session = {**manifest["session"], **({"bitstream": BITSTREAMS[case]} if case else {})}
    npu = fpga_session.Session(bundle, session, 1)
    npu.run({"latent": np.zeros((1, 8), np.float32)})
    report = npu.execution_report()
    assert report["cycles"] == CYCLES and report["fmax_mhz"] == fmax and report["fmax_source"] == source
    assert report["latency_ms_at_fmax"] == round(CYCLES / (fmax * 1e3), 3)
    assert report.get("latency_ms_at_board_clock") == at_board
    assert render._at_fmax(report).startswith(f", {says}")
