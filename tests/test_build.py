import json
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import conditional_generator
from onnx import TensorProto, helper, numpy_helper

from edgegen import bundle
from edgegen.build import build
from edgegen.errors import BackendUnavailableError, BuildError, OutputPathError, UnsupportedOpError
from edgegen.fileio import UMASK
from edgegen.report import render_build_report
from edgegen.runtime import Generator


@pytest.mark.parametrize("fixture, artifact", [("ort_bundle", "model.onnx"), ("ov_bundle", "model.xml")])
def test_bundle_layout_and_manifest(request, fixture, artifact):
    out = request.getfixturevalue(fixture)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == bundle.SCHEMA_VERSION
    assert manifest["precision"] == "fp32"
    assert artifact in manifest["files"] and "reference.npz" in manifest["files"]
    for name, digest in manifest["files"].items():
        assert bundle.sha256_file(out / name) == digest
    fid = manifest["fidelity"]
    assert fid["max_abs"] <= 1e-3 and fid["psnr_db"] >= 60 and fid["samples"] == 8
    assert {s["role"] for s in manifest["model"]["inputs"]} == {"latent", "label"}
    assert manifest["tools"]["edgegen"] and manifest["latency"]["p50_ms"] > 0
    assert not list(out.parent.glob(".*tmp"))  # no staging left behind


def test_openvino_fp32_sets_inference_precision_explicitly(ov_bundle):
    gen = Generator.open(ov_bundle)
    assert gen.session._compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"


def test_openvino_session_binds_inputs_in_place_and_copies_its_outputs_out(ov_bundle):
    """The session binds the caller's arrays to the request (no copy in): a strided view, then batches of
    other sizes, each give what contiguous copies give; outputs are the caller's own; a missing input is named."""
    from edgegen import reference

    session = Generator.open(ov_bundle).session
    assert list(session._ready) == [1]  # batch 1 compiled static; each other batch size on its first call
    one, _ = reference.load(ov_bundle, json.loads((ov_bundle / "manifest.json").read_text()))
    feeds = {name: np.concatenate([array * (1 - 0.4 * i) if array.dtype.kind == "f" else array for i in range(3)])
             for name, array in one.items()}  # three different samples
    doubled = {name: np.repeat(array, 2, axis=0) for name, array in feeds.items()}
    every_other = {name: array[::2] for name, array in doubled.items()}  # views, not contiguous
    assert not any(array.flags.c_contiguous for array in every_other.values() if array.ndim > 1)
    expected = session.run({name: array.copy() for name, array in feeds.items()})
    got = session.run(every_other)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    first = session.run({name: array[:1] for name, array in feeds.items()})
    kept = {name: array.copy() for name, array in first.items()}
    session.run({name: array[1:] for name, array in feeds.items()})  # the request's buffers are reused here
    for name in first:
        np.testing.assert_array_equal(first[name], kept[name])
        np.testing.assert_allclose(first[name], expected[name][:1], atol=1e-5)  # batch 1's kernels, not batch 3's
    assert sorted(session._ready) == [1, 2, 3]
    name = next(iter(feeds))
    with pytest.raises(ValueError, match=f"the OpenVINO model takes inputs .*{name}"):
        session.run({n: a for n, a in feeds.items() if n != name})


def test_openvino_compiles_static_batches_up_to_a_limit_then_runs_the_dynamic_model(ov_bundle, monkeypatch):
    from edgegen.backends.openvino import session as ov_session

    monkeypatch.setattr(ov_session, "STATIC_BATCHES", 2)
    gen = Generator.open(ov_bundle)
    for n in (1, 2, 3):
        feeds = gen.feeds([{"seed": s, "label": 1} for s in range(n)])
        assert len(gen.session.run(feeds)["image"]) == n
    assert sorted(gen.session._ready, key=str) == [1, 2, "any"]


def test_openvino_runs_a_batch_it_cannot_compile_static_on_the_dynamic_model(ov_bundle, monkeypatch):
    from edgegen.backends.openvino import session as ov_session

    gen = Generator.open(ov_bundle)
    reshape = ov_session._with_batch

    def no_batch_of_three(model, shapes, batch):
        if batch == 3:
            raise RuntimeError("cannot reshape")
        return reshape(model, shapes, batch)

    monkeypatch.setattr(ov_session, "_with_batch", no_batch_of_three)
    feeds = gen.feeds([{"seed": s, "label": 1} for s in range(3)])
    assert len(gen.session.run(feeds)["image"]) == 3
    assert gen.session._ready[3] is gen.session._ready["any"]


def test_openvino_compiles_batch_one_static_only_where_the_batch_is_the_only_dynamic_dimension(tmp_path):
    from runtime_models import unet_like

    onnx.save(unet_like(), str(tmp_path / "unet.onnx"))  # dynamic height and width
    build(tmp_path / "unet.onnx", "x86-openvino", tmp_path / "b")
    session = Generator.open(tmp_path / "b").session
    assert list(session._ready) == ["any"]
    session.run({"image": np.zeros((1, 3, 16, 24), np.float32)})
    session.run({"image": np.zeros((1, 3, 24, 16), np.float32)})
    assert list(session._ready) == ["any"]


