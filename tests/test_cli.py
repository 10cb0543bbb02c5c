import json
import logging
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from edgegen.build import build
from edgegen.cli import main
from runtime_models import spade_like


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_targets_lists_every_target_with_host_support(capsys):
    code, out, _ = run(capsys, "targets")
    assert code == 0
    for name in ("x86-onnxruntime", "x86-openvino", "jetson-orin-onnxruntime", "intel-npu-openvino"):
        assert name in out
    code, out, _ = run(capsys, "targets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["x86-onnxruntime"]["runs_here"] and not rows["intel-npu-openvino"]["runs_here"]


def test_targets_name_the_precisions_that_do_not_run_here(capsys, monkeypatch):
    """The README's precision table says `edgegen targets` tells whether bf16 runs here (AVX-512-BF16 or AMX);
    it checked each target at its own precision only, so a CPU without bf16 was listed as running it all."""
    from edgegen.backends.openvino import session

    real = session.host_support
    monkeypatch.setattr(session, "host_support", lambda options: (False, "needs bf16 support on CPU (AVX-512-BF16 "
                        "or AMX); this CPU has none") if options.get("precision") == "bf16" else real(options))
    code, out, _ = run(capsys, "targets")
    line = next(line for line in out.splitlines() if line.startswith("x86-openvino "))
    assert code == 0 and "; not bf16: needs bf16 support on CPU (AVX-512-BF16 or AMX)" in line
    code, out, _ = run(capsys, "targets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows["x86-openvino"]["precisions_not_here"]) == {"bf16"}
    assert rows["x86-onnxruntime"]["precisions_not_here"] == {}


def test_inspect_shows_roles_ops_costs_and_support(capsys, cgen_path):
    code, out, _ = run(capsys, "inspect", str(cgen_path), "--nodes")
    assert code == 0
    assert "latent" in out and "10 classes" in out and "range [-1, 1]" in out
    assert "ConvTranspose x1" in out and "MMACs" in out
    assert "x86-openvino               all ops supported" in out
    code, out, _ = run(capsys, "inspect", str(cgen_path), "--json")
    report = json.loads(out)
    assert report["macs"] > 0 and report["targets"]["x86-onnxruntime"]["supported"] and report["batch"] == 1


def test_inspect_says_when_an_image_input_range_is_assumed(capsys):
    """pix2pix: a Tanh output, so the input is taken as [-1, 1] too, which a model trained on [0, 1] is not."""
    from pathlib import Path

    model = str(Path(__file__).parent / "data" / "families" / "pix2pix_unet__legacy_b1.onnx")
    code, out, _ = run(capsys, "inspect", model)
    assert code == 0 and "range [-1, 1] (assumed: the image output's range; --input-range LO,HI if it is not)" in out
    code, out, _ = run(capsys, "inspect", model, "--input-range", "0,1")
    assert code == 0 and "range [0, 1]\n" in out and "assumed" not in out


def test_inspect_at_a_shape_the_model_cannot_run_says_so(capsys):
    """Real-ESRGAN x2 at 37x45 (its pixel unshuffle's Reshape fails to run): inspect printed 0.00 MMACs and
    "all ops supported"."""
    from pathlib import Path

    model = str(Path(__file__).parent / "data" / "families" / "realesrgan_x2__dynamo_hw_dyn.onnx")
    code, out, _ = run(capsys, "inspect", model, "--input-shape", "x=1x3x37x45")
    assert code == 0 and re.search(r"warning the model does not run at input shapes x 1x3x37x45 \(.*Reshape.*\); "
                                   "the costs leave what cannot run at 0", out)
    code, out, _ = run(capsys, "inspect", model, "--input-shape", "x=1x3x38x44")
    assert code == 0 and "warning the model does not run" not in out
    # an extra zero: it was run there (a MemoryError traceback, or 24 GB taken from a shared host)
    code, out, err = run(capsys, "inspect", model, "--input-shape", "x=1x3x100000x100000")
    assert code == 0 and "warning the model was not run at input shapes x 1x3x100000x100000 to check them" in out, err


def test_inspect_says_which_targets_it_could_not_check_for_memory(capsys, cgen_path, monkeypatch):
    """zoo:upscale2x at 30000x30000: LiteRT's resize check built a 13 GB table, an internal error (or the OOM
    killer)."""
    from edgegen.backends.tflite import compile as tflite_compile

    def out_of_memory(graph, target):
        raise MemoryError

    monkeypatch.setattr(tflite_compile, "unsupported_nodes", out_of_memory)
    code, out, _ = run(capsys, "inspect", str(cgen_path), "--json")
    support = json.loads(out)["targets"]
    assert code == 0 and not support["x86-litert"]["checked"] and support["x86-onnxruntime"]["checked"]
    assert "takes more memory than this host has" in support["x86-litert"]["why"]


def test_inspect_gives_the_cost_of_a_fixed_batch_export_at_its_batch(capsys, tmp_path):
    import onnx
    from conftest import conditional_generator

    onnx.save(conditional_generator(batch=4), str(tmp_path / "b4.onnx"))
    code, out, _ = run(capsys, "inspect", str(tmp_path / "b4.onnx"))
    assert code == 0 and "MB activations (batch 4)" in out


def test_costs_are_labelled_with_the_batch_an_input_shape_gives(capsys, tmp_path, cgen_path):
    """--input-shape latent=2x16 and label=2 doubled the MACs under the label "(batch 1)"."""
    _, one, _ = run(capsys, "inspect", str(cgen_path), "--json")
    code, two, _ = run(capsys, "inspect", str(cgen_path), "--input-shape", "latent=2x16", "--input-shape", "label=2", "--json")
    one, two = json.loads(one), json.loads(two)
    assert code == 0 and (one["batch"], two["batch"]) == (1, 2) and two["macs"] == 2 * one["macs"]
    code, out, _ = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"),
                       "--input-shape", "latent=2x16", "--input-shape", "label=2")
    assert code == 0 and re.search(r"cost .* KB \(batch 2\)", out)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["model"]["cost_batch"] == 2
    # the other input left out follows the batch given (it stayed at 1: the model did not run, 0 MACs recorded)
    code, alone, _ = run(capsys, "inspect", str(cgen_path), "--input-shape", "latent=2x16", "--json")
    assert code == 0 and json.loads(alone)["macs"] == two["macs"] and "shape_problem" not in json.loads(alone)
    code, _, err = run(capsys, "inspect", str(cgen_path), "--input-shape", "latent=4x16", "--input-shape", "label=2")
    assert code == 2 and "gives the inputs different batches (label 2, latent 4)" in err


def test_build_then_generate(capsys, tmp_path, cgen_path):
    code, out, err = run(capsys, "build", str(cgen_path), "--target", "x86-onnxruntime", "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert "PSNR" in out
    code, out, err = run(capsys, "generate", str(tmp_path / "b"), "--seed", "3", "--label", "7", "-o",
                         str(tmp_path / "img.png"))
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "img.png")).shape == (8, 8, 3)


