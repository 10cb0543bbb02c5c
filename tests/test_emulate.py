"""edgegen emulate on this host's architecture, and edgegen verify: constraints, failures, estimates."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from edgegen import targets
from edgegen.build import build
from edgegen.cli import main
from edgegen.emulate import roofline, support
from edgegen.emulate.device import emulate
from edgegen.errors import BundleError, TargetError


def _target_copy(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of a shipped target file (same name) with some keys changed or (value None) removed."""
    data = yaml.safe_load((targets.TARGETS_DIR / f"{name}.yaml").read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_emulating_a_bundle_checks_its_constraints_and_estimates_latency(ort_bundle):
    report = emulate(ort_bundle, runs=3)
    assert report["pass"], report["checks"]
    assert [c["name"] for c in report["checks"]] == ["memory ceiling", "self-test on this host"]
    host = report["host"]
    assert host["machine"] == "x86_64" and host["threads"] == 2 and host["latency_ms"]["p50"] > 0
    assert 0 < host["peak_rss_mb"] <= host["peak_vm_mb"] <= 2048
    estimate = report["estimate"]
    assert estimate["label"].startswith("estimate") and estimate["source"]
    macs = json.loads((ort_bundle / "manifest.json").read_text())["model"]["macs"]
    assert estimate["ops"] == 2 * macs
    assert estimate["latency_ms"] == pytest.approx(max(estimate["compute_ms"], estimate["memory_ms"]), rel=1e-3)
    assert report["op_support"]["checked"]


def test_exceeding_the_memory_ceiling_is_a_failure_report_with_what_it_needs(tmp_path, ort_bundle):
    small = _target_copy(tmp_path, "x86-onnxruntime", memory_mb=64)
    report = emulate(ort_bundle, target=str(small), runs=1)
    assert not report["pass"]
    check = report["checks"][0]
    assert check["name"] == "memory ceiling" and not check["pass"]
    assert "exceeded the target's 64 MB" in check["detail"] and "MB of address space" in check["detail"]


def test_a_bundle_built_for_a_custom_target_file_is_emulated_as_recorded(tmp_path, cgen_path):
    custom = _target_copy(tmp_path, "x86-onnxruntime", memory_mb=64)
    custom = custom.rename(tmp_path / "my-box.yaml")
    custom.write_text(custom.read_text().replace("name: x86-onnxruntime", "name: my-box"))
    build(cgen_path, str(custom), tmp_path / "b")
    custom.unlink()  # the manifest holds the target as it was built for
    report = emulate(tmp_path / "b", runs=1)
    assert report["target"] == "my-box" and report["constraints"]["memory_mb"] == 64


def test_a_bundle_built_for_another_target_is_refused(ort_bundle):
    with pytest.raises(BundleError, match="built for target 'x86-onnxruntime'.*not 'x86-openvino'"):
        emulate(ort_bundle, target="x86-openvino")


def test_a_target_without_roofline_numbers_is_a_clear_error(tmp_path, ort_bundle):
    bare = _target_copy(tmp_path, "x86-onnxruntime", roofline=None)
    with pytest.raises(TargetError, match="no 'roofline' key.*cited public source"):
        emulate(ort_bundle, target=str(bare))


def test_roofline_schema_names_what_is_missing(tmp_path):
    path = _target_copy(tmp_path, "x86-onnxruntime", roofline={"peak_gops": {"fp32": 1}, "bandwidth_gbs": 2})
    with pytest.raises(TargetError, match="roofline.*missing \\['source'\\]"):
        targets.load_file(path)
    path = _target_copy(tmp_path, "x86-onnxruntime",
                        roofline={"peak_gops": {"fp32": 1}, "bandwidth_gbs": 2, "source": "x"})
    with pytest.raises(TargetError, match="peak_gops.*each of"):
        targets.load_file(path)


def test_every_shipped_target_has_a_cited_roofline():
    for target in targets.load_all():
        assert target.roofline and len(target.roofline["source"]) > 20, target.path


def test_roofline_is_memory_bound_when_bandwidth_is_scarce(ort_bundle):
    manifest = json.loads((ort_bundle / "manifest.json").read_text())
    target = targets.load("x86-onnxruntime")
    target.roofline = {**target.roofline, "bandwidth_gbs": 1e-6}
    estimate = roofline.estimate(manifest, target)
    assert estimate["bound"] == "memory" and estimate["memory_ms"] > estimate["compute_ms"]


def test_edge_tpu_op_support_applies_coral_rules_to_the_bundle_model(tmp_path, cgen_path):
    from edgegen.backends.tflite.flatbuffer import read_model

    build(cgen_path, "x86-litert", tmp_path / "b", precision="int8")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    result = support.check(tmp_path / "b", manifest, targets.load("coral-edgetpu"), None)
    assert result["accelerator"] == "Edge TPU" and result["rules"].startswith("Coral")
    ops, _ = read_model((tmp_path / "b" / "model.tflite").read_bytes())
    assert result["total"] == len(ops) and result["mapped"] < result["total"]
    first = result["first_fallback"]
    assert first["op"] == ops[first["index"]].code and first["why"] and first["op"] in result["summary"]


def test_fpga_target_runs_the_functional_and_rtl_tiers(tmp_path, cgen_path, capsys, monkeypatch):
    built = build(cgen_path, "fpga-sim", tmp_path / "npu")
    with monkeypatch.context() as env:  # the RTL was compared with itself where this was set
        env.setenv("EDGEGEN_FPGA_MODE", "rtl")
        assert "functional" in emulate(tmp_path / "npu", runs=1, rtl=False)["host"]["runtime"]
    assert "speed_vs_source" not in built.manifest["latency"], "a simulated NPU is not compared with the CPU"
    report = emulate(tmp_path / "npu", runs=2)
    assert report["pass"], report["checks"]
    assert report["op_support"]["accelerator"] == "edgegen NPU"
    rtl = report["rtl"]
    assert "skipped" not in rtl, rtl
    assert rtl["identical"] and rtl["cycles"] > 0 and rtl["latency_ms_at_fmax"] > 0
    assert "RTL identical to the functional model" in [c["name"] for c in report["checks"]]
    assert main(["emulate", str(tmp_path / "npu"), "--runs", "1", "--no-rtl"]) == 0
    assert "RTL tier     skipped: not run (--no-rtl)" in capsys.readouterr().out


def test_an_aarch64_run_left_out_is_said_so(tmp_path, cgen_path, capsys):
    build(cgen_path, "rpi4-litert", tmp_path / "pi")
    assert main(["emulate", str(tmp_path / "pi"), "--runs", "1", "--no-aarch64"]) == 0
    out = capsys.readouterr().out
    assert "aarch64      skipped: not run (--no-aarch64): this result covers this host only" in out


def test_emulate_and_verify_commands_print_numbers_and_exit_by_result(tmp_path, ort_bundle, capsys):
    assert main(["emulate", str(ort_bundle), "--runs", "2", "--json", str(tmp_path / "r.json")]) == 0
    text = capsys.readouterr().out
    assert "ESTIMATE from the roofline" in text and "result: PASS" in text
    assert json.loads((tmp_path / "r.json").read_text())["pass"]
    assert main(["verify", str(ort_bundle), "--runs", "2"]) == 0
    assert "PASS  image: PSNR" in capsys.readouterr().out
    failing = tmp_path / "strict"
    build(Path(json.loads((ort_bundle / "manifest.json").read_text())["model"]["source"]), "x86-onnxruntime",
          failing)
    manifest = json.loads((failing / "manifest.json").read_text())
    manifest["reference"]["tolerance"] = {"min_psnr_db": 500}
    (failing / "manifest.json").write_text(json.dumps(manifest))
    assert main(["verify", str(failing), "--runs", "2"]) == 3
    out = capsys.readouterr().out
    assert "FAIL  image" in out and "result: FAIL" in out
    assert main(["emulate", str(failing), "--runs", "1"]) == 3


@pytest.mark.parametrize("damage", ["flipped byte", "threads a string", "reference not an npz", "no tolerance",
                                    "negative tolerance", "no outputs", "output renamed"])
def test_a_damaged_bundle_fails_verify_and_emulate_with_exit_3(tmp_path, ort_bundle, capsys, damage):
    """A bundle off its sha256 exited 2 (a usage error) and a manifest's target.threads of "2" was an
    internal error in verify: both are a failed check, named."""
    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    if damage == "flipped byte":
        data = bytearray((copy / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 1
        (copy / "model.onnx").write_bytes(bytes(data))
        said = "'model.onnx' does not match its sha256"
    elif damage == "threads a string":
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["target"]["threads"] = "2"
        (copy / "manifest.json").write_text(json.dumps(manifest))
        said = "target.threads is '2', not an integer >= 1"
    elif damage == "no tolerance":  # was a KeyError traceback (exit 1); an empty one passed anything
        manifest = json.loads((copy / "manifest.json").read_text())
        del manifest["reference"]["tolerance"]
        (copy / "manifest.json").write_text(json.dumps(manifest))
        said = "reference.tolerance is None, not max_abs and/or min_psnr_db as positive finite numbers"
    elif damage in ("negative tolerance", "no outputs", "output renamed"):  # passed; passed comparing nothing;
        manifest = json.loads((copy / "manifest.json").read_text())  # a KeyError traceback (a swapped backend's)
        if damage == "negative tolerance":
            manifest["reference"]["tolerance"] = {"max_abs": -5}
            said = "not max_abs and/or min_psnr_db as positive finite numbers"
        elif damage == "no outputs":
            manifest["model"]["outputs"] = []
            said = "model.outputs lists no output"
        else:
            manifest["model"]["outputs"][0]["name"] = "renamed"  # emulate checks the reference against it first
            said = ("not 'renamed' that manifest.json names (a damaged or edited manifest", "output 'renamed' is missing")
        (copy / "manifest.json").write_text(json.dumps(manifest))
    else:  # listed with its new sha256: numpy's message spoke of pickled data and allow_pickle
        from edgegen.bundle import sha256_file

        (copy / "reference.npz").write_text("not an archive")
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"]["reference.npz"] = sha256_file(copy / "reference.npz")
        (copy / "manifest.json").write_text(json.dumps(manifest))
        said = "reference data unreadable (not a numpy .npz archive)"
    for verb in ("verify", "emulate"):
        assert main([verb, str(copy), "--runs", "1"]) == 3
        out = "".join(capsys.readouterr())  # a FAIL line, or a failed check of the report
        assert any(text in out for text in ((said,) if isinstance(said, str) else said)), out
    assert main(["verify", str(tmp_path / "nothing"), "--runs", "1"]) == 2


def test_a_manifest_without_the_roofline_is_named_not_the_target_file(tmp_path, ort_bundle, capsys):
    """The message blamed the installed target file, which has a roofline: following it changed nothing."""
    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["target"]["roofline"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["emulate", str(copy), "--runs", "1"]) == 2
    assert f"{copy / 'manifest.json'}: the target 'x86-onnxruntime' it records has no 'roofline'" in \
        capsys.readouterr().err
    assert main(["emulate", str(copy), "--runs", "1", "--target", "x86-onnxruntime"]) == 0


def test_the_roofline_counts_activations_at_the_size_the_bundle_was_built_for(tmp_path):
    """A dynamic-size upscaler built at 16x16 was costed at the source's default 32x32: 4x the bytes."""
    import onnx
    from runtime_models import upscaler_like

    from edgegen.graph import Graph

    onnx.save(upscaler_like(), str(tmp_path / "up.onnx"))
    result = build(tmp_path / "up.onnx", "x86-onnxruntime", tmp_path / "b",
                   graph_options={"input_shapes": {"image": [1, 3, 16, 16]}})
    moved, _ = roofline.traffic(result.manifest)
    at_16 = sum(c.activation_bytes for c in Graph.load(tmp_path / "up.onnx", input_shapes={"image": [1, 3, 16, 16]})
                .node_costs())
    assert moved == result.manifest["model"]["param_bytes"] + 2 * at_16


def test_an_fp16_bundle_counts_half_weights_and_the_estimate_needs_no_source(tmp_path):
    """fp16 bundles recorded fp32 parameter bytes (the roofline then moved 1.5x the bytes), and the estimate
    changed silently once the source model was no longer at its build path."""
    import onnx
    from runtime_models import upscaler_like

    onnx.save(upscaler_like(), str(tmp_path / "up.onnx"))
    fp32 = build(tmp_path / "up.onnx", "x86-onnxruntime", tmp_path / "fp32").manifest["model"]
    fp16 = build(tmp_path / "up.onnx", "x86-onnxruntime", tmp_path / "fp16", precision="fp16").manifest
    assert fp16["model"]["param_bytes"] == fp32["param_bytes"] // 2
    before = roofline.traffic(fp16)
    (tmp_path / "up.onnx").rename(tmp_path / "moved.onnx")
    assert roofline.traffic(fp16) == before
    assert before[0] == fp16["model"]["param_bytes"] + 2 * fp16["model"]["activation_bytes"] // 2
    bf16 = build(tmp_path / "moved.onnx", "x86-openvino", tmp_path / "bf16", precision="bf16").manifest
    # OpenVINO's bf16 is an fp32 IR (reported at half: a device's flash sized by it was 2x short); the plugin
    # computes on bf16 weights, which the roofline moves
    assert bf16["model"]["param_bytes"] == fp32["param_bytes"]
    assert roofline.traffic(bf16)[0] == fp32["param_bytes"] // 2 + 2 * bf16["model"]["activation_bytes"] // 2


def test_an_aarch64_target_whose_runtime_the_userland_lacks_says_so(tmp_path, cgen_path):
    """A custom aarch64 OpenVINO target: the QEMU tier said `pip install openvino`, which cannot be done in the
    arm64 userland (it holds numpy, ai-edge-litert and onnxruntime)."""
    target = _target_copy(tmp_path, "x86-openvino", arch="aarch64")
    build(cgen_path, str(target), tmp_path / "b")
    report = emulate(tmp_path / "b", target=str(target), runs=2)
    check = next(c for c in report["checks"] if c["name"] == "loads on aarch64 (QEMU)")
    assert not check["pass"] and "a bundle for openvino needs a runtime it does not install" in check["detail"]
    assert not report["pass"] and report["aarch64"]["skipped"] == check["detail"]


def test_verify_of_a_bundle_for_absent_hardware_points_to_emulate_not_to_a_flag_it_lacks(tmp_path, cgen_path,
                                                                                          capsys):
    """verify said to pass --host-fallback, which verify does not take (it checks on the device itself)."""
    build(cgen_path, "jetson-orin-onnxruntime", tmp_path / "b")
    assert main(["verify", str(tmp_path / "b"), "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot run this bundle here" in err and "edgegen emulate BUNDLE" in err
    assert "--host-fallback on the command line" not in err


def _costed(backend: str, precision: str, param_bytes: int, batch: int = 1) -> dict:
    """A manifest's cost fields alone: what the roofline reads."""
    return {"backend": backend, "precision": precision,
            "model": {"macs": 10**8, "param_bytes": param_bytes, "activation_bytes": 4 * 10**6, "cost_batch": batch}}


def test_the_estimate_of_a_bundle_built_at_batch_4_is_per_image_with_the_batch_said(capsys):
    """Built with --input-shape z=4x..., the whole batch's estimate was printed as 'ms per image' (4x too high)."""
    from edgegen.emulate import render

    device = targets.load("x86-onnxruntime")
    one, four = (roofline.estimate(_costed("onnxruntime", "fp32", 10**6, batch=b), device) for b in (1, 4))
    four_alone = roofline.estimate(_costed("onnxruntime", "fp32", 10**6), device)  # the same costs, said as batch 1
    assert four["latency_ms"] == pytest.approx(four_alone["latency_ms"] / 4, rel=1e-3)
    assert four["batch"] == 4 and four["batch_latency_ms"] == four_alone["latency_ms"] and one["batch"] == 1
    line = next(x for x in render.emulation(_report(four)).splitlines() if "estimate" in x)
    assert f"{four['latency_ms']:.3g} ms per image (a batch of 4 in {four['batch_latency_ms']:.3g} ms)" in line
    assert "per image (a batch" not in next(x for x in render.emulation(_report(one)).splitlines() if "estimate" in x)


def _report(estimate: dict) -> dict:
    return {"bundle": "b", "target": "t", "device": "d", "arch": "x86_64", "backend": "onnxruntime",
            "precision": "fp32", "constraints": {"threads": 2, "memory_mb": 64, "accelerator_replaced_by_cpu": None},
            "host": {"ok": False, "message": "not run"}, "estimate": estimate, "checks": [], "pass": True}


def test_a_litert_fp16_bundle_is_costed_as_litert_computes_it_in_f32():
    """LiteRT dequantizes fp16 weights at load and computes in f32: its fp16 estimate moved half the fp32 bytes
    (activations at 2 bytes) for the same arithmetic."""
    device = targets.load("rpi5-litert")  # its fp16 peak is twice fp32's: LiteRT's fp16 bundle does not reach it
    fp32 = roofline.estimate(_costed("tflite", "fp32", 2 * 10**6), device)
    fp16 = roofline.estimate(_costed("tflite", "fp16", 10**6), device)
    assert (fp16["bytes"], fp16["peak_gops"], fp16["latency_ms"]) == (fp32["bytes"], fp32["peak_gops"],
                                                                      fp32["latency_ms"])
    assert "tflite computes fp16 bundles in fp32" in fp16["bytes_counted"]
    ort = roofline.estimate(_costed("onnxruntime", "fp16", 10**6), targets.load("jetson-orin-onnxruntime"))
    assert ort["bytes"] == 10**6 + 2 * 10**6 * 2  # a Jetson's fp16 activations stay at 2 bytes


def test_the_roofline_counts_what_the_artifact_computes_and_stores_where_the_build_measured_it():
    """A LiteRT build's sub-pixel ConvTranspose computes 2.2x a DCGAN graph's MACs: the roofline used the graph's."""
    device = targets.load("x86-litert")
    graph = _costed("tflite", "int8", 10**6)
    own = {**graph, "session": {"delegate": "xnnpack", "artifact": {"macs": 3 * 10**8, "param_bytes": 2 * 10**6}}}
    before, after = roofline.estimate(graph, device), roofline.estimate(own, device)
    assert before["ops"] == 2 * 10**8 and after["ops"] == 6 * 10**8 and after["bytes"] == before["bytes"] + 10**6
    assert after["costs_from"].startswith("the artifact") and before["costs_from"].startswith("the compiled graph")
    tpu = {**own, "session": {**own["session"], "delegate": "edgetpu"}}
    tpu["session"]["artifact"] = {"macs": 10**8, "param_bytes": 9 * 1024 ** 2}  # 1 MiB beyond the on-chip memory
    bare = {**tpu, "model": {**tpu["model"], "inputs": [], "outputs": []}}
    assert "(1048576 bytes)" in roofline.link_traffic(bare)[1]


def _scored_model(tmp_path: Path, half: bool = False) -> Path:
    """x [N,3,8,8] -> conv -> tanh: an image y; and score [N,1] = 1000 + 100 * mean(x), unbounded (no range).
    half: exported in float16 (model.half()), image only."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kind, dtype = (TensorProto.FLOAT16, np.float16) if half else (TensorProto.FLOAT, np.float32)
    weights = np.random.default_rng(0).normal(0, 0.3, (3, 3, 3, 3)).astype(dtype)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Tanh", ["c"], ["y"])]
    inits = [numpy_helper.from_array(weights, "w")]
    outputs = [helper.make_tensor_value_info("y", kind, ["N", 3, 8, 8])]
    if not half:
        nodes += [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2, 3], keepdims=0),
                  helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
                  helper.make_node("Mul", ["m1", "hundred"], ["m2"]),
                  helper.make_node("Add", ["m2", "base"], ["score"])]
        inits += [numpy_helper.from_array(np.array([1], np.int64), "one"),
                  numpy_helper.from_array(np.float32(100), "hundred"),
                  numpy_helper.from_array(np.float32(1000), "base")]
        outputs.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]))
    graph = helper.make_graph(nodes, "scored", [helper.make_tensor_value_info("x", kind, ["N", 3, 8, 8])], outputs,
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / ("half.onnx" if half else "scored.onnx")
    onnx.save(model, str(path))
    return path


def _edit_manifest(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_score_beside_an_image_is_held_to_its_own_criterion_in_a_reduced_precision_self_test(tmp_path, capsys):
    """Only image outputs were held to min_psnr_db (and max_abs is fp32's): a score off by 6000 printed PASS."""
    import numpy as np

    from edgegen.bundle import sha256_file
    from edgegen.emulate.render import summary_row
    from edgegen.runtime import Generator

    bundle = tmp_path / "b"
    build(_scored_model(tmp_path), "x86-onnxruntime", bundle, precision="fp16")
    tolerance = json.loads((bundle / "manifest.json").read_text())["reference"]["tolerance"]
    assert set(tolerance) == {"min_psnr_db", "output_min_psnr_db"} and set(tolerance["output_min_psnr_db"]) == {"score"}
    test = Generator.open(bundle).self_test()
    assert test["pass"] and test["outputs"]["score"]["tolerance"] == {"min_psnr_db": tolerance["output_min_psnr_db"]
                                                                       ["score"]}
    report = emulate(bundle, runs=1)  # the summary's min PSNR is the image's, not the score's beside it
    image = report["host"]["self_test"]["outputs"]["y"]["psnr_db"]
    report["host"]["self_test"]["outputs"]["score"]["psnr_db"] = 1.71  # as OpenVINO fp16's score read: a PASS at 1.71
    row = summary_row({"target": "x86-onnxruntime", "bundle": str(bundle), "report": report})
    assert f" {image:.2f} " in row and "1.71" not in row

    wrong = tmp_path / "wrong"  # a device computing a wrong score looks like this reference
    shutil.copytree(bundle, wrong)
    with np.load(wrong / "reference.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["output:score"] = np.full_like(arrays["output:score"], -5000)
    np.savez(wrong / "reference.npz", **arrays)
    _edit_manifest(wrong, lambda m: m["files"].update({"reference.npz": sha256_file(wrong / "reference.npz")}))
    assert main(["verify", str(wrong), "--runs", "1"]) == 3
    out = capsys.readouterr().out
    assert "PASS  y:" in out and "FAIL  score:" in out and "SSIM nan" not in out
    assert main(["emulate", str(wrong), "--runs", "1"]) == 3

    old = tmp_path / "old"  # built before the key: it opens and passes, its score said to be unchecked
    shutil.copytree(bundle, old)
    _edit_manifest(old, lambda m: m["reference"]["tolerance"].pop("output_min_psnr_db"))
    assert main(["verify", str(old), "--runs", "1"]) == 0
    assert "score: PSNR" in (out := capsys.readouterr().out) and "(unchecked: the bundle records no criterion" in out
    for value, said in (({"image": 10.0}, "not a mapping of the model's outputs (y, score)"),
                        ({"score": "10"}, "to finite PSNRs in dB"), ([10.0], "output_min_psnr_db is [10.0]")):
        _edit_manifest(old, lambda m: m["reference"]["tolerance"].update({"output_min_psnr_db": value}))
        assert main(["verify", str(old), "--runs", "1"]) == 3
        assert said in "".join(capsys.readouterr())


def test_the_self_test_of_a_float16_export_measures_what_run_gives_as_the_build_does(tmp_path):
    """The self-test compared the float32 outputs before run()'s cast to float16 (LiteRT: 153 dB), the build
    what run() gives, both in float16 (here identical: 200 dB)."""
    import numpy as np

    from edgegen import reference
    from edgegen.runtime import Generator

    bundle = tmp_path / "b"
    built = build(_scored_model(tmp_path, half=True), "x86-litert", bundle, precision="fp16")
    gen = Generator.open(bundle)
    feeds, _ = reference.load(bundle, gen.manifest)
    assert gen.run(feeds)["y"].dtype == np.float16
    assert gen.self_test()["outputs"]["y"]["psnr_db"] == built.fidelity["outputs"]["y"]["psnr_db"]


def test_verify_of_a_bundle_for_another_architecture_points_to_emulate(tmp_path, cgen_path, capsys):
    """An rpi4 (aarch64) bundle passed verify on x86 with x86 numbers, where a Jetson bundle was refused (exit 2)."""
    build(cgen_path, "rpi4-litert", tmp_path / "pi")
    if targets.host_arch() == "aarch64":
        pytest.skip("this host is the rpi4 target's architecture")
    assert main(["verify", str(tmp_path / "pi"), "--runs", "1"]) == 2
    err = capsys.readouterr().err
    assert "needs an aarch64 device (this host is x86_64)" in err and "edgegen emulate BUNDLE" in err
    assert main(["emulate", str(tmp_path / "pi"), "--runs", "1", "--no-aarch64"]) == 0  # emulate still runs it here


def test_emulating_a_tflite_runtime_target_says_litert_ran_in_its_place(tmp_path, cgen_path, capsys):
    """A `runtime: tflite-runtime` target ran LiteRT and reported LiteRT's XNNPACK delegation as the device's."""
    import importlib.util

    if importlib.util.find_spec("tflite_runtime"):
        pytest.skip("tflite-runtime is installed here: it runs itself")
    target = _target_copy(tmp_path, "x86-litert", backend_options={"runtime": "tflite-runtime"})
    build(cgen_path, str(target), tmp_path / "b")
    report = emulate(tmp_path / "b", target=str(target), runs=1)
    said = report["constraints"]["runtime_replaced"]
    assert said.startswith("the device runs tflite-runtime, not installed here: ai-edge-litert") and \
        "timings are ai-edge-litert's, not tflite-runtime's" in said
    assert main(["emulate", str(tmp_path / "b"), "--target", str(target), "--runs", "1"]) == 0
    assert f"  runtime      {said}" in capsys.readouterr().out
    assert emulate(tmp_path / "b", runs=1)["constraints"]["runtime_replaced"] == said  # as the manifest records it
    build(cgen_path, "x86-litert", tmp_path / "litert")  # its own runtime: nothing to say
    assert emulate(tmp_path / "litert", runs=1)["constraints"]["runtime_replaced"] is None


@pytest.fixture(scope="module")
def fpga_bundle(tmp_path_factory, cgen_path) -> Path:
    out = tmp_path_factory.mktemp("fpga") / "npu"
    build(cgen_path, "fpga-sim", out)
    return out


def test_an_unwritable_build_cache_of_the_rtl_simulator_is_cannot_emulate_here(fpga_bundle, tmp_path, monkeypatch,
                                                                                 capsys):
    """EDGEGEN_CACHE (or HOME) read-only: the RTL tier failed as "a damaged artifact ... rebuild the bundle", exit 3."""
    from conftest import verilator_or_skip

    from edgegen.emulate import EmulatorUnavailableError

    verilator_or_skip()
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "a_file" / "cache"))  # read by the RTL run's own process
    with pytest.raises(EmulatorUnavailableError, match=r"RTL tier .* cannot run here: cannot build the NPU simulator: "
                                                       r"its cache directory .*a_file/cache/npu-verilator cannot be "
                                                       r"made .*point EDGEGEN_CACHE at a writable directory"):
        emulate(fpga_bundle, runs=1)
    assert main(["emulate", str(fpga_bundle), "--runs", "1"]) == 2
    assert "damaged" not in capsys.readouterr().err


def test_an_fpga_target_whose_rtl_cannot_be_simulated_here_is_not_a_pass(fpga_bundle, monkeypatch, capsys):
    """Without Verilator the RTL tier was skipped in a line and the run passed (exit 0, a green pytest test with
    EDGEGEN_REQUIRE_EMULATION=1): every tier must run unless --no-rtl leaves it out."""
    from edgegen.backends import session_module
    from edgegen.emulate import EmulatorUnavailableError

    monkeypatch.setattr(session_module("fpga"), "host_support", lambda options: (False, "it needs Verilator"))
    with pytest.raises(EmulatorUnavailableError, match=r"RTL tier .* cannot run here: it needs Verilator \(or pass "
                                                       r"--no-rtl"):
        emulate(fpga_bundle, runs=1)
    assert main(["emulate", str(fpga_bundle), "--runs", "1"]) == 2
    assert main(["emulate", str(fpga_bundle), "--runs", "1", "--no-rtl"]) == 0
    assert "RTL tier     skipped: not run (--no-rtl)" in capsys.readouterr().out


def _with_reference(bundle: Path, copy: Path, change) -> Path:
    """A copy of a bundle whose reference.npz is changed (listed with its new sha256: only its content is off)."""
    import numpy as np

    from edgegen.bundle import sha256_file

    shutil.copytree(bundle, copy)
    with np.load(copy / "reference.npz") as data:
        arrays = change({k: data[k] for k in data.files})
    np.savez(copy / "reference.npz", **arrays)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["reference.npz"] = sha256_file(copy / "reference.npz")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("damage, said", [
    ("no output", "output 'image' is missing (it holds outputs []"),
    ("output shape", "output 'image' has shape 1x3x4x4, the manifest says ?x3x8x8"),
    ("no input", "input 'latent' is missing"),
    ("input dtype", "input 'latent' is float64, the manifest says float32"),
    ("input shape", "input 'latent' has shape 1x8, the manifest says ?x16"),
    ("bad key", "entry 'junk' is neither input:NAME nor output:NAME")])
def test_a_reference_that_does_not_fit_the_manifest_is_a_damaged_bundle(tmp_path, ort_bundle, capsys, damage, said):
    """verify exited 1 with a traceback (KeyError, a broadcast ValueError), emulate printed the bare exception."""
    change = {"no output": lambda r: {k: v for k, v in r.items() if not k.startswith("output:")},
              "output shape": lambda r: {**r, "output:image": r["output:image"][:, :, :4, :4]},
              "no input": lambda r: {k: v for k, v in r.items() if k != "input:latent"},
              "input dtype": lambda r: {**r, "input:latent": r["input:latent"].astype("float64")},
              "input shape": lambda r: {**r, "input:latent": r["input:latent"][:, :8]},
              "bad key": lambda r: {**r, "junk": r["input:latent"]}}[damage]
    copy = _with_reference(ort_bundle, tmp_path / "b", change)
    for verb in ("verify", "emulate"):
        assert main([verb, str(copy), "--runs", "1"]) == 3
        err = capsys.readouterr().err
        assert err.startswith(f"FAIL  {copy / 'reference.npz'}: the reference data does not match manifest.json: "
                              f"{said}") and "rebuild the bundle" in err, err


def test_emulate_json_is_written_for_a_run_that_cannot_start_and_is_versioned(tmp_path, ort_bundle, capsys):
    """A damaged bundle (exit 3) or one that cannot be emulated here (exit 2) wrote no report, and an earlier run's
    report.json stayed, saying "pass": true."""
    from edgegen.emulate.device import SCHEMA

    report = tmp_path / "report.json"
    assert main(["emulate", str(ort_bundle), "--runs", "1", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["schema"] == SCHEMA == 1
    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    assert main(["emulate", str(copy), "--runs", "1", "--json", str(report)]) == 3
    written = json.loads(report.read_text())
    assert (written["pass"], written["schema"], written["checks"][0]["name"]) == (False, 1, "bundle intact")
    assert "'model.onnx' does not match its sha256" in written["checks"][0]["detail"]
    assert main(["emulate", str(ort_bundle), "--runs", "1", "--target", "rpi4-litert", "--json", str(report)]) == 2
    written = json.loads(report.read_text())
    assert not written["pass"] and "was built for target 'x86-onnxruntime'" in written["checks"][0]["detail"]
    assert list(tmp_path.glob("*.tmp*")) == [] and capsys.readouterr()


def test_emulate_json_is_strict_json_when_a_number_is_not_finite(tmp_path, ort_bundle, capsys):
    """A NaN in the reference wrote bare NaN tokens, which JSON parsers (JSON.parse) refuse."""
    import numpy as np

    copy = _with_reference(ort_bundle, tmp_path / "b",
                           lambda r: {**r, "output:image": np.full_like(r["output:image"], np.nan)})
    assert main(["emulate", str(copy), "--runs", "1", "--json", str(tmp_path / "r.json")]) == 3
    capsys.readouterr()

    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    report = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    [test] = [c for c in report["checks"] if c["name"] == "self-test on this host"]
    assert report["host"]["self_test"]["outputs"]["image"]["psnr_db"] is None
    assert "not finite numbers, null in --json" in test["detail"] and not test["pass"]


def test_a_runtime_that_cannot_use_a_file_of_this_host_is_not_a_damaged_artifact(tmp_path, monkeypatch):
    """Every load error was "a damaged artifact ... rebuild the bundle", an unwritable cache outside the bundle too."""
    import errno
    import types

    from edgegen import backends
    from edgegen.errors import BackendUnavailableError

    def session_raising(filename):
        def session(*args, **kwargs):
            raise OSError(errno.EACCES, "Permission denied", filename)
        return types.SimpleNamespace(Session=session)

    monkeypatch.setattr(backends, "session_module", lambda backend: session_raising("/proc/nocache/x"))
    with pytest.raises(BackendUnavailableError, match=r"cannot use /proc/nocache/x \(Permission denied\), which is "
                                                      r"this host's, not the bundle's.*point EDGEGEN_CACHE"):
        backends.open_session("fpga", tmp_path, {"entry": "npu/program.npz"}, 1, [])
    monkeypatch.setattr(backends, "session_module", lambda backend: session_raising(str(tmp_path / "npu")))
    with pytest.raises(BundleError, match="'npu/program.npz' does not load .*a damaged artifact"):
        backends.open_session("fpga", tmp_path, {"entry": "npu/program.npz"}, 1, [])


OPENVINO_UNDER_CEILING = (  # the worker's message where OpenVINO's libraries do not fit a 150 MB ceiling
    "running an OpenVINO artifact needs the openvino package, which is installed but fails to load here "
    "(/work/main/.venv/lib/python3.11/site-packages/openvino/_pyopenvino.cpython-311-x86_64-linux-gnu.so: failed to "
    "map segment from shared object); under a memory limit (ulimit -v, a device's ceiling) its libraries may not fit: "
    "raise the limit")


def test_a_memory_ceiling_failure_keeps_the_end_of_its_cause_and_its_row_no_crashed_rss(tmp_path, monkeypatch):
    """The cause was cut at 200 characters, mid-path: "openvino is installed but fails to load here (...so: )", the
    hint that a memory limit was the reason cut off; the pytest table printed the crashed run's 35 MB as the RSS."""
    from edgegen.emulate import device, process
    from edgegen.emulate.render import emulation, last_line, summary_row

    failed = {"ok": False, "error": "unavailable", "message": OPENVINO_UNDER_CEILING, "machine": "x86_64",
              "peak_rss_mb": 34.7, "peak_vm_mb": 148.1}
    unlimited = {"ok": True, "peak_rss_mb": 100.2, "peak_vm_mb": 614.0}
    monkeypatch.setattr(process, "run", lambda bundle, settings, userland=None: unlimited)
    check = device._memory_check(tmp_path, failed, process.Settings(threads=2, memory_mb=150))
    assert not check["pass"] and "failed to map segment from shared object); under a memory limit (ulimit -v, a " \
        "device's ceiling) its libraries may not fit: raise the limit); without it, it needs 614 MB" in check["detail"]
    report = {"bundle": "b", "target": "x86-openvino", "device": "x86-64 CPU", "arch": "x86_64", "backend": "openvino",
              "precision": "fp32", "constraints": {"threads": 2, "memory_mb": 150, "accelerator_replaced_by_cpu": None},
              "host": failed, "checks": [check], "pass": False,
              "estimate": {"latency_ms": 0.46, "bound": "compute", "ops": 7.4e7, "peak_gops": 160, "bytes": 5e6,
                           "bandwidth_gbs": 38.4}}
    assert f"  this host    failed: {OPENVINO_UNDER_CEILING}\n" in emulation(report)
    row = summary_row({"target": "x86-openvino", "bundle": "b", "report": report})
    assert row.split()[1:3] == ["FAIL", "-"] and row.split()[-2:] == ["-", "b"] and "35" not in row
    long = "first words of the cause " + "x" * 600 + " and the hint at its end: raise the limit"
    cut = last_line(f"Traceback ...\n{long}\n")
    assert cut.startswith("first words of the cause ") and cut.endswith(" and the hint at its end: raise the limit")
    assert " [...] " in cut and len(cut) < 500


def test_the_report_of_a_run_that_stops_early_names_the_target_the_bundle_records(tmp_path, ort_bundle, capsys):
    """"target": null unless --target was passed, although the manifest (readable: only the artifact was damaged)
    says x86-onnxruntime."""
    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    report = tmp_path / "r.json"
    assert main(["emulate", str(copy), "--runs", "1", "--json", str(report)]) == 3
    assert json.loads(report.read_text())["target"] == "x86-onnxruntime"
    custom = _target_copy(tmp_path, "rpi4-litert")  # --target as a file: the target it names
    assert main(["emulate", str(copy), "--runs", "1", "--target", str(custom), "--json", str(report)]) == 3
    assert json.loads(report.read_text())["target"] == "rpi4-litert"
    assert main(["emulate", str(ort_bundle), "--target", "rpi4-litert", "--json", str(report)]) == 2
    assert json.loads(report.read_text())["target"] == "rpi4-litert"
    (copy / "manifest.json").write_text("{")  # nothing records it
    assert main(["emulate", str(copy), "--runs", "1", "--json", str(report)]) == 3
    written = json.loads(report.read_text())
    assert written["target"] is None and written["checks"][0]["name"] == "bundle intact"
    capsys.readouterr()


@pytest.mark.parametrize("stop, code, said", [(KeyboardInterrupt, 130, "interrupted (Ctrl-C"),
                                              ("terminated", 143, "stopped by SIGTERM")])
def test_a_stopped_emulate_replaces_the_previous_report_with_a_failed_one(tmp_path, ort_bundle, monkeypatch, capsys,
                                                                         stop, code, said):
    """A run stopped by a CI step's timeout (SIGTERM) or Ctrl-C left the previous run's report, a PASS for another
    bundle, in the --json file; a run killed outright (SIGKILL) too."""
    from edgegen import cli
    from edgegen.emulate import device

    report = tmp_path / "report.json"
    assert main(["emulate", str(ort_bundle), "--runs", "1", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["pass"]
    seen = {}

    def stopped(bundle, **kwargs):
        seen.update(json.loads(report.read_text()))  # what a run killed here (SIGKILL) would leave
        raise KeyboardInterrupt() if stop is KeyboardInterrupt else cli._Terminated()

    monkeypatch.setattr(device, "emulate", stopped)
    assert main(["emulate", str(ort_bundle), "--json", str(report)]) == code
    assert not seen["pass"] and seen["checks"][0]["name"] == "emulation finished"
    assert "still going, or ended without writing its verdict" in seen["checks"][0]["detail"]
    written = json.loads(report.read_text())
    assert (written["pass"], written["target"], written["checks"][0]["name"]) == (False, "x86-onnxruntime",
                                                                                   "emulation finished")
    assert said in written["checks"][0]["detail"] and "no verdict" in written["checks"][0]["detail"]
    assert list(tmp_path.glob(".*.tmp")) == [] and "edgegen: " in capsys.readouterr().err


def test_the_rtl_execution_report_always_has_its_clock_keys(tmp_path, cgen_path, monkeypatch):
    """rtl.execution lacked timing_met and latency_ms_at_board_clock without a built bitstream (fpga-sim always): a CI
    script reading them met a KeyError. They are null where no bitstream checked timing."""
    import numpy as np

    from conftest import verilator_or_skip

    from edgegen.backends.fpga import session as fpga_session
    from edgegen.backends.fpga.model import FunctionalNpu
    from edgegen.backends.fpga.transport import RunStatus

    class CountingNpu(FunctionalNpu):  # the functional model counting cycles as the RTL does
        def wait(self, limit_cycles: int) -> RunStatus:
            return RunStatus(self.status, 1000, self.layers_run)

    bundle = tmp_path / "npu"
    build(cgen_path, "fpga-sim", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    with monkeypatch.context() as patched:
        patched.setattr(fpga_session, "open_device", lambda mode, config: CountingNpu(config))
        npu = fpga_session.Session(bundle, manifest["session"], 1)
    npu.run({"latent": np.zeros((1, 16), np.float32), "label": np.zeros(1, np.int64)})
    execution = npu.execution_report()
    assert execution["cycles"] > 0 and execution["fmax_source"] == "target" and execution["fmax_mhz"] > 0
    assert execution["timing_met"] is None and execution["latency_ms_at_board_clock"] is None, execution
    verilator_or_skip()
    report = emulate(bundle, runs=1)
    assert report["pass"], report["checks"]
    execution = report["rtl"]["execution"]
    assert (execution["fmax_source"], execution["timing_met"], execution["latency_ms_at_board_clock"]) == \
        ("target", None, None) and execution["fmax_mhz"] > 0 and report["rtl"]["latency_ms_at_fmax"] > 0