@pytest.mark.parametrize("target", ["x86-onnxruntime", "x86-openvino"])
def test_fp16_build_is_verified_and_smaller(tmp_path, cgen_path, target):
    result = build(cgen_path, target, tmp_path / "b16", precision="fp16")
    assert result.manifest["precision"] == "fp16"
    assert 40 < result.fidelity["psnr_db"] < 200
    # the device may run fp16 for real where this host ran f32: no tighter than fp16 allows
    assert result.manifest["reference"]["tolerance"]["min_psnr_db"] == min(
        round(result.fidelity["psnr_db"] - 6, 2), 50.0)
    assert Generator.open(tmp_path / "b16").self_test()["pass"]
    # what the backend ran fp16 as on this CPU: OpenVINO's f16 hint as f16, bf16 or f32; ONNX Runtime's CPU
    # provider, which has no fp16 convolution, casts the weights to f32 and computes there (it was reported
    # as fp16 activations, with no warning)
    types = result.manifest["execution"]["float_types"]
    assert set(types) <= {"f16", "bf16", "f32"} and sum(types.values()) == sum(
        result.manifest["execution"]["float"].values())
    if target == "x86-onnxruntime":
        assert types.get("f32") and "ConvTranspose" in result.manifest["execution"]["float"]
    report = render_build_report(result.manifest, tmp_path / "b16")
    assert ("warning   no layer runs in fp16 on this host" in report) == ("f16" not in types)
    all_f32 = {**result.manifest, "execution": {**result.manifest["execution"], "float_types": {"f32": 3}}}
    assert f"warning   no layer runs in fp16 on this host ({result.manifest['backend']} chose f32)" in \
        render_build_report(all_f32, tmp_path / "b16")


def test_openvino_fp16_counts_layers_by_the_type_their_kernel_computes_in(tmp_path):
    """A DCGAN's Deconvolutions report runtimePrecision f16 (their weights) on a CPU without fp16 arithmetic
    while an f32 kernel (`brgconv_avx512_f32`) computes them: counted as f16, the "no layer runs in fp16"
    warning was skipped."""
    if {"avx512_fp16", "amx_fp16"} & set(Path("/proc/cpuinfo").read_text().split()):
        pytest.skip("this CPU has fp16 arithmetic: OpenVINO may run f16 for real")
    model = Path(__file__).parent / "data" / "families" / "dcgan__legacy_b1.onnx"
    result = build(model, "x86-openvino", tmp_path / "b", precision="fp16")
    assert result.manifest["execution"]["float"]["ConvTranspose"] == 5
    assert "f16" not in result.manifest["execution"]["float_types"]
    assert "warning   no layer runs in fp16 on this host" in render_build_report(result.manifest, tmp_path / "b")


@pytest.mark.parametrize("target", ["jetson-orin-onnxruntime", "intel-npu-openvino"])
def test_device_targets_build_anywhere_and_say_where_they_were_verified(tmp_path, cgen_path, target):
    result = build(cgen_path, target, tmp_path / "dev")
    assert result.manifest["precision"] == "fp16"
    assert "fallback" in result.fidelity["ran_on"] or "native" in result.fidelity["ran_on"] or \
        result.fidelity["ran_on"].startswith(("onnxruntime", "openvino"))
    if "fallback" in result.fidelity["ran_on"]:  # the device is not here: opening says how to try it on this CPU
        with pytest.raises(BackendUnavailableError, match=r"cannot run this bundle here: .*host_fallback=True "
                                                          r"\(--host-fallback on the command line\)"):
            Generator.open(tmp_path / "dev")
        assert Generator.open(tmp_path / "dev", host_fallback=True).self_test()["pass"]
        # the layer precisions are this CPU's, not the device's: the report says so
        executes = [line for line in render_build_report(result.manifest, tmp_path / "dev").splitlines()
                    if line.startswith("  executes")]
        assert all("(on this host's CPU in place of the device)" in line for line in executes)
        assert executes or target != "intel-npu-openvino"


def test_refuses_directory_with_other_files(tmp_path, cgen_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BuildError, match="holds other files"):
        build(cgen_path, "x86-onnxruntime", out)
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_refuses_a_bundle_holding_files_its_manifest_does_not_list(tmp_path, cgen_path):
    out = tmp_path / "b"
    build(cgen_path, "x86-onnxruntime", out)
    (out / "NOTES.txt").write_text("mine")
    (out / "mydata").mkdir()
    (out / "mydata" / "keep.bin").write_bytes(b"x")
    with pytest.raises(BuildError, match=r"holds 2 file\(s\) the bundle does not list \(NOTES.txt, mydata/keep.bin\)"):
        build(cgen_path, "x86-onnxruntime", out, precision="fp16")
    assert (out / "NOTES.txt").read_text() == "mine" and (out / "mydata" / "keep.bin").read_bytes() == b"x"


def test_refuses_the_working_directory_as_out(tmp_path, cgen_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BuildError, match="is the working directory or holds it"):
        build(cgen_path, "x86-onnxruntime", Path("."))
    assert list(tmp_path.iterdir()) == []


def test_staging_left_by_a_killed_build_is_removed_by_the_next(tmp_path, cgen_path):
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".b.{socket.gethostname()}-{dead.stdout.strip()}.abcd1234.tmp"
    live = tmp_path / f".b.{socket.gethostname()}-{os.getpid()}.efgh5678.tmp"
    mine = tmp_path / ".b.draft.tmp"
    for path in (orphan, live, mine):
        path.mkdir()
    build(cgen_path, "x86-onnxruntime", tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, mine.name, "b"])


def test_rebuild_replaces_an_existing_bundle(tmp_path, cgen_path):
    out = tmp_path / "b"
    build(cgen_path, "x86-onnxruntime", out)
    first = json.loads((out / "manifest.json").read_text())["created"]
    build(cgen_path, "x86-openvino", out)
    manifest = bundle.read_manifest(out)
    assert manifest["backend"] == "openvino" and "model.onnx" not in manifest["files"] and first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    # modes as mkdir and open give them under the umask (not tempfile's private 0700 / 0600)
    assert out.stat().st_mode & 0o777 == 0o777 & ~UMASK
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~UMASK


def test_failed_build_leaves_previous_bundle_intact(tmp_path, cgen_path):
    out = tmp_path / "b"
    build(cgen_path, "x86-onnxruntime", out)
    before = (out / "manifest.json").read_text()
    with pytest.raises(BuildError):
        build(cgen_path, "x86-onnxruntime", out, precision="fp8")
    assert (out / "manifest.json").read_text() == before