def test_build_for_several_targets(capsys, tmp_path, cgen_path):
    code, _, err = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "-t", "x86-openvino",
                       "-o", str(tmp_path / "fleet"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "fleet").iterdir()) == ["x86-onnxruntime", "x86-openvino"]
    one = tmp_path / "fleet" / "x86-openvino"
    before = sorted(p.name for p in one.iterdir())
    code, _, err = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "-t", "x86-openvino", "-o", str(one))
    assert code == 2 and "is a bundle; a build for several targets writes one bundle per target" in err
    assert sorted(p.name for p in one.iterdir()) == before


def test_a_failed_target_does_not_stop_the_fleet_and_is_named(capsys, tmp_path, cgen_path):
    import yaml

    from edgegen import targets

    tiny = yaml.safe_load((targets.TARGETS_DIR / "fpga-sim.yaml").read_text())
    tiny.update(name="tiny-npu", backend_options={**tiny["backend_options"], "act_kb": 1})
    (tmp_path / "tiny-npu.yaml").write_text(yaml.safe_dump(tiny))
    fleet = ["-t", "x86-onnxruntime", "-t", str(tmp_path / "tiny-npu.yaml"), "-t", "x86-openvino"]
    code, out, err = run(capsys, "build", str(cgen_path), *fleet, "--precision", "fp16", "-o", str(tmp_path / "a"))
    assert code == 2 and "target tiny-npu does not offer precision 'fp16'" in err
    assert not (tmp_path / "a").exists()  # refused before anything was built
    code, out, err = run(capsys, "build", str(cgen_path), *fleet, "-o", str(tmp_path / "b"))
    assert code == 2 and "1 of 3 targets failed (built: x86-onnxruntime, x86-openvino)" in err
    assert f"  {tmp_path / 'tiny-npu.yaml'}: target tiny-npu:" in err and "backend_options.act_kb" in err
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["x86-onnxruntime", "x86-openvino"]


