"""The pytest plugin (entry point pytest11): marker, fixture, image helper, end-of-run summary, skips."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
# imported before pytester's inline runs, which drop the modules they import: an int8 build after them met two
# copies of onnxruntime's TensorData (this file failed when run alone)
import onnxruntime.quantization  # noqa: F401
import pytest

from edgegen import targets
from edgegen.build import build
from edgegen.emulate import userland
from edgegen.pytest_plugin import assert_images_close, require_emulation

pytest_plugins = ["pytester"]
ARM64_ROOT = userland.default_root()  # taken before pytester points HOME at a temporary directory


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, cgen_path) -> Path:
    """A multi-target build: bundles/<target>/ for two x86 targets."""
    out = tmp_path_factory.mktemp("plugin-bundles")
    for target in ("x86-onnxruntime", "x86-openvino"):
        build(cgen_path, target, out / target)
    return out


def test_marker_runs_the_test_per_target_and_prints_a_summary(pytester, bundles):
    pytester.makepyfile(f"""
        import pytest
        from edgegen.pytest_plugin import assert_images_close, require_emulation

        @pytest.mark.edgegen_target("x86-onnxruntime", "x86-openvino")
        def test_generator(edgegen_device):
            run = edgegen_device.open({str(bundles)!r})
            assert run.passed, run.failures
            assert run.target == edgegen_device.target
            assert run.assert_close("image", min_psnr=30)["psnr_db"] >= 30
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*edgegen emulated targets*", "target*host p50 ms*estimate ms*peak RSS MB*",
                                 "x86-onnxruntime*PASS*", "x86-openvino*PASS*", "estimate: roofline*"])