def test_unsupported_op_names_node_and_op(tmp_path):
    g = helper.make_graph([helper.make_node("FancyUpsample", ["x"], ["y"], name="up1", domain="com.example")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              str(path))
    for target in ("x86-onnxruntime", "x86-openvino"):
        with pytest.raises(UnsupportedOpError, match="node 'up1' \\(op FancyUpsample\\)"):
            build(path, target, tmp_path / target)
        assert not (tmp_path / target).exists()


def test_fixed_batch_model_builds_and_batches(tmp_path):
    path = tmp_path / "b1.onnx"
    onnx.save(conditional_generator(batch=1, extras=False), str(path))
    build(path, "x86-onnxruntime", tmp_path / "b")
    gen = Generator.open(tmp_path / "b")
    images = gen.generate_batch([{"seed": s, "label": s} for s in range(3)])
    assert images.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(images[2], gen.generate(seed=2, label=2))


def test_model_exported_with_a_fixed_batch_of_two(tmp_path):
    path = tmp_path / "b2.onnx"
    onnx.save(conditional_generator(batch=2, extras=False), str(path))
    with pytest.raises(BuildError, match=r"--samples 1: .*b2.onnx was exported with a fixed batch of 2; give at "
                                         r"least --samples 2"):  # was ONNX Runtime's invalid dimensions, internal
        build(path, "x86-openvino", tmp_path / "one", samples=1)
    result = build(path, "x86-openvino", tmp_path / "b")
    assert result.fidelity["samples"] == 8
    assert result.manifest["latency"]["batch"] == 2  # it times a batch of 2: was labelled batch 1
    gen = Generator.open(tmp_path / "b")
    images = gen.generate_batch([{"seed": s, "label": s} for s in range(3)])
    assert images.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(images[1], gen.generate(seed=1, label=1))


def test_opset_11_export_builds_against_the_file_as_exported(tmp_path):
    """torch.onnx.export's long-time default: opset 11, initializers listed as graph inputs too."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
             numpy_helper.from_array(np.array(0.0, np.float32), "low"),
             numpy_helper.from_array(np.array(6.0, np.float32), "high"),
             numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(rng.standard_normal((3, 8, 3, 3)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["h", "low", "high"], ["a"]),
             helper.make_node("Resize", ["a", "roi", "scales"], ["u"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Conv", ["u", "w2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c"], ["out"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])] + \
        [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                                 ["N", 3, 32, 32])], inits)
    path = tmp_path / "op11.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    result = build(path, "x86-onnxruntime", tmp_path / "b")
    assert result.fidelity["max_abs"] <= 1e-5
    assert any("opset 11 raised to 17" in note for note in result.manifest["model"]["cleanup"])


def test_pruned_fp32_build_reports_and_self_tests(tmp_path):
    from edgegen.cli import main

    model = Path(__file__).parent / "data" / "families" / "mobilenet_resnet__legacy_dyn.onnx"
    assert main(["build", str(model), "-t", "x86-onnxruntime", "-o", str(tmp_path / "p"), "--prune", "0.3"]) == 0
    manifest = bundle.read_manifest(tmp_path / "p")
    pruned = manifest["passes"]["prune"]
    assert pruned["ratio"] == 0.3 and manifest["model"]["macs"] < 0.8 * manifest["model"]["source_macs"]
    assert pruned["quality"]["with_reconstruction"]["psnr_db"] > pruned["quality"]["without_reconstruction"]["psnr_db"]
    assert Generator.open(tmp_path / "p").self_test()["pass"]


def test_prune_to_floor_and_to_macs(tmp_path):
    model = Path(__file__).parent / "data" / "families" / "dcgan__legacy_dyn.onnx"
    floored = build(model, "x86-openvino", tmp_path / "f", prune=0.5, min_psnr=40)
    assert floored.fidelity["psnr_db"] >= 40 and 0 < floored.manifest["passes"]["prune"]["ratio"] <= 0.5
    budget = build(model, "x86-openvino", tmp_path / "m", prune_to_macs=500_000)
    assert budget.manifest["model"]["macs"] <= 500_000
    with pytest.raises(BuildError, match="not both"):
        build(model, "x86-openvino", tmp_path / "x", prune=0.3, prune_to_macs=500_000)
    with pytest.raises(BuildError, match=r"pruned to [\d,]+ MACs \(--prune-to-macs 500,000\) the model reaches PSNR "
                                         r".* below the floor \(PSNR >= 150 dB\)\. Raise the MAC target"):
        build(model, "x86-openvino", tmp_path / "y", prune_to_macs=500_000, min_psnr=150)
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_openvino_bundles_are_reproducible_within_one_process(tmp_path, cgen_path, precision):
    # OpenVINO names new nodes after a process-wide counter; the bundle must not depend on it
    first, second = (build(cgen_path, "x86-openvino", tmp_path / name, precision=precision) for name in "ab")
    assert first.manifest["files"] == second.manifest["files"]
    assert not [p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no staged leftovers


def test_openvino_outputs_keep_their_names_when_the_plugin_fuses_the_last_node(tmp_path):
    """ESPCN's tail: the plugin fuses the Clip into the DepthToSpace and gives the output both names."""
    rng = np.random.default_rng(0)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [12, 3, 3, 3], rng.normal(0, 0.2, 324).astype(np.float32))
    nodes = [helper.make_node("Conv", ["image", "w"], ["features"], pads=[1, 1, 1, 1]),
             helper.make_node("DepthToSpace", ["features"], ["shuffled"], blocksize=2, mode="CRD"),
             helper.make_node("Clip", ["shuffled", "lo", "hi"], ["upscaled"])]
    graph = helper.make_graph(
        nodes, "espcn_tail", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("upscaled", TensorProto.FLOAT, [1, 3, 16, 16])],
        [weight, helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("hi", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "espcn.onnx"))
    result = build(tmp_path / "espcn.onnx", "x86-openvino", tmp_path / "b")
    assert result.manifest["fidelity"]["max_abs"] <= 1e-5
    assert Generator.open(tmp_path / "b").generate(image=np.zeros((8, 8, 3), np.uint8)).shape == (16, 16, 3)