def test_bench_with_baseline_writes_json(capsys, caplog, tmp_path, ort_bundle):
    path = tmp_path / "bench.json"
    code, out, err = run(capsys, "bench", str(ort_bundle), "--threads", "1", "--runs", "5", "--baseline",
                         "--json", str(path))
    assert code == 0, err
    result = json.loads(path.read_text())
    bundle_row, base_row = result["rows"]
    assert base_row["subject"].startswith("fp32 source")
    for row in result["rows"]:
        assert row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"] and row["peak_rss_mb"] > 10
    pair = bundle_row["interleaved"]
    assert bundle_row["speedup_vs_baseline"] == pair["speedup"] > 0 and pair["block_runs"] == 5
    assert "vs fp32 ORT" in out
    other = tmp_path / "other.onnx"  # a model of another interface given as --source: was "use --input-shape"
    onnx.save(spade_like(), str(other))
    code, _, err = run(capsys, "bench", str(ort_bundle), "--baseline", "--source", str(other), "--runs", "2")
    assert code == 2 and "is not the model this bundle was built from" in err and "Traceback" not in err
    (tmp_path / "calib.npz").write_bytes(b"PK\x03\x04 not a model")  # the wrong file: was a protobuf traceback
    code, _, err = run(capsys, "bench", str(ort_bundle), "--baseline", "--source", str(tmp_path / "calib.npz"))
    assert code == 2 and "calib.npz: not a readable ONNX file" in err and "Traceback" not in err, err
    # one more input, or another latent size: was taken as the source, then failed with a SourceRunError
    source = onnx.load(json.loads((ort_bundle / "manifest.json").read_text())["model"]["source"])
    extra, narrow = onnx.ModelProto(), onnx.ModelProto()
    extra.CopyFrom(source)
    narrow.CopyFrom(source)
    extra.graph.input.append(onnx.helper.make_tensor_value_info("noise", onnx.TensorProto.FLOAT, ["N", 4]))
    next(i for i in narrow.graph.input if i.name == "latent").type.tensor_type.shape.dim[1].dim_value = 8
    for model in (extra, narrow):
        onnx.save(model, str(other))
        code, _, err = run(capsys, "bench", str(ort_bundle), "--baseline", "--source", str(other), "--runs", "2")
        assert code == 2 and "is not the model this bundle was built from" in err, err
    source.doc_string = "re-exported"  # the same inputs, another file: measured against it, and said so
    onnx.save(source, str(other))
    caplog.set_level(logging.WARNING)
    code, _, err = run(capsys, "bench", str(ort_bundle), "--baseline", "--source", str(other), "--runs", "2")
    assert code == 0 and "is not the file the bundle was built from" in caplog.text, err


