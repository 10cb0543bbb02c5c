"""pytest plugin (entry point `pytest11`): test bundles on emulated devices.

    @pytest.mark.edgegen_target("rpi4-litert", "x86-openvino")
    def test_my_generator(edgegen_device):
        run = edgegen_device.open("bundles/")          # bundles/<target>/ or one bundle directory
        assert run.passed, run.failures
        run.assert_close("image", min_psnr=30)       # PSNR over the output's declared range

`assert_images_close(actual, expected, ...)` compares any two arrays (uint8 over 255, floats over the
expected array's observed span unless data_range says otherwise).

The test runs once per target. `edgegen_device.open` emulates the bundle built for that target
(`edgegen emulate`: threads, memory ceiling, op support, self-test, aarch64 under QEMU, FPGA RTL)
and returns its outputs for the bundle's reference input. A target this host cannot emulate skips
with the reason (or fails, with EDGEGEN_REQUIRE_EMULATION=1; 0 or unset: skips). The end of the run prints one row per
emulated bundle: latency, fidelity, memory peak. Importing the plugin costs nothing beyond pytest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MARKER = "edgegen_target"
REQUIRE_ENV = "EDGEGEN_REQUIRE_EMULATION"
ROW = "edgegen"  # the user property of a test's report that holds its rows of the end-of-run table
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass
class EmulatedRun:
    """One bundle emulated on one target: the report of `edgegen emulate` and the outputs (of the
    bundle's reference input) as the emulated device computed them, beside the reference outputs, both as
    `run()` gives them (uint8 pixels rounded, NHWC: the model file's form).
    outputs is empty when the bundle did not run (over the memory ceiling, say): `passed` is False."""

    target: str
    bundle: Path
    report: dict[str, Any]
    outputs: dict[str, Any] = field(repr=False)
    reference: dict[str, Any] = field(repr=False)
    ranges: dict[str, list[float]] = field(default_factory=dict, repr=False)  # declared (low, high) per output
    specs: dict[str, Any] = field(default_factory=dict, repr=False)  # TensorSpec per output

    def assert_close(self, output: str, min_psnr: float | None = None,
                     max_abs: float | None = None) -> dict[str, float]:
        """assert_images_close of one output against the reference, PSNR over the output's declared range
        (widened to what the reference spans), as `edgegen emulate` measures it."""
        from .metrics import value_range

        if output not in self.reference:
            raise AssertionError(f"{self.bundle} has no output {output!r}; it has {sorted(self.reference)}")
        if output not in self.outputs:
            raise AssertionError(f"{self.target}: the bundle did not run here: {self.failures}")
        actual, expected = self.outputs[output], self.reference[output]
        if output in self.specs:  # in the bundle's layout as float32, as emulate measures (SSIM reads NCHW)
            actual, expected = (self.specs[output].from_source(a).astype("float32") for a in (actual, expected))
        span = value_range(self.ranges.get(output), expected.astype("float32"))
        return assert_images_close(actual, expected, min_psnr, max_abs, span)

    @property
    def passed(self) -> bool:
        return bool(self.report["pass"])

    @property
    def failures(self) -> list[str]:
        return [f"{c['name']}: {c['detail']}" for c in self.report["checks"] if not c["pass"]]


class EmulatedDevice:
    """A target to open bundles on; `open` runs the emulation (see the module docstring)."""

    def __init__(self, target: str, records: list, runs: int = 10):
        self.target = target
        self.runs = runs
        self._records = records  # the test's user_properties: its table rows travel in its report (pytest-xdist)

    def __repr__(self) -> str:
        return f"EmulatedDevice({self.target!r})"

    def bundle_path(self, path: str | Path) -> Path:
        """path itself when it is a bundle, else path/<target name> (the layout of a multi-target build;
        a target file's name is its stem)."""
        from .bundle import is_bundle

        path = Path(path)
        name = Path(self.target).stem if self.target.endswith((".yaml", ".yml")) else self.target
        return path if is_bundle(path) else path / name

    def open(self, path: str | Path) -> EmulatedRun:
        """Emulate the bundle for this target; skip (with the reason) if this host cannot emulate it."""
        from . import reference
        from .bundle import read_manifest
        from .emulate import EmulatorUnavailableError
        from .emulate.device import emulate
        from .emulate.render import summary_row
        from .errors import EdgegenError
        from .specs import TensorSpec

        bundle = self.bundle_path(path)
        try:
            report = emulate(bundle, target=self.target, runs=self.runs, keep_outputs=True)
        except EmulatorUnavailableError as exc:
            required = require_emulation()
            self._records.append((ROW, summary_row({"target": self.target, "bundle": str(bundle),
                                                    "failed" if required else "skipped": str(exc)})))
            if required:
                pytest.fail(f"edgegen cannot emulate {self.target} here ({REQUIRE_ENV} is set): {exc}")
            pytest.skip(f"edgegen cannot emulate {self.target} on this host: {exc}")
        except EdgegenError as exc:  # a damaged bundle, one built for another target: the test fails, and the table says so
            self._records.append((ROW, summary_row({"target": self.target, "bundle": str(bundle),
                                                    "failed": str(exc)})))
            raise
        outputs = report.pop("outputs", {})  # none when the bundle failed on this host (run.failures says why)
        self._records.append((ROW, summary_row({"target": self.target, "bundle": str(bundle), "report": report})))
        manifest = read_manifest(bundle)
        _, expected = reference.load(bundle, manifest)
        specs = {o["name"]: TensorSpec.from_json(o) for o in manifest["model"]["outputs"]}
        ranges = {name: spec.range for name, spec in specs.items() if spec.range}
        # as run() gives them (Generator.run: spec.to_source), the reference as self_test delivers it
        delivered = {k: specs[k].to_source(v) if k in specs else v for k, v in outputs.items()}
        wanted = {k: specs[k].to_source(reference.delivered(specs[k], v)) if k in specs else v
                  for k, v in expected.items()}
        return EmulatedRun(self.target, bundle, report, delivered, wanted, ranges, specs)


def require_emulation() -> bool:
    """EDGEGEN_REQUIRE_EMULATION as a boolean: 1/true/yes/on makes a host that cannot emulate a failure,
    0/false/no/off or unset/empty a skip; pytest.UsageError for any other value."""
    value = os.environ.get(REQUIRE_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise pytest.UsageError(f"{REQUIRE_ENV}={os.environ[REQUIRE_ENV]!r} is not a boolean; set it to 1 (true, yes, "
                            "on) to make a target this host cannot emulate a failure, or 0 (false, no, off, empty) "
                            "to skip it")


def assert_images_close(actual, expected, min_psnr: float | None = None, max_abs: float | None = None,
                        data_range: float | None = None) -> dict[str, float]:
    """Assert two images (arrays of the same shape: uint8 pixels or float tensors) agree: PSNR >=
    min_psnr dB and/or max-abs <= max_abs. data_range: the span PSNR is measured against (default
    255 for uint8, else the expected array's observed span; `EmulatedRun.assert_close` uses the output's
    declared range). Returns the numbers."""
    import numpy as np

    from .metrics import compare, value_range

    if min_psnr is None and max_abs is None:
        raise ValueError("assert_images_close needs min_psnr and/or max_abs: with neither it checks nothing")
    a, b = np.asarray(actual), np.asarray(expected)
    if a.shape != b.shape:
        raise AssertionError(f"images differ in shape: {a.shape} vs expected {b.shape}")
    if data_range is not None and not 0 < data_range < float("inf"):
        raise ValueError(f"data_range must be a finite positive span, got {data_range}")
    for name, array in (("actual", a), ("expected", b)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise AssertionError(f"images not close: the {name} image holds {bad} NaN or infinite value(s)")
    span = data_range or (255.0 if b.dtype == np.uint8 else value_range(None, b.astype(np.float32)))
    numbers = compare(b.astype(np.float32), a.astype(np.float32), span)
    problems = []
    if min_psnr is not None and not numbers["psnr_db"] >= min_psnr:
        problems.append(f"PSNR {numbers['psnr_db']:.2f} dB < {min_psnr} dB")
    if max_abs is not None and not numbers["max_abs"] <= max_abs:
        problems.append(f"max-abs {numbers['max_abs']:.4g} > {max_abs}")
    if problems:
        raise AssertionError("images not close: " + "; ".join(problems) + f" (data range {span:g})")
    return numbers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(*targets): run the test once per edgegen target; the "
                                       "`edgegen_device` fixture gives that target's emulated device")
    config.pluginmanager.register(_Table(), "edgegen-table")
    require_emulation()  # a value that is not a boolean is refused before any test runs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edgegen_device" not in metafunc.fixturenames:
        return
    # every marker's targets (stacked on the test, its class's, its module's), the closest first, each once
    names = list(dict.fromkeys(t for marker in metafunc.definition.iter_markers(MARKER) for t in marker.args))
    if not names:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: the edgegen_device fixture needs "
                                f"@pytest.mark.{MARKER}(\"TARGET\", ...) naming the targets to emulate")
    metafunc.parametrize("edgegen_device", names, indirect=True, ids=names)


@pytest.fixture
def edgegen_device(request: pytest.FixtureRequest) -> EmulatedDevice:
    """The emulated device of one target named by @pytest.mark.edgegen_target."""
    from .errors import TargetError
    from .targets import load

    try:
        load(request.param)
    except TargetError as exc:
        raise pytest.UsageError(f"@pytest.mark.{MARKER}: {exc}") from None
    return EmulatedDevice(request.param, request.node.user_properties)


class _Table:
    """The end-of-run table, its rows read from the tests' reports: under pytest-xdist a worker's reports (their
    user_properties) are what reaches the controller, which prints the table."""

    def __init__(self) -> None:
        self.rows: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":  # its user_properties hold every row of the test, its fixtures' included
            self.rows.extend(value for name, value in report.user_properties if name == ROW)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.rows:
            return
        from .emulate.render import summary_rows

        terminalreporter.section("edgegen emulated targets")
        for line in summary_rows(self.rows):
            terminalreporter.write_line(line)