def test_a_model_exported_in_float16_is_built_from_its_float32_form(tmp_path):
    """model.half() before export: float16 weights, inputs and outputs, and a Cast to float16."""
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float16), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (3, 8, 3, 3)).astype(np.float16), "w2")
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["c2"], ["c3"], to=TensorProto.FLOAT16),
             helper.make_node("Tanh", ["c3"], ["out"])]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("image", TensorProto.FLOAT16, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 3, 8, 8])], [w1, w2])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "half.onnx"))
    for target, precision in [("x86-onnxruntime", "int8"), ("x86-litert", "fp32"), ("x86-openvino", "int8")]:
        result = build(tmp_path / "half.onnx", target, tmp_path / f"{target}-{precision}", precision=precision)
        assert result.manifest["model"]["inputs"][0]["dtype"] == "float32"
        assert result.fidelity["psnr_db"] > (100 if precision == "fp32" else 30)
        image = Generator.open(tmp_path / f"{target}-{precision}").generate(image=np.zeros((8, 8, 3), np.uint8))
        assert image.shape == (8, 8, 3)
    # the file's own form: run() takes and gives float16, and so may a calibration file (both were refused)
    x = rng.random((1, 3, 8, 8)).astype(np.float16)
    out = Generator.open(tmp_path / "x86-litert-fp32").run({"image": x})["out"]
    file_out = ort.InferenceSession(str(tmp_path / "half.onnx")).run(None, {"image": x})[0]
    assert out.dtype == np.float16 and np.abs(out.astype(np.float32) - file_out.astype(np.float32)).max() < 2e-3
    from_float32 = Generator.open(tmp_path / "x86-litert-fp32").run({"image": x.astype(np.float32)})["out"]
    np.testing.assert_array_equal(from_float32, out)  # float32 inputs as the README says (they were refused)
    np.savez(tmp_path / "calibration.npz", image=rng.random((40, 3, 8, 8)).astype(np.float16))
    build(tmp_path / "half.onnx", "x86-onnxruntime", tmp_path / "calibrated", precision="int8",
          calibration=str(tmp_path / "calibration.npz"))
    from edgegen import bench

    rows = bench.run(tmp_path / "x86-onnxruntime-int8", [1], runs=3, baseline=True)["rows"]  # the float32 form
    assert rows[1]["subject"] == "fp32 source, onnxruntime CPU" and rows[0]["speedup_vs_baseline"] > 0


def test_a_model_onnx_runtime_cannot_load_by_path_is_run_from_memory(tmp_path):
    """Every tensor in external data, the Pad's pads too, which ONNX Runtime must read while loading."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")]
    nodes = [helper.make_node("Pad", ["image", "pads"], ["padded"], mode="reflect"),
             helper.make_node("Conv", ["padded", "w"], ["out"])]
    graph = helper.make_graph(nodes, "ext", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 8, 8])], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "ext.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="ext.bin", size_threshold=0)
    result = build(tmp_path / "ext.onnx", "x86-onnxruntime", tmp_path / "b")
    assert result.fidelity["max_abs"] <= 1e-5


def test_an_input_shape_the_model_cannot_run_is_a_clear_error(tmp_path):
    """A U-Net-like skip: a stride-2 conv, upsampled x2 and joined with its input; 7 is odd."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["down"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Resize", ["down", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Concat", ["up", "image"], ["out"], axis=1)]
    graph = helper.make_graph(nodes, "skip", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 6, "H", "W"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "skip.onnx"))
    with pytest.raises(BuildError, match=r"fails on inputs of shape image 1x3x7x7: .*Concat.* choose with --input-shape"):
        build(tmp_path / "skip.onnx", "x86-onnxruntime", tmp_path / "b", graph_options={"input_shapes": {"image": [1, 3, 7, 7]}})
    assert not (tmp_path / "b").exists()


def test_a_rebuild_swaps_the_bundle_in_one_step_where_the_filesystem_can(tmp_path, cgen_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x").write_text("a"), (b / "y").write_text("b")
    if not bundle._exchange(a, b):
        pytest.skip("this filesystem has no atomic directory exchange (renameat2); publish uses two renames")
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]
    with pytest.raises(OSError, match="No such file"):
        bundle._exchange(a, tmp_path / "missing")


def test_a_bundle_at_a_mount_point_is_refused_saying_why(tmp_path, cgen_path):
    """A bundle directory that is a mount point (a volume at the bundle's own path) cannot be swapped out:
    the rebuild was an internal error with an EBUSY traceback."""
    out = tmp_path / "b"
    out.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(out), str(out)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    try:
        with pytest.raises(OutputPathError, match="is a mount point .* into a directory inside it"):
            build(cgen_path, "x86-onnxruntime", out)
        assert not list(out.iterdir()) and [p.name for p in tmp_path.iterdir()] == ["b"]
    finally:
        subprocess.run(["umount", str(out)], check=True)