def test_bench_baseline_names_a_source_whose_external_data_moved(capsys, tmp_path, cgen_path):
    """The source file was there and unchanged but its .data file moved: onnx's checker text came back as the
    benchmark's failure, instead of where the file belongs."""
    model = onnx.load(str(cgen_path))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    code, _, err = run(capsys, "build", str(tmp_path / "ext.onnx"), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"))
    assert code == 0, err
    (tmp_path / "ext.onnx.data").rename(tmp_path / "moved.data")
    code, _, err = run(capsys, "bench", str(tmp_path / "b"), "--baseline", "--runs", "2")
    assert code == 2 and "its external weight data could not be read" in err and "Keep the .data file next to" in err


def test_verbose_logs_each_step_and_not_the_libraries_notes(capsys, tmp_path, cgen_path):
    """-v logged nothing of edgegen's own steps, only onnxscript's notes on every node it did not fold."""
    import logging

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [logging.StreamHandler(sys.stderr)]  # basicConfig is a no-op once pytest has set handlers
    try:
        code, _, err = run(capsys, "-v", "build", str(cgen_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"))
    finally:
        root.handlers = saved
        logging.getLogger("edgegen").setLevel(logging.NOTSET)
    assert code == 0 and "compile ... (load took" in err and "done (verify took" in err, err
    assert "Skipping constant folding" not in err


def test_zoo_lists_names(capsys):
    code, out, _ = run(capsys, "zoo")
    assert code == 0


@pytest.mark.parametrize("make_args, message", [
    (lambda t, m: ["build", str(t / "not.onnx"), "-t", "x86-onnxruntime", "-o", str(t / "o")], "no such model file"),
    (lambda t, m: ["build", str(m), "-t", "x86-onnxrt", "-o", str(t / "o")], "unknown target 'x86-onnxrt'"),
    (lambda t, m: ["build", str(t / "text.onnx"), "-t", "x86-onnxruntime", "-o", str(t / "o")], "not a readable ONNX"),
    (lambda t, m: ["build", str(t / "cut.onnx"), "-t", "x86-onnxruntime", "-o", str(t / "o")], "cut.onnx"),
    (lambda t, m: ["build", str(m), "-t", "x86-onnxruntime", "-o", str(t / "full")], "holds other files"),
    (lambda t, m: ["build", str(m), "-t", "intel-npu-openvino", "--precision", "fp32", "-o", str(t / "o")],
     "does not offer precision"),
    (lambda t, m: ["build", str(m), "-t", "x86-onnxruntime", "--precompute", str(t / "no.yaml"), "-o", str(t / "o")],
     "no such file or folder; check the path"),  # was found after the whole build, once per target
    (lambda t, m: ["inspect", str(m), "--role", "latent=colour"], "unknown role"),
    (lambda t, m: ["inspect", str(t / "score.onnx"), "--role", "score=image"],
     "cannot be an image: an image output is"),
    (lambda t, m: ["inspect", str(m), "--input-shape", "latent=1x17"], "does not fit"),
    (lambda t, m: ["inspect", str(m), "--input-shape", "latent=1x16", "--input-shape", "latent=2x16"],
     "'latent' is given twice ('1x16' and '2x16')"),  # the last won silently
    (lambda t, m: ["generate", str(t / "nobundle"), "--seed", "1", "-o", str(t / "x.png")], "no such bundle"),
])
def test_bad_input_exits_2_with_one_paragraph_and_writes_nothing(capsys, tmp_path, cgen_path, make_args, message):
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    graph = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["score"], axes=[1, 2, 3], keepdims=0)], "s",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "score.onnx"))
    (tmp_path / "cut.onnx").write_bytes(cgen_path.read_bytes()[:900])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, out, err = run(capsys, *make_args(tmp_path, cgen_path))
    assert code == 2
    assert message in err and "Traceback" not in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_json_report_path_that_is_a_directory_is_refused_before_the_run(capsys, tmp_path):
    for verb in ("emulate", "bench"):
        with pytest.raises(SystemExit) as exit_:
            main([verb, "B", "--json", str(tmp_path)])
        assert exit_.value.code == 2 and "is a directory; give a file name" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["emulate", "B", "--runs", "0"], ["verify", "B", "--runs", "-1"],
                                  ["bench", "B", "--runs", "0"], ["bench", "B", "--batch", "-3"],
                                  ["bench", "B", "--warmup", "-1"], ["generate", "B", "-o", "x.png", "--threads", "0"],
                                  ["build", "M", "-t", "T", "-o", "O", "--samples", "0"],
                                  ["precompute", "B", "R", "--workers", "0"]])
