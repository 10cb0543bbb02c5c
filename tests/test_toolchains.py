"""Report parsers of the FPGA toolchain wrappers, on report text in each tool's published format
(tests/data/reports/), and the logged runner."""

import os
import re
import sys
from pathlib import Path

import pytest

from edgegen.toolchains import ToolFailedError, openflow, quartus, runner, vivado

REPORTS = Path(__file__).parent / "data" / "reports"


def test_nextpnr_report_gives_resources_and_the_slowest_clock():
    report = openflow.parse_report((REPORTS / "nextpnr_ice40_report.json").read_text(), "ice40")
    assert report["resources"]["logic_cells"]["available"] == 5280
    assert report["resources"]["dsp"] == {"used": 7, "available": 8}
    assert report["resources"]["bram"]["available"] == 30
    assert 5 < report["fmax_mhz"] < 60 and len(report["clocks"]) == 1
    with pytest.raises(ToolFailedError, match="no clock"):
        openflow.parse_report('{"utilization": {}, "fmax": {}}', "ice40")


def test_yosys_stat_cell_counts():
    recent = "=== npu_board ===\n\n     7220 cells\n     1273   SB_CARRY\n     3723   SB_LUT4\n        7   SB_MAC16\n"
    older = "=== npu_board ===\n\n   Number of cells:               7220\n     SB_LUT4                      3723\n" \
            "     SB_MAC16                        7\n"
    for text in (recent, older):
        cells = openflow.parse_synth_stat(text)
        assert cells["SB_LUT4"] == 3723 and cells["SB_MAC16"] == 7


@pytest.mark.parametrize("name", ["vivado_utilization.rpt", "vivado_utilization_2019.rpt"])
def test_vivado_utilization_with_and_without_the_prohibited_column(name):
    resources = vivado.parse_utilization((REPORTS / name).read_text())["resources"]
    assert resources["luts"]["available"] == 63400 and resources["dsp"] == {"used": 20, "available": 240}
    assert resources["bram36"]["available"] == 135
    if name == "vivado_utilization.rpt":
        assert resources["luts"]["used"] == 4117 and resources["bram36"]["used"] == 22.5
        assert resources["io"] == {"used": 5, "available": 210}
    else:
        assert resources["luts"]["used"] == 3988 and resources["ffs"]["used"] == 3870


def test_vivado_timing_summary_fmax_from_wns():
    timing = vivado.parse_timing_summary((REPORTS / "vivado_timing_summary.rpt").read_text())
    assert timing["wns_ns"] == -3.125 and timing["clock"] == "sys_clk" and timing["constraint_mhz"] == 100
    assert timing["timing_met"] is False and timing["fmax_mhz"] == round(1000 / 13.125, 2)
    with pytest.raises(ToolFailedError):
        vivado.parse_timing_summary("Timing Summary Report\n")
    text = (REPORTS / "vivado_timing_summary.rpt").read_text()
    row = next(line for line in text.splitlines() if line.strip().startswith("-3.125"))
    unconstrained = text.replace(row, row.replace("-3.125", "   inf", 1))  # no constrained path: Fmax unknown
    with pytest.raises(ToolFailedError, match=r"no constrained path \(WNS inf on clock sys_clk\)"):
        vivado.parse_timing_summary(unconstrained)


def test_quartus_fit_summary_and_fmax_panels():
    fit = quartus.parse_fit_summary((REPORTS / "npu.fit.summary").read_text())
    assert fit["device"] == "5CSEBA6U23I7" and fit["status"].startswith("Successful")
    assert fit["resources"]["alms"] == {"used": 3214, "available": 41910}
    assert fit["resources"]["m10k"] == {"used": 41, "available": 553}
    assert fit["resources"]["dsp"] == {"used": 12, "available": 112}
    assert fit["resources"]["ffs"] == {"used": 4012, "available": None}
    sta = quartus.parse_sta_fmax((REPORTS / "npu.sta.rpt").read_text())
    assert sta["fmax_mhz"] == 61.27 and len(sta["fmax_by_corner"]) == 2
    with pytest.raises(ToolFailedError):
        quartus.parse_fit_summary("Flow Status : Successful\n")


def test_runner_keeps_the_log_and_quotes_it_on_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "LOGS", tmp_path / "kept")
    log = tmp_path / "logs" / "tool.log"
    seconds = runner.run([sys.executable, "-c", "print('hello from the tool')"], log, tmp_path, 60)
    assert seconds > 0 and "hello from the tool" in log.read_text() and log.read_text().startswith("$ ")
    with pytest.raises(ToolFailedError, match=r"(?s)exit 3.*broken input"):
        runner.run([sys.executable, "-c", "import sys; print('broken input'); sys.exit(3)"], log, tmp_path, 60)
    with pytest.raises(ToolFailedError, match=r"(?s)python\S* exited 0 but did not write report.txt; log .*quiet"):
        runner.run([sys.executable, "-c", "print('quiet')"], log, tmp_path, 60, outputs=("report.txt",))
    assert len(list((tmp_path / "kept").glob("python*.log"))) == 2  # a copy per failure, beyond the run's directory
    monkeypatch.setattr(runner, "KEPT_LOGS", 3)  # the oldest logs go as new ones come
    for old in range(4):
        (tmp_path / "kept" / f"old{old}.log").write_text("")
        os.utime(tmp_path / "kept" / f"old{old}.log", (old, old))
    with pytest.raises(ToolFailedError, match=r"(?s)exit 3.*broken input"):
        runner.run([sys.executable, "-c", "import sys; print('broken input'); sys.exit(3)"], log, tmp_path, 60)
    kept = sorted(p.name for p in (tmp_path / "kept").glob("*.log"))
    assert len(kept) == 3 and not any(name.startswith("old") for name in kept), kept
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(runner, "LOGS", tmp_path / "file" / "kept")  # no copy can be written: the log itself
    with pytest.raises(ToolFailedError, match=rf"exit 3\); log {re.escape(str(log))}:"):
        runner.run([sys.executable, "-c", "import sys; sys.exit(3)"], log, tmp_path, 60)
    out = tmp_path / "out.txt"
    (tmp_path / "in.txt").write_text("piped")
    runner.run([sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"], log, tmp_path, 60,
               stdin=tmp_path / "in.txt", stdout=out)
    assert out.read_text() == "PIPED"