def test_a_failing_image_assertion_fails_the_test_with_numbers(pytester, bundles):
    pytester.makepyfile(f"""
        import pytest
        from edgegen.pytest_plugin import assert_images_close, require_emulation

        @pytest.mark.edgegen_target("x86-onnxruntime")
        def test_strict(edgegen_device):
            run = edgegen_device.open({str(bundles)!r})
            assert_images_close(run.outputs["image"], run.reference["image"] + 0.5, min_psnr=40)
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*images not close: PSNR * dB < 40 dB*"])


def test_a_bundle_that_fails_on_the_host_is_a_failed_run_not_an_error(pytester, bundles, tmp_path):
    small = tmp_path / "x86-onnxruntime.yaml"
    small.write_text((targets.TARGETS_DIR / "x86-onnxruntime.yaml").read_text().replace("memory_mb: ", "memory_mb: 16 #"))
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.edgegen_target({str(small)!r})
        def test_small(edgegen_device):
            run = edgegen_device.open({str(bundles)!r})  # bundles/x86-onnxruntime, by the file's name
            assert not run.passed and run.outputs == {{}}
            assert run.failures[0].startswith("memory ceiling: exceeded the target's 16 MB")
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # its row printed the crashed run's peak RSS (a few MB, before the bundle loaded) as if it were the bundle's
    [row] = [line for line in result.stdout.lines if line.startswith("x86-onnxruntime ")]
    assert row.split()[1] == "FAIL" and row.split()[-2] == "-", row


def test_fixture_without_the_marker_is_a_usage_error(pytester):
    pytester.makepyfile("""
        def test_unmarked(edgegen_device):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    assert "the edgegen_device fixture needs @pytest.mark.edgegen_target" in result.stdout.str() + result.stderr.str()


def test_unknown_target_names_the_known_ones(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.edgegen_target("rpi9-litert")
        def test_x(edgegen_device):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    assert "unknown target 'rpi9-litert'" in result.stdout.str() + result.stderr.str()


def test_a_host_that_cannot_emulate_skips_with_the_reason_or_fails_when_required(pytester, tmp_path, cgen_path,
                                                                                 monkeypatch):
    """A host without debootstrap cannot build the arm64 userland: the skip says so (never silently),
    and EDGEGEN_REQUIRE_EMULATION=1 turns it into a failure (as CI sets it)."""
    build(cgen_path, "rpi4-litert", tmp_path / "rpi4")
    monkeypatch.setenv("EDGEGEN_AARCH64_ROOT", str(tmp_path / "no-userland"))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # no debootstrap, no chroot
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.edgegen_target("rpi4-litert")
        def test_arm(edgegen_device):
            edgegen_device.open({str(tmp_path / 'rpi4')!r})
    """)
    monkeypatch.delenv("EDGEGEN_REQUIRE_EMULATION", raising=False)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*edgegen emulated targets*", "rpi4-litert*SKIP*install it with*",
                                 "SKIPPED*edgegen cannot emulate rpi4-litert on this host*install it with*"])
    monkeypatch.setenv("EDGEGEN_REQUIRE_EMULATION", "1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["rpi4-litert*FAIL*install it with*"])  # the table said SKIP for a failed test
    for off in ("0", "false", "No"):  # any non-empty value made it a failure, "0" included
        monkeypatch.setenv("EDGEGEN_REQUIRE_EMULATION", off)
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=1)
    monkeypatch.setenv("EDGEGEN_REQUIRE_EMULATION", "sometimes")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "EDGEGEN_REQUIRE_EMULATION='sometimes' is not a boolean" in result.stderr.str()


def test_a_bundle_that_cannot_be_opened_fails_the_test_and_shows_in_the_table(pytester, tmp_path):
    """A test whose bundle was missing (or damaged, or built for another target) failed, but its row was missing
    from the end-of-session table."""
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.edgegen_target("x86-onnxruntime")
        def test_missing(edgegen_device):
            edgegen_device.open({str(tmp_path / 'nothing-here')!r})
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*edgegen emulated targets*", "x86-onnxruntime*FAIL*no such bundle directory*"])


def test_a_runs_assert_close_measures_over_the_declared_range(tmp_path):
    """assert_images_close over the reference's observed span (0.6 of a [-1, 1] image) failed a bundle that
    emulate passed: 4.4 dB lower than the PSNR emulate reports."""
    from edgegen.metrics import psnr
    from edgegen.pytest_plugin import EmulatedRun

    reference = np.linspace(-0.3, 0.3, 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    got = reference + np.float32(0.02) * np.sign(np.sin(np.arange(reference.size))).reshape(reference.shape)
    run = EmulatedRun("x86-onnxruntime", tmp_path, {"pass": True, "checks": []}, {"image": got}, {"image": reference},
                      {"image": [-1.0, 1.0]})
    assert run.assert_close("image", min_psnr=30)["psnr_db"] == pytest.approx(psnr(reference, got, 2.0), abs=1e-3)
    with pytest.raises(AssertionError, match="images not close"):
        assert_images_close(got, reference, min_psnr=30)
    with pytest.raises(AssertionError, match="has no output 'rgb'"):
        run.assert_close("rgb", min_psnr=30)
    with pytest.raises(ValueError, match="needs min_psnr and/or max_abs"):  # it passed, checking nothing
        run.assert_close("image")


def test_assert_images_close_measures_psnr_and_max_abs():
    a = np.full((8, 8, 3), 100, np.uint8)
    numbers = assert_images_close(a, a.copy(), min_psnr=60, max_abs=0)
    assert numbers["max_abs"] == 0
    b = a.copy()
    b[0, 0, 0] = 140
    with pytest.raises(AssertionError, match="max-abs 40 > 1"):
        assert_images_close(b, a, max_abs=1)
    with pytest.raises(AssertionError, match="shape"):
        assert_images_close(a[:4], a, max_abs=0)


@pytest.mark.parametrize("where", ["actual", "expected"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_assert_images_close_fails_on_nan_or_infinite_values(where, bad):
    """A device output holding NaN passed both floors: every comparison with NaN is false."""
    good = np.array([[0.0, 0.1]], np.float32)
    broken = good.copy()
    broken[0, 0] = bad
    pair = (broken, good) if where == "actual" else (good, broken)
    for criterion in ({"min_psnr": 30}, {"max_abs": 0.01}):
        with pytest.raises(AssertionError, match=f"the {where} image holds 1 NaN or infinite value"):
            assert_images_close(*pair, **criterion)
    for span in (0, float("inf")):
        with pytest.raises(ValueError, match="data_range must be a finite positive span"):
            assert_images_close(good, good, min_psnr=30, data_range=span)


def test_the_plugin_is_cheap_to_import_and_registered():
    code = ("import sys, edgegen.pytest_plugin; from importlib.metadata import entry_points; "
            "print(sorted(m for m in ('numpy', 'onnx', 'edgegen.emulate') if m in sys.modules)); "
            "print([e.value for e in entry_points(group='pytest11') if e.name == 'edgegen'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "['edgegen.pytest_plugin']"]


def test_an_aarch64_target_runs_under_qemu_in_the_plugin(pytester, tmp_path, cgen_path, monkeypatch):
    from edgegen.emulate import EmulatorUnavailableError

    monkeypatch.setenv("EDGEGEN_AARCH64_ROOT", str(ARM64_ROOT))
    try:
        userland.ensure()
    except EmulatorUnavailableError as exc:
        if require_emulation():
            pytest.fail(f"EDGEGEN_REQUIRE_EMULATION is set but this host cannot emulate aarch64: {exc}")
        pytest.skip(f"this host cannot emulate aarch64: {exc}")
    for target in ("rpi4-litert", "x86-litert"):
        build(cgen_path, target, tmp_path / target, precision="int8")
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.edgegen_target("rpi4-litert", "x86-litert")
        def test_int8(edgegen_device):
            run = edgegen_device.open({str(tmp_path)!r})
            assert run.passed, run.failures
            arm = run.report.get("aarch64")
            assert (arm["machine"], arm["match"]["max_abs"]) == ("aarch64", 0.0) if arm else run.target == "x86-litert"
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*edgegen emulated targets*", "rpi4-litert*PASS*", "x86-litert*PASS*"])


def test_the_table_rows_travel_in_the_reports_as_pytest_xdist_sends_them(pytester, bundles):
    """Under pytest-xdist (-n 2) the table was absent: each worker kept its rows, the controller printed none.
    The rows are the tests' user_properties, which xdist sends back in their reports, and the table is read
    from the reports."""
    pytester.makeconftest("""
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_logreport(report):
            if report.when == "teardown":  # what a controller gets: the report, not the worker's objects
                assert [name for name, _ in report.user_properties] == ["edgegen"], report.user_properties
                report.user_properties[:] = [(n, v.replace("PASS", "SENT")) for n, v in report.user_properties]
    """)
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.edgegen_target("x86-onnxruntime")
        def test_generator(edgegen_device):
            assert edgegen_device.open({str(bundles)!r}).passed
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*edgegen emulated targets*", "x86-onnxruntime*SENT*"])


def test_stacked_and_module_markers_give_the_union_of_their_targets(pytester):
    """Only the closest marker counted: the module's targets and a second stacked marker's were dropped."""
    pytester.makepyfile("""
        import pytest

        pytestmark = pytest.mark.edgegen_target("x86-onnxruntime", "x86-litert")

        @pytest.mark.edgegen_target("fpga-sim")
        @pytest.mark.edgegen_target("x86-openvino", "x86-onnxruntime")
        def test_stacked(edgegen_device):
            pass
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_stacked[[]x86-openvino[]]", "*test_stacked[[]x86-onnxruntime[]]",
                                 "*test_stacked[[]fpga-sim[]]", "*test_stacked[[]x86-litert[]]", "4 tests collected*"])