def test_counts_out_of_range_are_usage_errors(capsys, argv):
    """--runs 0 gave emulate a memory-ceiling FAIL, verify and bench a traceback; --batch -3 a numpy error."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and f"argument {argv[-2]}: {argv[-1]} is out of range; use >=" in capsys.readouterr().err


def test_generate_errors(capsys, tmp_path, ort_bundle):
    code, _, err = run(capsys, "generate", str(ort_bundle), "--seed", "1", "--label", "99", "-o", str(tmp_path / "x.png"))
    assert code == 2 and "label 99 is out of range" in err and not (tmp_path / "x.png").exists()
    code, _, err = run(capsys, "generate", str(ort_bundle), "--seed", "1", "--label", "1", "-o", str(tmp_path / "x.xyz"))
    assert code == 2 and "unknown image file extension" in err


def test_a_mac_count_that_is_not_a_finite_number_is_a_usage_error(capsys, tmp_path, cgen_path):
    for text in ("inf", "1e400", "lots"):
        with pytest.raises(SystemExit) as exit_info:
            main(["build", str(cgen_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"), "--prune-to-macs", text])
        assert exit_info.value.code == 2 and f"{text!r} is not a count like 50M" in capsys.readouterr().err


def test_bench_runs_a_fixed_batch_export_at_its_batch(capsys, tmp_path):
    import onnx
    from conftest import conditional_generator

    from edgegen.build import build

    onnx.save(conditional_generator(batch=4), str(tmp_path / "b4.onnx"))
    build(tmp_path / "b4.onnx", "x86-onnxruntime", tmp_path / "b")
    code, out, err = run(capsys, "bench", str(tmp_path / "b"), "--threads", "1", "--runs", "3", "--baseline",
                         "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["batch"] for r in rows] == [4, 4] and rows[0]["images_per_s"] == pytest.approx(4e3 / rows[0]["p50_ms"], rel=0.01)
    code, _, err = run(capsys, "bench", str(tmp_path / "b"), "--batch", "2", "--runs", "3")
    assert code == 2 and "exported with a fixed batch of 4; bench it at --batch 4" in err


def test_a_medium_that_refuses_writes_is_a_user_error_not_a_traceback(capsys, tmp_path, cgen_path, monkeypatch):
    import errno

    from edgegen import bundle

    def read_only(out):
        raise OSError(errno.EROFS, "Read-only file system", str(out.parent / ".b.tmp"))

    monkeypatch.setattr(bundle, "staging_dir", read_only)
    code, _, err = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"))
    assert code == 2 and f"edgegen: error: {tmp_path / '.b.tmp'}: Read-only file system. Choose a path on a writable" in err
    assert "Traceback" not in err and not (tmp_path / "b").exists()

    def full(staging, manifest):  # a file object's write (onnx.save's, the pack's) names no file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.undo()
    monkeypatch.setattr(bundle, "write_manifest", full)
    code, _, err = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"))
    assert code == 2 and f"edgegen: error: writing {tmp_path / 'b'}: No space left on device. Free space" in err
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b*"))

    def denied(staging, manifest):
        raise OSError(errno.EACCES, "Permission denied", str(tmp_path / "b" / "manifest.json"))

    monkeypatch.setattr(bundle, "write_manifest", denied)
    code, _, err = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"))
    assert code == 2 and "Permission denied. Fix the permissions (or choose another path)" in err
    assert "Free space" not in err


def test_an_output_path_through_a_file_is_a_user_error_not_a_traceback(capsys, tmp_path, cgen_path):
    (tmp_path / "picture.png").write_bytes(b"mine")
    build(cgen_path, "x86-onnxruntime", tmp_path / "b")
    for command in (["build", str(cgen_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "picture.png" / "b")],
                    ["generate", str(tmp_path / "b"), "--seed", "1", "--label", "2", "-o",
                     str(tmp_path / "picture.png" / "x.png")]):
        code, _, err = run(capsys, *command)
        assert code == 2 and f"{tmp_path / 'picture.png'}; a directory on that path is a file" in err, err
        assert "Traceback" not in err
    assert (tmp_path / "picture.png").read_bytes() == b"mine"


def test_a_calibration_count_beyond_memory_is_refused_before_allocating(capsys, tmp_path, cgen_path):
    code, _, err = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "--precision", "int8",
                       "--calibration-count", "1000000000", "-o", str(tmp_path / "b"))
    assert code == 2 and "--calibration-count 1000000000: calibration holds every sample and what it collects " \
                         "from it in memory" in err
    assert "use at most" in err and not (tmp_path / "b").exists()
    # a count whose inputs fit but whose activations, which calibration collects too, do not (it was accepted
    # and calibration died of bad_alloc)
    from edgegen.graph import Graph
    from edgegen.inputs import sample_feeds
    from edgegen.host_memory import MEMORY_SHARE, available_memory

    graph = Graph.load(cgen_path)
    inputs = sum(v.nbytes for v in sample_feeds(graph.inputs, [0]).values())
    activations = sum(c.activation_bytes for c in graph.node_costs())
    count = int(available_memory() * MEMORY_SHARE / (inputs + activations / 2))
    assert count * inputs < available_memory() * MEMORY_SHARE / 2
    code, _, err = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "--precision", "int8",
                       "--calibration-count", str(count), "-o", str(tmp_path / "b"))
    assert code == 2 and "use at most" in err and not (tmp_path / "b").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["build", str(cgen_path), "-t", "x86-onnxruntime", "--calibration-count", "-4", "-o", str(tmp_path / "b")])
    assert exit_.value.code == 2 and "--calibration-count: -4 is out of range; use >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the last of two values won silently
        main(["build", str(cgen_path), "-t", "x86-onnxruntime", "--precision", "int8", "--precision", "fp32",
              "-o", str(tmp_path / "b")])
    assert exit_.value.code == 2 and "--precision is given twice (int8 and fp32)" in capsys.readouterr().err
    code, _, err = run(capsys, "build", str(cgen_path), "-t", "x86-onnxruntime", "--precision", "int8",
                       "--calibration-count", "10008", "-o", str(tmp_path / "b"))  # was calibrated on the held-out 8
    assert code == 2 and "would reach the held-out inputs' seeds (from 10000)" in err


def test_a_range_starting_below_zero_is_taken_as_the_options_value(capsys, tmp_path, cgen_path):
    """`--output-range -1,1` as the build's own range warning writes it (argparse read -1,1 as an option)."""
    assert main(["inspect", str(cgen_path), "--output-range", "-2.5,1.5", "--input-range", "-1e-1,1"]) == 0
    out = capsys.readouterr().out
    assert "range [-2.5, 1.5]" in out
    for flag in ("--output-range", "--input-range"):  # 0,inf scaled every pixel to 0 and scored 200 dB
        assert main(["inspect", str(cgen_path), flag, "0,inf"]) == 2
        assert "range '0,inf' must be finite" in capsys.readouterr().err