def test_an_unbounded_output_beyond_its_assumed_range_is_warned_about(tmp_path, caplog):
    caplog.set_level(logging.WARNING)  # other test modules quiet the root logger when they are collected
    weight = numpy_helper.from_array(np.full((3, 3, 1, 1), 2.0, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["out"])], "unbounded",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 16, 16])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    built = build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b")
    assert "output 'out': on the held-out inputs the fp32 source spans" in caplog.text
    assert "outside the range [0, 1] its 8-bit images use (they clip there" in caplog.text and "--output-range" in caplog.text
    # the input's range was assumed too: a fast-style export of pixel units was built and scored on [0, 1] inputs
    # (52 dB reported, 18 dB on pictures), and neither the warning nor the report said the input's was a guess
    assert "the held-out inputs of 'image' were drawn in [0, 1], assumed (" in caplog.text
    assert "--input-range LO,HI too" in caplog.text
    assert "  inputs    'image': the held-out inputs were drawn in [0, 1], assumed (" in \
        render_build_report(built.manifest, tmp_path / "b")
    caplog.clear()
    declared = build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b2",
                     graph_options={"input_range": [0.0, 1.0], "output_range": [0.0, 6.0]})
    assert "held-out inputs the fp32 source spans" not in caplog.text
    assert "  inputs  " not in render_build_report(declared.manifest, tmp_path / "b2")


def test_held_out_inputs_run_a_few_at_a_time_where_one_batch_would_be_large(tmp_path, cgen_path, monkeypatch):
    from edgegen import source
    from edgegen.graph import Graph

    batches = []
    run = source.SourceSession.run
    monkeypatch.setattr(Graph, "samples_per_run", lambda self: 3)
    monkeypatch.setattr(source.SourceSession, "run", lambda self, feeds: batches.append(
        len(next(iter(feeds.values())))) or run(self, feeds))
    build(cgen_path, "x86-onnxruntime", tmp_path / "b", samples=8)
    assert batches[:2] == [1, 2]  # the check that one input's output does not depend on the batch
    assert max(batches[2:]) == 3 and sum(batches[2:5]) == 8


def test_speed_vs_source_is_measured_in_blocks_after_the_other_runtime_went_idle(monkeypatch):
    """Run by run, the fp32 source's spinning ONNX Runtime workers took the cores of the artifact's next run
    (OpenVINO bf16 at 0.1-0.8x the source where each alone ran faster): blocks, each after `settle`."""
    from edgegen import bench
    from edgegen.build import _latency

    calls = []
    monkeypatch.setattr(bench, "settle", lambda *a, **k: calls.append("settle") or True)

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, feeds):
            calls.append(self.name)

    latency = _latency(Fake("artifact"), {}, 2, "here", Fake("source"), runs=10)
    assert latency["runs"] == 10 and latency["block_runs"] == bench.BLOCK_RUNS and latency["speed_vs_source"] > 0
    timed = [c for c in calls[2:] if c != "settle"]  # after the first warm-up run of each
    per_block = bench.BLOCK_WARMUP + bench.BLOCK_RUNS
    assert timed == (["artifact"] * per_block + ["source"] * per_block) * 2
    assert calls[2:].count("settle") == 4


def test_a_slow_ratio_measured_on_a_busy_host_does_not_blame_the_precision(tmp_path):
    manifest = {"target": {"name": "x86-openvino"}, "backend": "openvino", "precision": "int8",
                "model": {"source_macs": 1e6, "macs": 1e6, "source_param_bytes": 1e3, "param_bytes": 1e3},
                "fidelity": {"psnr_db": 40.0, "ssim": 0.99, "max_abs": 0.01, "samples": 8, "ran_on": "here"},
                "latency": {"p50_ms": 1.0, "threads": 2, "speed_vs_source": 0.5, "source_p50_ms": 0.5,
                            "other_load_cores": 0.1, "host_cpus": 2}}
    quiet = render_build_report(manifest, tmp_path)
    assert "runs at 0.50x the speed of the fp32 source on this host: openvino gains nothing" in quiet
    assert "in alternating blocks" in quiet
    busy = render_build_report({**manifest, "latency": {**manifest["latency"], "other_load_cores": 1.4}}, tmp_path)
    assert "gains nothing" not in busy
    assert "while other processes kept 1.4 of 2 cores busy" in busy
    assert f"rerun `edgegen bench {tmp_path} --baseline` on a quiet host" in busy
    # the medians say 1.01x where the paired blocks said 0.64x: load changed while it was measured
    unsteady = render_build_report({**manifest, "latency": {**manifest["latency"], "p50_ms": 6.064,
                                                            "source_p50_ms": 6.144, "speed_vs_source": 0.64}}, tmp_path)
    assert "unsteady on this host: 0.64x by paired blocks, 1.01x by medians" in unsteady
    assert "gains nothing" not in unsteady and "changed while it was measured" in unsteady
    # a fast ratio under load was printed bare (seven builds of one U-Net: 1.37x to 8.29x, 0.55-1.5 cores busy)
    fast = {**manifest["latency"], "speed_vs_source": 3.2, "p50_ms": 0.16}
    assert "cores busy" not in render_build_report({**manifest, "latency": fast}, tmp_path)
    loaded = render_build_report({**manifest, "latency": {**fast, "other_load_cores": 1.4}}, tmp_path)
    latency = next(line for line in loaded.splitlines() if line.startswith("  latency"))
    assert "3.20x the speed of" in latency and "other processes kept 1.4 of 2 cores busy: rerun" in latency


