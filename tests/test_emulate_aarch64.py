"""aarch64 targets in an arm64 Debian userland under QEMU user-mode (built once and cached under
~/.cache/edgegen, or $EDGEGEN_AARCH64_ROOT). CI sets EDGEGEN_REQUIRE_EMULATION=1: there a host
that cannot emulate fails these tests instead of skipping them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgegen.build import build
from edgegen.emulate import EmulationError, EmulatorUnavailableError, userland
from edgegen.emulate.device import emulate


def _unavailable(exc: Exception):
    if os.environ.get("EDGEGEN_REQUIRE_EMULATION"):
        pytest.fail(f"EDGEGEN_REQUIRE_EMULATION is set but this host cannot emulate aarch64: {exc}")
    pytest.skip(f"this host cannot emulate aarch64: {exc}")


@pytest.fixture(scope="module")
def arm64() -> Path:
    """The cached arm64 userland (built on first use: ~6 minutes)."""
    try:
        userland.ensure()
    except EmulatorUnavailableError as exc:
        _unavailable(exc)
    return userland.default_root()


def test_int8_tflite_bundle_gives_identical_images_on_arm64(tmp_path, cgen_path, arm64):
    build(cgen_path, "rpi4-litert", tmp_path / "b")
    report = emulate(tmp_path / "b", runs=2)
    assert report["pass"], report["checks"]
    arm = report["aarch64"]
    assert arm["machine"] == "aarch64" and arm["runtime"].startswith("ai-edge-litert")
    assert arm["match"] == {**arm["match"], "rule": "identical (int8: every op of the artifact runs in int8)",
                            "max_abs": 0.0, "pass": True}
    assert arm["self_test"]["pass"] and arm["slowdown_vs_host"] > 1
    assert arm["packages"]["ai-edge-litert"] and arm["userland_build_s"] > 0


def test_fp32_onnxruntime_bundle_matches_x86_within_1e_5_on_arm64(tmp_path, cgen_path, arm64):
    build(cgen_path, "jetson-orin-onnxruntime", tmp_path / "b", precision="fp32")
    report = emulate(tmp_path / "b", runs=2)
    assert report["pass"], report["checks"]
    arm = report["aarch64"]
    assert arm["runtime"].startswith("onnxruntime 1."), arm["runtime"]  # with its version, as LiteRT's
    assert arm["match"]["rule"].startswith("max-abs <= 1e-05 x the output's declared range width")
    assert "(fp32: image 2e-05 over [-1, 1])" in arm["match"]["rule"] and arm["match"]["max_abs"] <= 2e-5
    assert report["constraints"]["accelerator_replaced_by_cpu"].startswith("TensorrtExecutionProvider")


def test_a_userland_that_cannot_be_built_leaves_nothing_behind(tmp_path, monkeypatch):
    root = tmp_path / "cache" / "arm64"
    monkeypatch.setenv("EDGEGEN_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # nothing listens on port 9
    try:
        with pytest.raises(EmulationError, match="(?s)debootstrap.*failed.*EDGEGEN_DEBIAN_MIRROR"):
            userland.ensure(root)
    except EmulatorUnavailableError as exc:
        _unavailable(exc)
    assert not root.exists()
    assert [p.name for p in root.parent.iterdir()] == [f".{root.name}.lock"]


def test_a_userland_directory_that_cannot_be_made_is_named(tmp_path, monkeypatch):
    """A root under a file (or under /proc) was an internal error with a FileExistsError traceback."""
    monkeypatch.setattr(userland.binfmt, "ensure", lambda: None)  # the directory is checked, whatever the host
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(EmulatorUnavailableError, match=r"cannot make the arm64 userland .*a_file.*point "
                                                       r"EDGEGEN_AARCH64_ROOT at a writable directory"):
        userland.ensure(tmp_path / "a_file" / "sub" / "arm64")


def test_an_interrupted_build_is_never_used_and_is_cleaned_up(tmp_path):
    root = tmp_path / "arm64"
    stale = tmp_path / f".{root.name}.abc123.tmp"
    (stale / "opt").mkdir(parents=True)
    (stale / userland.STAMP).write_text("{}")
    assert userland.info(root) is None  # only a renamed, complete userland counts
    userland._remove_stale(root)
    assert not stale.exists()


def test_a_host_that_may_not_enter_the_userland_cannot_emulate(tmp_path, monkeypatch):
    """Without the privileges every run needs (unshare --mount, mount, chroot), a prebuilt userland was used and
    each bundle failed "loads on aarch64" (a failed test) instead of a skip; the non-root advice said a userland
    built elsewhere would do."""
    monkeypatch.setattr(userland.binfmt, "ensure", lambda: None)
    root = tmp_path / "arm64"
    root.mkdir()
    (root / userland.STAMP).write_text("{}")  # a complete userland
    monkeypatch.setattr(userland, "effective_capabilities", lambda: 1 << 18)  # CAP_SYS_CHROOT alone
    with pytest.raises(EmulatorUnavailableError, match=r"cannot run the arm64 userland: .*lacks CAP_SYS_ADMIN "
                                                       r"\(unshare --mount, mount\); run edgegen as root \(a "
                                                       r"container needs --privileged\)"):
        userland.ensure(root)
    monkeypatch.setattr(userland, "effective_capabilities", lambda: (1 << 21) | (1 << 18))
    assert userland.ensure(root) == {}
    monkeypatch.setattr(userland.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    monkeypatch.setattr(userland.os, "geteuid", lambda: 1000)
    with pytest.raises(EmulatorUnavailableError) as refused:
        userland._require_tools()
    assert "every run in it" in str(refused.value) and "built elsewhere" not in str(refused.value)


def test_run_directories_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    """A run killed with SIGKILL left its copy of edgegen and of the bundle in the userland's /tmp for good."""
    import subprocess
    import sys

    from edgegen.emulate import qemu
    from edgegen.fileio import owner

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root, bundle = tmp_path / "arm64", tmp_path / "bundle"
    bundle.mkdir()
    stale = root / "tmp" / f"{qemu.RUN_PREFIX}{owner().rsplit('-', 1)[0]}-{gone.stdout.strip()}-k2x8a"
    live = root / "tmp" / f"{qemu.RUN_PREFIX}{owner()}-q9w1e"  # this process's: in use
    old = root / "tmp" / f"{qemu.RUN_PREFIX}2ue38zni"  # unnamed: whose it is cannot be told
    for directory in (stale, live, old):
        (directory / "bundle").mkdir(parents=True)
    with qemu.staged(root, bundle, 1) as (host, inside):
        assert host.name.startswith(f"{qemu.RUN_PREFIX}{owner()}-") and inside == f"/tmp/{host.name}"
        assert not stale.exists() and live.is_dir() and old.is_dir()
    assert not host.exists()