def test_outputs_and_reference_are_as_run_gives_them_and_assert_close_agrees_with_emulate(pytester, tmp_path):
    """A uint8 NHWC export's outputs were handed over as the backend's float NCHW tensors, unrounded: a golden
    picture could not be compared, and assert_close measured other numbers than emulate's self-test."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(3)
    consts = [numpy_helper.from_array((rng.standard_normal((3, 3, 3, 3)) * 0.5).astype(np.float32), "w"),
              numpy_helper.from_array(np.float32(255), "k255")]
    nodes = [helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["f", "k255"], ["unit"]),
             helper.make_node("Transpose", ["unit"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["s", "k255"], ["scaled"]),
             helper.make_node("Round", ["scaled"], ["rounded"]),
             helper.make_node("Transpose", ["rounded"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Cast", ["nhwc"], ["picture"], to=TensorProto.UINT8)]
    graph = helper.make_graph(nodes, "mobile", [helper.make_tensor_value_info("pixels", TensorProto.UINT8,
                                                                              ["N", 12, 16, 3])],
                              [helper.make_tensor_value_info("picture", TensorProto.UINT8, ["N", 12, 16, 3])], consts)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "mobile.onnx"))
    build(tmp_path / "mobile.onnx", "x86-onnxruntime", tmp_path / "b", precision="fp16")
    pytester.makepyfile(f"""
        import numpy as np
        import pytest

        @pytest.mark.edgegen_target("x86-onnxruntime")
        def test_mobile(edgegen_device):
            run = edgegen_device.open({str(tmp_path / 'b')!r})
            assert run.passed, run.failures
            for array in (run.outputs["picture"], run.reference["picture"]):
                assert (array.dtype, array.shape) == (np.uint8, (1, 12, 16, 3))
            numbers = run.assert_close("picture", max_abs=255)
            emulated = run.report["host"]["self_test"]["outputs"]["picture"]
            assert {{k: numbers[k] for k in ("psnr_db", "max_abs", "ssim")}} == \\
                {{k: emulated[k] for k in ("psnr_db", "max_abs", "ssim")}}
    """)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_an_fpga_target_without_its_rtl_simulator_skips_or_fails_when_required(pytester, tmp_path, cgen_path,
                                                                                monkeypatch):
    """Without Verilator the RTL tier was skipped unseen: the test passed, with EDGEGEN_REQUIRE_EMULATION=1 too,
    and its row said PASS."""
    from edgegen.backends import session_module

    build(cgen_path, "fpga-sim", tmp_path / "fpga-sim")
    monkeypatch.setattr(session_module("fpga"), "host_support", lambda options: (False, "it needs Verilator"))
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.edgegen_target("fpga-sim")
        def test_npu(edgegen_device):
            assert edgegen_device.open({str(tmp_path)!r}).passed
    """)
    monkeypatch.delenv("EDGEGEN_REQUIRE_EMULATION", raising=False)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["fpga-sim*SKIP*the RTL tier of * cannot run here: it needs Verilator*"])
    monkeypatch.setenv("EDGEGEN_REQUIRE_EMULATION", "1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["fpga-sim*FAIL*the RTL tier of * cannot run here*"])