def test_a_sigterm_whose_exception_python_discarded_still_stops_at_the_next_progress_step():
    """A signal handler's exception raised while a __del__ runs is printed as "Exception ignored" and lost;
    the work must still stop, not finish and publish (a flaky precompute that exited 0 after SIGTERM)."""
    from edgegen import cli

    try:
        with pytest.raises(cli._Terminated):
            cli._on_sigterm(15, None)
        with pytest.raises(cli._Terminated):  # as if that first exception had been discarded
            cli._progress("precompute", 16, 200000)
    finally:
        cli._TERMINATED.clear()


def test_a_process_forked_from_the_cli_gets_the_default_sigterm_action(tmp_path):
    """OpenVINO's telemetry posts from a forked child; blocked in C, it never ran the CLI's Python SIGTERM
    handler it inherited, so terminate() could not end it and a build waited for it at exit forever."""
    script = ("import multiprocessing, signal, sys\n"
              "from edgegen import cli\n"
              "signal.signal(signal.SIGTERM, cli._on_sigterm)\n"
              "def child(conn):\n"
              "    conn.send(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n"
              "parent, child_end = multiprocessing.Pipe()\n"
              "p = multiprocessing.get_context('fork').Process(target=child, args=(child_end,))\n"
              "p.start(); p.join()\n"
              "print(parent.recv(), signal.getsignal(signal.SIGTERM) is cli._on_sigterm)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "True"], done.stderr


def test_generate_takes_a_float_map_by_name_from_a_npy_file(tmp_path, capsys):
    """--input took image files only: a float map input was refused with numpy advice (.astype)."""
    onnx.save(spade_like(), str(tmp_path / "spade.onnx"))
    build(tmp_path / "spade.onnx", "x86-onnxruntime", tmp_path / "b",
          graph_options={"input_shapes": {"image": [1, 3, 16, 16], "seg": [1, 2, 16, 16]}})
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "in.png")
    np.save(tmp_path / "seg.npy", np.ones((2, 8, 8), np.float32))
    assert main(["generate", str(tmp_path / "b"), "--image", str(tmp_path / "in.png"), "--input",
                 f"seg={tmp_path / 'seg.npy'}", "-o", str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (8, 8)
    assert main(["generate", str(tmp_path / "b"), "--image", str(tmp_path / "in.png"), "--input",
                 f"seg={tmp_path / 'in.png'}", "-o", str(tmp_path / "x.png")]) == 2
    assert "'seg' is a latent input (float32 2x16x16), not an image: give it as a .npy array" in capsys.readouterr().err
    np.save(tmp_path / "seg8.npy", np.ones((2, 8, 8), np.uint8))  # a .npy goes to the runtime's own checks
    assert main(["generate", str(tmp_path / "b"), "--image", str(tmp_path / "in.png"), "--input",
                 f"seg={tmp_path / 'seg8.npy'}", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "not an image" not in err and "uint8" in err and "float32" in err, err


def test_a_stop_that_arrives_wrapped_by_a_c_extension_exits_as_a_stop(capsys, monkeypatch):
    """SIGTERM during a Ray fleet build arrived as SystemError ("returned a result with an exception set") from
    Ray's wait and ended in an internal error (exit 1) instead of `edgegen: terminated` (143)."""
    import edgegen.cli as cli

    def wait_interrupted(args):
        try:
            raise cli._Terminated()
        except cli._Terminated as exc:
            raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set") from exc

    monkeypatch.setattr(cli, "_zoo", wait_interrupted)
    assert main(["zoo"]) == 143 and "edgegen: terminated" in capsys.readouterr().err


def test_a_stop_after_the_command_has_finished_is_ignored():
    """Ctrl-C just after a build published its bundle (while the interpreter joined its threads) ended the
    process by SIGINT (130, no message): a CI job read "not built" over a bundle that had been replaced."""
    code = ("import os, signal, sys, threading, time; import edgegen.cli as cli\n"
            "def done(args):\n"
            "    threading.Thread(target=time.sleep, args=(0.5,)).start()  # joined while the interpreter exits\n"
            "    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
            "    return 0\n"
            "cli._zoo = done\nsys.argv = ['edgegen', 'zoo']\ncli.main_exit()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "KeyboardInterrupt" not in done.stderr, done.stderr


def test_generate_keeps_an_rgba_pictures_alpha_and_refuses_a_jpeg_of_four_channels(capsys, tmp_path):
    """A 4-channel image model: generate --image read the picture as RGB ('image has 3 channels'), and -o out.jpg
    of its RGBA output ended in Pillow's 'cannot write mode RGBA as JPEG' traceback. An .npz given as an .npy
    input was an AttributeError traceback."""
    g = onnx.helper.make_graph([onnx.helper.make_node("Sigmoid", ["rgba"], ["out"])], "rgba",
                               [onnx.helper.make_tensor_value_info("rgba", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
                               [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 4, 8, 8])])
    onnx.save(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    assert main(["build", str(tmp_path / "m.onnx"), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"),
                 "--role", "rgba=image"]) == 0, capsys.readouterr().err
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8), "RGBA").save(tmp_path / "in.png")
    code, out, err = run(capsys, "generate", str(tmp_path / "b"), "--image", str(tmp_path / "in.png"), "-o",
                         str(tmp_path / "out.png"))
    assert code == 0, err
    assert Image.open(tmp_path / "out.png").mode == "RGBA"
    code, _, err = run(capsys, "generate", str(tmp_path / "b"), "--image", str(tmp_path / "in.png"), "-o",
                       str(tmp_path / "out.jpg"))
    assert code == 2 and "JPEG holds no alpha channel" in err and not (tmp_path / "out.jpg").exists(), err
    np.savez(tmp_path / "x.npy", rgba=np.zeros((4, 8, 8), np.float32))  # numpy names it x.npy.npz
    (tmp_path / "x.npy.npz").rename(tmp_path / "x.npy")
    code, _, err = run(capsys, "generate", str(tmp_path / "b"), "--input", f"rgba={tmp_path / 'x.npy'}", "-o",
                       str(tmp_path / "o2.png"))
    assert code == 2 and "an .npz archive of 1 array(s), not one array" in err, err