def test_a_userland_whose_runtimes_differ_from_this_hosts_is_warned_of_and_what_ran_is_reported(
        tmp_path, monkeypatch, caplog):
    """A userland restored from a cache after the host's runtime moved on: no word, and the report printed the
    versions of its build stamp, not those that ran."""
    import numpy as np

    from edgegen import targets
    from edgegen.emulate import device

    ran = {"numpy": "2.0.0", "onnxruntime": "1.31.1"}
    monkeypatch.setattr(device.userland, "ensure", lambda root, rebuild=False: {"build_s": 9.0,
                                                                                 "packages": {"onnxruntime": "1.32.0"}})
    monkeypatch.setattr(device.userland, "host_version", {"numpy": "2.0.0", "onnxruntime": "1.32.0"}.get)
    arm = {"ok": True, "machine": "aarch64", "runtime": "onnxruntime 1.31.1", "packages": ran,
           "latency_ms": {"p50": 20.0}, "self_test": {"pass": True, "outputs": {}}, "outputs": {"y": np.zeros(2)}}
    monkeypatch.setattr(device.process, "run", lambda bundle, settings, userland=None: arm)
    manifest = {"backend": "onnxruntime", "precision": "int8", "model": {"outputs": []},
                "execution": {"int8": {"Conv": 1}, "float": {}}}
    host = {"latency_ms": {"p50": 1.0}, "outputs": {"y": np.zeros(2)}}
    with caplog.at_level("WARNING"):
        result, _ = device._aarch64(tmp_path, manifest, targets.load("jetson-orin-onnxruntime"), host, [], False,
                                    tmp_path / "arm64")
    assert result["packages"] == ran
    assert result["runtime_drift"].startswith("its runtimes differ from this host's: onnxruntime 1.31.1 (this host: "
                                              "1.32.0)")
    assert "edgegen emulate --rebuild" in caplog.text and "1.31.1" in caplog.text