def test_a_model_whose_output_depends_on_the_batch_it_runs_in_is_refused(tmp_path):
    """A batch size frozen into a reshape, as Swin-style window code exports: right only at the traced batch."""
    nodes = [helper.make_node("Reshape", ["x", "traced"], ["rows"]),  # [2, -1]: one row per image only at batch 2
             helper.make_node("Softmax", ["rows"], ["soft"], axis=1),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Reshape", ["soft", "shape"], ["y"])]
    g = helper.make_graph(nodes, "traced", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [numpy_helper.from_array(np.array([2, -1], np.int64), "traced")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "traced.onnx"))
    with pytest.raises(BuildError, match=r"depends on how many inputs run with it .* froze a batch size"):
        build(tmp_path / "traced.onnx", "x86-onnxruntime", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_model_that_fails_on_a_batch_of_two_is_told_its_export_froze_the_batch(tmp_path):
    """SAGAN-style `o.view(B, C, H, W)` exports B=1 into the Reshape: it runs alone, fails at batch 2, and was
    told to choose a size with --input-shape (which gave the same error)."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "traced"], ["y"])]
    g = helper.make_graph(nodes, "frozen", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [numpy_helper.from_array(np.array([1, 3, 8, 8], np.int64), "traced")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "frozen.onnx"))
    with pytest.raises(BuildError, match=r"runs on one input but fails on a batch of two \(.*Reshape.*\): the export "
                                         r"froze a batch size") as info:
        build(tmp_path / "frozen.onnx", "x86-onnxruntime", tmp_path / "b")
    assert "--input-shape" not in str(info.value)


@pytest.mark.parametrize("name, channels", [("seg_map", 8), ("coords", 2)])
def test_an_input_named_like_a_segmentation_map_fed_noise_is_warned_about(tmp_path, caplog, name, channels):
    """A CIPS-style coordinate grid was fed Gaussian noise without a word, like a segmentation map had been."""
    caplog.set_level(logging.WARNING)
    w = numpy_helper.from_array(np.full((3, channels, 3, 3), 0.1, np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", [name, "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Tanh", ["c"], ["y"])], "spade",
                          [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", channels, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 16, 16])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "spade.onnx"))
    build(tmp_path / "spade.onnx", "x86-onnxruntime", tmp_path / "b", samples=2)
    assert f"input '{name}' (latent) is fed seeded Gaussian noise" in caplog.text


def test_a_ratio_pruned_to_a_poor_image_is_warned_about(tmp_path, caplog):
    """--prune 0.7 without a floor built a 25 dB model silently."""
    caplog.set_level(logging.WARNING)
    model = Path(__file__).parent / "data" / "families" / "pix2pix_unet__legacy_b1.onnx"
    build(model, "x86-onnxruntime", tmp_path / "a", prune=0.3)
    assert "leaves PSNR" not in caplog.text
    build(model, "x86-onnxruntime", tmp_path / "b", prune=0.7)
    assert "--prune 0.7 leaves PSNR" in caplog.text and "--min-psnr DB to prune only as far" in caplog.text


def test_the_held_out_inputs_come_from_a_calibration_array_file(tmp_path, caplog):
    """Real maps given with --calibration FILE.npz calibrated the build, but it was verified (and the floor
    searched) on seeded Gaussian noise for them: 31.5 dB reported where the real maps gave 61.8."""
    from runtime_models import spade_like

    from edgegen import reference

    onnx.save(spade_like(), str(tmp_path / "spade.onnx"))
    rng = np.random.default_rng(0)
    seg = np.eye(2, dtype=np.float32)[rng.integers(0, 2, (40, 8, 8))].transpose(0, 3, 1, 2)  # one-hot maps
    images = rng.uniform(0, 1, (40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", image=images, seg=seg)
    shapes = {"input_shapes": {"image": [1, 3, 8, 8], "seg": [1, 2, 8, 8]}}
    result = build(tmp_path / "spade.onnx", "x86-onnxruntime", tmp_path / "b", precision="int8",
                   calibration=str(tmp_path / "cal.npz"), calibration_count=32, graph_options=shapes)
    assert result.fidelity["inputs_from"] == "rows 32..39 of cal.npz"
    feeds, _ = reference.load(tmp_path / "b", result.manifest)
    np.testing.assert_array_equal(feeds["seg"][0], seg[32])
    short = build(tmp_path / "spade.onnx", "x86-onnxruntime", tmp_path / "c", precision="int8",
                  calibration=str(tmp_path / "cal.npz"), calibration_count=36, graph_options=shapes)  # 44 > 40
    assert short.fidelity["inputs_from"] == "rows 32..39 of cal.npz, calibration took them too: the file holds no more"
    caplog.set_level(logging.WARNING)  # fp32 calibrates nothing: the file's first rows, and the warning says so
    fp32 = build(tmp_path / "spade.onnx", "x86-onnxruntime", tmp_path / "d", calibration=str(tmp_path / "cal.npz"),
                 graph_options=shapes)
    assert fp32.fidelity["inputs_from"] == "rows 0..7 of cal.npz"
    assert "is not used to calibrate: a fp32 build without pruning does not calibrate; its first rows are the " \
        "held-out inputs" in caplog.text
    build(tmp_path / "spade.onnx", "x86-onnxruntime", tmp_path / "e", calibration_count=5,
          calibration_method="entropy", graph_options=shapes)  # were dropped without a word
    assert "--calibration-count 5, --calibration-method entropy: not used, a fp32 build without pruning does not " \
        "calibrate" in caplog.text


def test_a_mac_target_undershot_by_channel_steps_is_explained(tmp_path):
    """--prune-to-macs landed 20% under its target with nothing said: groups keep multiples of 8 channels."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.2, (32, 3, 3, 3)).astype(np.float32), "wa"),
             numpy_helper.from_array(rng.normal(0, 0.2, (3, 32, 3, 3)).astype(np.float32), "wb")]
    g = helper.make_graph([helper.make_node("Conv", ["x", "wa"], ["a"], name="a", pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["a"], ["r"]),
                           helper.make_node("Conv", ["r", "wb"], ["c"], name="b", pads=[1, 1, 1, 1]),
                           helper.make_node("Sigmoid", ["c"], ["y"])], "wide",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    full = 2 * 16 * 16 * 3 * 32 * 9  # 32 channels: the next steps keep 24 (75% of the MACs) and 16 (50%)
    result = build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b", prune_to_macs=int(full * 0.6))
    assert result.manifest["passes"]["prune"]["macs"]["after"] == full // 2
    text = render_build_report(result.manifest, tmp_path / "b")
    assert re.search(rf"under the {full * 0.6 / 1e6:.2f} M target: the closest above it, \d+%, needs "
                     rf"{full * 0.75 / 1e6:.2f} M \(groups of 32\+ channels keep a multiple of 8", text), text
    # int8 lowers the to-RGB conv to a strided form with more MACs: the budget holds for what ships
    result = build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "q", precision="int8",
                   prune_to_macs=int(full * 0.8))
    assert result.manifest["passes"]["lowered"]["narrow_conv_strided"]
    assert result.manifest["model"]["macs"] <= full * 0.8
    search = result.manifest["passes"]["prune"]["search"]
    assert search["counted"].startswith("as compiled") and search["compiled_macs"]["after"] <= full * 0.8


def test_a_source_that_computes_nan_is_refused_before_anything_is_built(tmp_path):
    """A log of values that reach below 0 (NaN in a quarter of the output) was built and shipped with a bundle
    that failed its own self-test; NaN everywhere failed int8 calibration with an internal error."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.5, (3, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Log", ["c"], ["out"])]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "nan.onnx"))
    for precision in ("fp32", "int8"):
        with pytest.raises(BuildError, match=r"nan.onnx: the fp32 source's output 'out' holds NaN (and infinity )?in "
                                             r"\d+% of its values on the 8 held-out inputs .*Fix the model"):
            build(tmp_path / "nan.onnx", "x86-onnxruntime", tmp_path / precision, precision=precision)
        assert not (tmp_path / precision).exists()


@pytest.mark.parametrize("scales, refused", [([1, 1, 0.5, 0.5], True), ([1, 1, 2, 2], False)])
def test_openvino_refuses_an_antialiased_downscale(tmp_path, scales, refused):
    """OpenVINO converts Resize(antialias=1) but filters a downscale differently (0.06 max-abs off ONNX Runtime
    and PyTorch): inspect said supported, the fp32 build asked to report the model, the int8 one blamed int8."""
    from onnx import TensorProto, helper, numpy_helper

    from edgegen.backends.openvino.compile import unsupported_nodes
    from edgegen import targets
    from edgegen.graph import Graph

    inits = [numpy_helper.from_array(np.array(scales, np.float32), "scales")]
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["out"], name="shrink", mode="linear", antialias=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "H", "W"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "aa.onnx"))
    found = unsupported_nodes(Graph.load(tmp_path / "aa.onnx"), targets.load("x86-openvino"))
    assert [(name, op) for name, op, _ in found] == ([("shrink", "Resize")] if refused else [])


@pytest.mark.parametrize("exclude_outside, refused", [(1, True), (0, False)])
def test_openvino_refuses_a_cubic_resize_excluding_outside_taps(tmp_path, exclude_outside, refused):
    """OpenVINO computes exclude_outside=1 as 0: a detailed image's border pixels came back 2-3 levels off while the
    build, on smooth held-out inputs, reported 1e-7 and shipped the bundle."""
    from onnx import TensorProto, helper, numpy_helper

    from edgegen import targets
    from edgegen.backends.openvino.compile import unsupported_nodes
    from edgegen.graph import Graph

    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["out"], name="up_cubic", mode="cubic",
                              exclude_outside=exclude_outside)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "cubic.onnx"))
    found = unsupported_nodes(Graph.load(tmp_path / "cubic.onnx"), targets.load("x86-openvino"))
    assert [(name, op) for name, op, _ in found] == ([("up_cubic", "Resize")] if refused else [])
    assert not refused or "exclude_outside=0" in found[0][2]


def test_int8_that_misses_the_floor_after_pruning_backs_off_the_ratio(tmp_path, monkeypatch):
    """--prune R --min-psnr F in int8: the prune search spent the floor in fp32 (it chose R), int8 then missed
    it and the build failed, although a smaller ratio met F in int8. Here int8 meets the floor only while
    pruning keeps 70% of the MACs: the build backs off to the largest such ratio."""
    import edgegen.build as build_module
    from edgegen.graph import Graph
    from edgegen.passes.floor import FloorNotMet

    model = Path(__file__).parent / "data" / "families" / "dcgan__legacy_dyn.onnx"
    full = sum(c.macs for c in Graph.load(model).node_costs())
    real = build_module._quantize

    def quantize(graph, *args):
        if sum(c.macs for c in graph.node_costs()) < 0.7 * full:
            raise FloorNotMet("int8 misses the floor (this test's rule)")
        return real(graph, *args)

    monkeypatch.setattr(build_module, "_quantize", quantize)
    result = build(model, "x86-onnxruntime", tmp_path / "b", precision="int8", prune=0.6, min_psnr=20)
    pruned = result.manifest["passes"]["prune"]
    tries = pruned["search"]["int8_back_off"]
    assert tries[0] == {"ratio": 0.6, "int8_met": False} and 0 < pruned["ratio"] < 0.6
    assert pruned["macs"]["after"] >= 0.7 * full and {"ratio": pruned["ratio"], "int8_met": True} in tries
    assert all(t["ratio"] <= pruned["ratio"] for t in tries if t["int8_met"])
    larger = round(pruned["ratio"] + 0.05, 2)
    assert larger >= 0.6 or {"ratio": larger, "int8_met": False} in tries  # the next ratio up misses
    with monkeypatch.context() as patch:  # the backend's artifact misses what its QDQ graph met (OpenVINO's can)
        patch.setattr(build_module, "compare", lambda *args: {"psnr_db": 10.0, "ssim": 0.5, "max_abs": 1.0})
        with pytest.raises(BuildError, match=r"below the floor \(PSNR >= 20 dB\)\. .*The prune search chose 60% "
                                             r"against the floor in fp32, spending it: a smaller --prune may meet it"):
            build(model, "x86-onnxruntime", tmp_path / "c", prune=0.6, min_psnr=20)
    monkeypatch.setattr(build_module, "_quantize", lambda *args: (_ for _ in ()).throw(FloorNotMet("misses")))
    with pytest.raises(FloorNotMet, match="int8 misses the floor even without pruning: misses"):
        build(model, "x86-onnxruntime", tmp_path / "c", precision="int8", prune=0.6, min_psnr=20)

    def unpruned_only(graph, *args):
        if sum(c.macs for c in graph.node_costs()) < full:
            raise FloorNotMet("misses")
        return real(graph, *args)

    monkeypatch.setattr(build_module, "_quantize", unpruned_only)
    with pytest.raises(FloorNotMet, match=r"misses The prune search chose 60% in fp32, spending the floor before "
                                          r"int8; no smaller ratio down to \d+% meets it in int8 either, and the "
                                          r"unpruned model meets it in int8: build without --prune"):
        build(model, "x86-onnxruntime", tmp_path / "c", precision="int8", prune=0.6, min_psnr=20)
    assert not (tmp_path / "c").exists()


def test_every_edgegen_error_survives_pickling():
    """A fleet build on Ray pickles a task's exception: one whose constructor takes more than its message
    (SourceRunError, BackendMissedFloor) came back as Ray's UnserializableException, and the fleet stopped as
    an internal fault instead of naming the target that failed."""
    import inspect
    import pickle

    import edgegen.build
    import edgegen.source
    from edgegen.errors import EdgegenError

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    made = [edgegen.source.SourceRunError("Got invalid dimensions", "the source fails"),
            edgegen.build.BackendMissedFloor("misses", "openvino", {"psnr_db": 45.02, "ssim": 0.99},
                                             {"psnr_db": 44.99, "ssim": 0.99})]
    for cls in subclasses(EdgegenError):
        try:
            required = [p for p in inspect.signature(cls.__init__).parameters.values()
                        if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD][1:]  # after self
        except ValueError:  # BaseException's own __init__: the message only
            required = []
        assert len(required) <= 1 or cls in {type(e) for e in made}, f"{cls.__name__}: add one to `made`"
        if cls not in {type(e) for e in made}:
            made.append(cls("the message"))
    for error in made:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error), type(error)


def test_the_fp32_limits_follow_each_outputs_range():
    """1e-3 max-abs on a [0, 255] output is 4e-6 of it: a correct rpi4-litert fp32 build of a `(tanh(x) + 1) *
    127.5` generator was refused at 0.00104. The limit scales with half the range's width past 2; an output with no
    range (a score) keeps 1e-3."""
    from types import SimpleNamespace

    from edgegen import reference
    from edgegen.build import _fp32_drift, _tolerance
    from edgegen.specs import TensorSpec

    image = TensorSpec("image", "float32", [None, 3, 4, 4], "image", range=[0.0, 255.0])
    score = TensorSpec("score", "float32", [None, 1], "score")
    source = SimpleNamespace(outputs=[image, score])
    zeros = {"image": np.zeros((1, 3, 4, 4), np.float32), "score": np.zeros((1, 1), np.float32)}
    drift, limit = _fp32_drift(source, zeros, {**zeros, "image": zeros["image"] + np.float32(0.1)})
    assert drift == pytest.approx(0.1) and limit == pytest.approx(0.1275)
    assert _fp32_drift(source, zeros, {**zeros, "score": zeros["score"] + np.float32(0.002)}) == \
        pytest.approx((0.002, 0.001))
    tolerance = _tolerance(source, "fp32", 200.0, zeros, zeros)
    assert tolerance == {"max_abs": 0.001, "output_max_abs": {"image": pytest.approx(0.1275)}}  # the score: 1e-3
    assert reference.criteria(tolerance, ["image", "score"], {"image"}) == \
        {"image": {"max_abs": pytest.approx(0.1275)}, "score": {"max_abs": 0.001}}


def test_the_held_out_inputs_come_from_a_calibration_folders_other_images(tmp_path, caplog):
    """A folder of the user's pictures calibrated an int8 build, but the build was verified (and a floor searched)
    on smooth synthetic images: a floor the report said held was missed on photos by up to 12 dB. The images
    calibration does not read are the held-out inputs now, the next ones the fresh inputs; a folder holding too
    few leaves the synthetic ones, and an fp32 build is verified on its images."""
    from PIL import Image
    from runtime_models import upscaler_like

    from edgegen import reference
    from edgegen.graph import Graph
    from edgegen.passes.calibration import held_out_images

    onnx.save(upscaler_like(), str(tmp_path / "up.onnx"))
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    result = build(tmp_path / "up.onnx", "x86-onnxruntime", tmp_path / "b", precision="int8", samples=2,
                   calibration=str(folder), calibration_count=6, min_psnr=20.0)
    assert result.fidelity["inputs_from"] == "2 of the 4 images in photos/ calibration did not read"
    assert result.fidelity["fresh"]["inputs_from"] == "2 of the 4 images in photos/ calibration did not read, " \
        "besides the 2 held-out ones"
    feeds, _ = reference.load(tmp_path / "b", result.manifest)
    unread = held_out_images(Graph.load(tmp_path / "up.onnx").inputs, folder, 6, 2)
    np.testing.assert_array_equal(feeds["image"][0], unread.feeds["image"][0])  # 00, 01, 03, 05, 06, 08 calibrate
    fresh = held_out_images(Graph.load(tmp_path / "up.onnx").inputs, folder, 6, 2, skip=2).feeds["image"]
    assert not any(np.array_equal(a, b) for a in fresh for b in unread.feeds["image"])  # they overlapped
    few = build(tmp_path / "up.onnx", "x86-onnxruntime", tmp_path / "c", precision="int8", samples=2,
                calibration=str(folder), calibration_count=9)
    assert "inputs_from" not in few.fidelity
    caplog.set_level(logging.WARNING)
    fp32 = build(tmp_path / "up.onnx", "x86-onnxruntime", tmp_path / "d", samples=2, calibration=str(folder))
    assert fp32.fidelity["inputs_from"] == "2 of the 10 images in photos/ calibration did not read"
    assert "its images are the held-out inputs" in caplog.text