def _manifest(precision: str, outputs: dict, floats: dict | None = None, tolerance: dict | None = None) -> dict:
    """A manifest's keys same_images reads: outputs {name: declared range or None}, the ops kept in float."""
    return {"precision": precision, "reference": {"tolerance": tolerance or {"min_psnr_db": 36.79}},
            "model": {"outputs": [{"name": name, "dtype": "float32", "shape": [1, 3, 8, 8],
                                   "role": "image" if bounds else "score", **({"range": bounds} if bounds else {})}
                                  for name, bounds in outputs.items()]},
            "execution": {"int8": {"Conv": 8, "Add": 3}, "float": floats or {}}}


def test_the_fp32_arm64_rule_scales_with_each_outputs_declared_range():
    """A correct [0, 255] generator failed at 2e-4 (13 float32 ulps there, PSNR 136 dB) under an absolute 1e-5."""
    import numpy as np

    from edgegen.emulate.device import same_images

    x86 = {"image": np.random.default_rng(0).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)}
    pixels = _manifest("fp32", {"image": [0.0, 255.0]})
    match = same_images(pixels, x86, {"image": x86["image"] + np.float32(1.98e-4)})
    assert match["pass"] and "max-abs <= 1e-05 x the output's declared range width" in match["detail"]
    assert "image 0.00255 over [0, 255]" in match["rule"]
    assert not same_images(pixels, x86, {"image": x86["image"] + np.float32(0.01)})["pass"]  # a real difference
    unit = {"image": x86["image"] / 255}  # the same model in [0, 1]: 1e-5 x 1
    assert not same_images(_manifest("fp32", {"image": [0.0, 1.0]}), unit, {"image": unit["image"] + 2e-4})["pass"]
    scored = {**unit, "score": np.full((1, 1), 0.5, np.float32)}  # no declared range: 1e-5 as it was
    both = _manifest("fp32", {"image": [0.0, 1.0], "score": None})
    assert same_images(both, scored, {**scored, "score": scored["score"] + np.float32(5e-6)})["pass"]
    match = same_images(both, scored, {**scored, "score": scored["score"] + np.float32(5e-5)})
    assert not match["pass"] and "score 1e-05 (no declared range)" in match["rule"]


def test_the_int8_arm64_rule_is_identical_only_where_every_op_runs_in_int8():
    """An ONNX Runtime int8 ResGen keeping 3 InstanceNormalization layers in float, as good on arm64 as on x86
    (42.80 vs 42.76 dB), failed "identical (int8)" at 0.0317: float layers round differently on the two CPUs."""
    import numpy as np

    from edgegen.emulate.device import same_images

    rng = np.random.default_rng(1)
    x86 = {"out": np.round(rng.uniform(-1, 1, (1, 3, 16, 16)) * 127).astype(np.float32) / 127}
    steps = x86["out"].copy()
    steps.flat[::40] += 4 / 127  # a few requantized values a few steps off
    normed = _manifest("int8", {"out": [-1.0, 1.0]}, floats={"InstanceNormalization": 3, "Tanh": 1})
    match = same_images(normed, x86, {"out": steps})
    assert match["pass"], match
    assert "the bundle's tolerance (int8 with InstanceNormalization x3, Tanh x1 in float: min_psnr_db 36.79" in \
        match["rule"]
    assert not same_images(normed, x86, {"out": -x86["out"]})["pass"]  # a real difference still fails
    built = {**normed, "fidelity": {"psnr_db": 42.79}}  # the CPUs may differ by less than int8 does from float
    assert same_images(built, x86, {"out": steps})["pass"]
    shifted = same_images(built, x86, {"out": x86["out"] + np.float32(0.025)})  # 38 dB: above 36.79, not 42.79
    assert same_images(normed, x86, {"out": x86["out"] + np.float32(0.025)})["pass"]  # the self-test floor alone
    assert not shifted["pass"] and "min_psnr_db vs x86 42.79" in shifted["rule"], shifted
    pure = _manifest("int8", {"out": [-1.0, 1.0]})
    assert same_images(pure, x86, {"out": x86["out"].copy()})["rule"] == \
        "identical (int8: every op of the artifact runs in int8)"
    assert not same_images(pure, x86, {"out": steps})["pass"]
