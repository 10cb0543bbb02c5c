import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgegen.build import build
from edgegen.errors import BundleError, RequestError, first_line
from edgegen.inputs import latent_from_seed, sample_feeds
from edgegen.runtime import Generator, to_pil
from runtime_models import spade_like, unet_like


@pytest.fixture(params=["ort_bundle", "ov_bundle"])
def gen(request):
    return Generator.open(request.getfixturevalue(request.param))


def test_generate_is_deterministic_uint8_hwc(gen):
    a = gen.generate(seed=3, label=7)
    assert a.dtype == np.uint8 and a.shape == (8, 8, 3)
    np.testing.assert_array_equal(a, gen.generate(seed=3, label=7))
    assert not np.array_equal(a, gen.generate(seed=4, label=7))
    assert not np.array_equal(a, gen.generate(seed=3, label=1))


def test_seed_gives_pcg64_latent_and_matches_explicit_arrays(gen):
    latent = latent_from_seed(3, [16])
    np.testing.assert_array_equal(latent, np.random.Generator(np.random.PCG64(3)).standard_normal(16, np.float32))
    explicit = gen.generate(latent=latent, label=7)
    np.testing.assert_array_equal(explicit, gen.generate(seed=3, label=7))


def test_batch_equals_single_requests(gen):
    requests = [{"seed": s, "label": (s * 3) % 10} for s in range(5)]
    batch = gen.generate_batch(requests)
    assert batch.shape == (5, 8, 8, 3)
    for request, image in zip(requests, batch):
        np.testing.assert_array_equal(image, gen.generate(**request))


def test_run_matches_reference_and_self_test_passes(gen):
    report = gen.self_test()
    assert report["pass"] and report["outputs"]["image"]["max_abs"] <= 1e-3


def test_pil_helper(gen):
    img = to_pil(gen.generate(seed=1, label=2))
    assert img.size == (8, 8) and img.mode == "RGB"


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": 1, "label": 10}, "label 10 is out of range .* 0..9"),
    ({"seed": 1, "label": -1}, "label -1 is out of range"),
    ({"seed": 1}, "needs a label"),
    ({"label": 1}, "needs a seed"),
    ({"label": 1, "latent": np.zeros(15, np.float32)}, "'latent' must have shape 16"),
    ({"label": 1, "latent": np.zeros(16, np.float64)}, "'latent' must be float32, got float64"),
    ({"seed": 1, "label": 1, "latent": np.zeros(16, np.float32)}, "gives a seed and an array for every latent "
                                                                   r"input \(latent\): the seed would be unused"),
    ({"seed": 1, "label": 1, "style": 3}, "unknown key"),
])
def test_bad_requests_are_clear_errors(gen, kwargs, message):
    with pytest.raises(RequestError, match=message):
        gen.generate(**kwargs)


def test_run_checks_batched_arrays(gen):
    with pytest.raises(RequestError, match="with the batch axis"):
        gen.run({"latent": np.zeros(16, np.float32), "label": np.zeros(1, np.int64)})
    with pytest.raises(RequestError, match="needs exactly the inputs"):
        gen.run({"latent": np.zeros((1, 16), np.float32)})
    out = gen.run({"latent": np.zeros((2, 16), np.float32), "label": np.array([1, 2])})
    assert out["image"].shape == (2, 3, 8, 8)


def _tampered_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    """A copy of a bundle with one byte of its model flipped."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    return copy


def test_tampered_bundle_is_refused_naming_the_file(tmp_path, ort_bundle):
    copy = _tampered_copy(ort_bundle, tmp_path)
    with pytest.raises(BundleError, match="'model.onnx' does not match its sha256"):
        Generator.open(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match="'model.onnx' listed in the manifest is missing"):
        Generator.open(copy)


def test_a_manifest_that_stops_listing_a_file_does_not_vouch_for_it(tmp_path, ort_bundle):
    """Dropping the modified model's entry (or the whole list) from manifest.json passed verify and emulate."""
    from edgegen.cli import main

    copy = _tampered_copy(ort_bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["model.onnx"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'model.onnx' is not listed with its sha256 in manifest.json"):
        Generator.open(copy)
    assert main(["verify", str(copy)]) == 3  # a failed check
    for key in ("files", "target"):
        del manifest[key]
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=f"manifest.json: has no {key}"):
            Generator.open(copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no such bundle"):
        Generator.open(tmp_path / "missing")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Generator.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Generator.open(tmp_path)


def test_runtime_imports_only_numpy_and_its_backend(ort_bundle):
    code = (
        "import sys, json\n"
        "from edgegen.runtime import Generator\n"
        f"g = Generator.open({str(ort_bundle)!r})\n"
        "g.generate(seed=1, label=2)\n"
        "print(json.dumps(sorted(m for m in sys.modules)))\n"
    )
    mods = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1])
    forbidden = ("onnx", "openvino", "yaml", "tflite_runtime", "ai_edge_litert", "tensorflow", "PIL", "onnxscript")
    assert "onnxruntime" in mods
    assert not [m for m in mods if m.split(".")[0] in forbidden]


def test_run_checks_label_range(gen):
    with pytest.raises(RequestError, match="label 12 is out of range"):
        gen.run({"latent": np.zeros((2, 16), np.float32), "label": np.array([1, 12])})


def test_missing_backend_package_says_how_to_install(ov_bundle):
    code = (
        "import sys\n"
        "sys.modules['openvino'] = None  # as if it were not installed\n"
        "from edgegen.runtime import Generator\n"
        "from edgegen.errors import BackendUnavailableError\n"
        "try:\n"
        f"    Generator.open({str(ov_bundle)!r})\n"
        "except BackendUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install openvino" in out and "pip install -e '.[openvino]'" in out


def test_a_checked_request_is_remembered_by_value_and_type(gen):
    """A repeat of a plain request skips parsing (same key, same pixels); one that differs only in a value's
    type (True for 1, 1.0 for 1) is still checked and refused."""
    first = gen.render([{"seed": 1, "label": 1}])[0].pixels
    assert gen.key_of({"seed": 1, "label": 1}) == gen.key_of({"label": 1, "seed": 1})
    assert np.array_equal(gen.render([{"seed": 1, "label": 1}])[0].pixels, first)
    for bad in ({"seed": True, "label": 1}, {"seed": 1.0, "label": 1}, {"seed": 1, "label": 1, "size": "8"}):
        with pytest.raises(RequestError):
            gen.generate(**bad)
    with pytest.raises(RequestError, match="label 10 is out of range"):
        gen.generate(seed=1, label=10)


def test_a_backend_returning_too_few_images_is_an_error_not_a_crash(ort_bundle, monkeypatch):
    gen = Generator.open(ort_bundle, cache_bytes=0)
    real = gen.parts.run
    monkeypatch.setattr(gen.parts, "run", lambda name, feeds: {k: v[:0] for k, v in real(name, feeds).items()})
    with pytest.raises(BundleError, match=r"backend returned 0 image\(s\) for 2 request\(s\)"):
        gen.generate_batch([{"seed": 1, "label": 0}, {"seed": 2, "label": 1}])
    assert gen.stats()["served"].get("computed", 0) == 0


def test_nan_from_the_backend_is_an_error_not_a_black_image(ort_bundle, monkeypatch):
    """NaN outputs were cast to 0: a black picture served as the answer."""
    gen = Generator.open(ort_bundle, cache_bytes=0)
    real = gen.parts.run

    def overflowing(name, feeds):
        return {k: np.where(np.arange(v.size).reshape(v.shape) % 7 == 0, np.nan, v)
                for k, v in real(name, feeds).items()}

    monkeypatch.setattr(gen.parts, "run", overflowing)
    with pytest.raises(BundleError, match=r"the model gave NaN or infinity in \d+ of the \d+ output values"):
        gen.generate(seed=1, label=0)
    assert gen.stats()["served"].get("computed", 0) == 0


def test_a_request_asked_twice_in_one_call_is_computed_once(ort_bundle, monkeypatch):
    """Concurrent clients asking for the same picture (merged into one call by the batcher) cost one image's
    work; each caller still gets an array of its own."""
    gen = Generator.open(ort_bundle, cache_bytes=0)
    real, batches = gen.parts.run, []
    monkeypatch.setattr(gen.parts, "run", lambda name, feeds: batches.append(len(next(iter(feeds.values()))))
                        or real(name, feeds))
    same, other = {"seed": 5, "label": 2}, {"seed": 6, "label": 2}
    served = gen.render([same, other, same])
    assert batches == [2]
    np.testing.assert_array_equal(served[0].pixels, served[2].pixels)
    assert served[0].pixels is not served[2].pixels and not np.shares_memory(served[0].pixels, served[2].pixels)
    np.testing.assert_array_equal(served[0].pixels, Generator.open(ort_bundle, cache_bytes=0).generate(**same))
    assert [r.served_by for r in served] == ["computed"] * 3


def one_hot_generator() -> onnx.ModelProto:
    """z [N,16] and a float one-hot class vector [N,10], concatenated before the first layer (a cGAN
    as often written: `torch.cat([z, onehot], 1)`) -> image [N,3,4,4]."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
               for name, shape in (("w", (26, 48)), ("b", (48,)))]
    weights.append(numpy_helper.from_array(np.array([-1, 3, 4, 4], np.int64), "shape"))
    nodes = [helper.make_node("Concat", ["z", "onehot"], ["zc"], axis=1),
             helper.make_node("Gemm", ["zc", "w", "b"], ["fc"]),
             helper.make_node("Reshape", ["fc", "shape"], ["map"]),
             helper.make_node("Tanh", ["map"], ["image"])]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16]),
              helper.make_tensor_value_info("onehot", TensorProto.FLOAT, ["N", 10])]
    graph = helper.make_graph(nodes, "onehot_cgan", inputs,
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_float_one_hot_input_takes_labels(tmp_path):
    onnx.save(one_hot_generator(), str(tmp_path / "onehot.onnx"))
    build(tmp_path / "onehot.onnx", "x86-onnxruntime", tmp_path / "b")
    gen = Generator.open(tmp_path / "b")
    spec = next(s for s in gen.inputs if s.name == "onehot")
    assert (spec.role, spec.num_classes, spec.one_hot) == ("label", 10, True)
    vector = np.zeros(10, np.float32)
    vector[7] = 1
    np.testing.assert_array_equal(gen.generate(seed=3, label=7), gen.generate(seed=3, onehot=vector))
    assert not np.array_equal(gen.generate(seed=3, label=7), gen.generate(seed=3, label=2))
    with pytest.raises(RequestError, match=r"label 10 is out of range .* 0..9"):
        gen.generate(seed=3, label=10)
    from edgegen.passes.calibration import load_calibration  # noise given as one-hot rows: refused, not fitted to

    noise = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    np.savez(tmp_path / "noise.npz", z=np.zeros((4, 16), np.float32), onehot=noise)
    with pytest.raises(RequestError, match=r"noise\.npz: array 'onehot' holds values outside \[0, 1\]"):
        load_calibration(gen.inputs, str(tmp_path / "noise.npz"), 4)


def test_a_field_no_input_takes_is_refused(gen, tmp_path):
    with pytest.raises(RequestError, match="gives an image, but this model has no image input"):
        gen.generate(seed=1, label=1, image=np.zeros((8, 8, 3), np.uint8))
    onnx.save(one_hot_generator(), str(tmp_path / "m.onnx"))
    build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b", graph_options={"roles": {"onehot": "condition"}})
    with pytest.raises(RequestError, match=r"gives a label, but this model has no label input \(its inputs: z "
                                           r"\(latent\), onehot \(condition\)\)"):
        Generator.open(tmp_path / "b").generate(seed=1, label=3, onehot=np.zeros(10, np.float32))


@pytest.mark.parametrize("target", ["x86-onnxruntime", "x86-openvino"])
def test_an_image_size_the_network_cannot_take_is_a_request_error(tmp_path, capfd, target):
    """The backend's reason is its first line with content (OpenVINO's starts with source locations), and
    the request logs nothing (ONNX Runtime's session would print an ExecuteKernel error line)."""
    onnx.save(unet_like(), str(tmp_path / "unet.onnx"))
    build(tmp_path / "unet.onnx", target, tmp_path / "b")
    gen = Generator.open(tmp_path / "b")
    assert gen.generate(image=np.zeros((12, 20, 3), np.uint8)).shape == (12, 20, 3)
    capfd.readouterr()
    with pytest.raises(RequestError, match=r"cannot run at input shape 'image' 3x15x15 .*verified at 'image' "
                                           r"3x16x16.*multiples of its total stride") as err:
        gen.generate(image=np.zeros((15, 15, 3), np.uint8))
    reason = str(err.value).split(" backend: ")[1]
    assert "Concat" in reason and not reason.startswith("Exception from"), reason
    assert capfd.readouterr().err == ""
    with pytest.raises(RequestError, match="cannot run at input shape 'image' 3x15x16"):
        gen.run({"image": np.zeros((1, 3, 15, 16), np.float32)})
    # the sizes it takes still run (OpenVINO's compiled model failed every later shape after one it refused)
    for size in [(12, 20), (16, 16), (24, 8)]:
        assert gen.generate(image=np.full(size + (3,), 9, np.uint8)).shape == size + (3,)
    with pytest.raises(RequestError, match="image is 0x0 pixels"):
        gen.generate(image=np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(RequestError, match="request 0: image must be pixels .* got a str"):
        gen.generate(image="cat.png")
    with pytest.raises(RequestError, match="edit\\(\\) needs the previous image"):
        gen.edit(None, np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(RequestError, match="built without --roi; rebuild it with `--roi` .*cannot offer regions"):
        gen.generate(image=np.zeros((16, 16, 3), np.uint8), roi=(0, 0, 8, 8))


def test_first_line_skips_source_locations():
    exc = RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:224:\n"
                       "Exception from src/plugins/intel_cpu/src/node.cpp:794:\n\n"
                       "[CPU] Concat node with name '/Concat'\n"
                       "Shape inference input shapes {{1,64,14,10},{1,64,15,11}}\n")
    assert first_line(exc) == "[CPU] Concat node with name '/Concat'"
    assert first_line(RuntimeError("Exception from a.cpp:1:")) == "Exception from a.cpp:1:"
    assert first_line(RuntimeError("  ")) == "RuntimeError"


def test_run_refuses_inputs_of_different_batch_sizes(gen):
    with pytest.raises(RequestError, match=r"different batch sizes \{'latent': 2, 'label': 3\}"):
        gen.run({"latent": np.zeros((2, 16), np.float32), "label": np.array([1, 2, 3])})
    with pytest.raises(RequestError, match="input 'latent' holds NaN or infinite values"):  # an image came back
        gen.run({"latent": np.full((1, 16), np.nan, np.float32), "label": np.array([1])})
    with pytest.raises(RequestError, match=r"hold no samples \(a batch of 0\)"):  # each backend failed its own way
        gen.run({"latent": np.zeros((0, 16), np.float32), "label": np.zeros(0, np.int64)})


def test_one_picture_keys_alike_whatever_its_mode(tmp_path):
    """A grey model's precomputed or cached result is found for the grey image, its RGB copy or a PIL image."""
    from PIL import Image

    w = numpy_helper.from_array(np.full((1, 1, 3, 3), 0.1, np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Sigmoid", ["c"], ["y"])], "grey",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 16, 16])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "grey.onnx"))
    build(tmp_path / "grey.onnx", "x86-onnxruntime", tmp_path / "b")
    gen = Generator.open(tmp_path / "b")
    grey = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    first = gen.render([{"image": grey}])[0]
    assert first.served_by == "computed"
    for same in (np.repeat(grey[:, :, None], 3, axis=2), Image.fromarray(grey), Image.fromarray(grey).convert("RGB")):
        again = gen.render([{"image": same}])[0]
        assert again.served_by == "lru"
        np.testing.assert_array_equal(again.pixels, first.pixels)


def test_a_pil_image_of_any_mode_is_the_picture_an_image_file_of_it_gives(tmp_path):
    """A palette image was fed as its palette indices, CMYK as C, M, Y for R, G, B; 16-bit grey and
    1-bit images were refused: each is now read as an image file of it is."""
    from PIL import Image

    from edgegen.image_files import read_image

    build("tests/data/families/espcn__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "b")  # a grey model
    rgb = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pictures = {"P": Image.fromarray(rgb).convert("P"), "CMYK": Image.fromarray(rgb).convert("CMYK"),
                "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "1": Image.fromarray(rgb[..., 0] > 128),
                "LA": Image.fromarray(rgb).convert("LA")}
    for mode, picture in pictures.items():
        if mode == "CMYK":  # PNG holds no CMYK; a CMYK JPEG is read through the same conversion
            from_file = np.asarray(picture.convert("RGB"))
        else:
            picture.save(tmp_path / "p.png")
            from_file = read_image(tmp_path / "p.png")
        gen = Generator.open(tmp_path / "b")  # a fresh cache for each (grey of the RGB ones is one picture)
        first = gen.render([{"image": picture}])[0]
        again = gen.render([{"image": from_file}])[0]
        assert (first.served_by, again.served_by) == ("computed", "lru"), mode  # one picture, one cache key
        np.testing.assert_array_equal(first.pixels, again.pixels)


def test_a_seeded_map_at_its_verified_size_beside_an_image_of_another_is_named(tmp_path):
    """A SPADE-style model: an image and a float map made from the seed. With an image of another size the
    map keeps its verified size; the error named only the image and advised padding for a stride."""
    onnx.save(spade_like(), str(tmp_path / "spade.onnx"))
    build(tmp_path / "spade.onnx", "x86-onnxruntime", tmp_path / "b",
          graph_options={"input_shapes": {"image": [1, 3, 16, 16], "seg": [1, 2, 16, 16]}})
    gen = Generator.open(tmp_path / "b")
    assert gen.generate(image=np.zeros((16, 16, 3), np.uint8), seed=1).shape == (16, 16, 3)
    with pytest.raises(RequestError, match=r"input shape 'image' 3x8x8 .* 'seg' 2x16x16 kept its verified size "
                                           r"\(made from the seed .*give seg by name at the size the image needs"):
        gen.generate(image=np.zeros((8, 8, 3), np.uint8), seed=1)
    out = gen.generate(image=np.zeros((8, 8, 3), np.uint8), seg=np.zeros((2, 8, 8), np.float32))
    assert out.shape == (8, 8, 3)


def test_two_latent_inputs_draw_independent_noise_from_one_seed(tmp_path):
    """Every latent input was PCG64(seed): a latent and a noise input got the same values."""
    g = helper.make_graph([helper.make_node("Add", ["z", "noise"], ["s"]),
                           helper.make_node("Reshape", ["s", "shape"], ["m"]), helper.make_node("Sigmoid", ["m"], ["y"])],
                          "two", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 12]),
                                  helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["N", 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 2, 2])],
                          [numpy_helper.from_array(np.array([-1, 3, 2, 2], np.int64), "shape")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b")
    gen = Generator.open(tmp_path / "b")
    feeds = gen.feeds([{"seed": 7}])
    assert abs(np.corrcoef(feeds["z"][0], feeds["noise"][0])[0, 1]) < 0.9
    np.testing.assert_array_equal(feeds["z"][0], latent_from_seed(7, [12]))  # the first keeps the seed's stream
    verification = sample_feeds(gen.inputs, [7])
    np.testing.assert_array_equal(verification["noise"], feeds["noise"])


def test_settings_of_the_wrong_type_or_range_are_refused_at_open(ort_bundle):
    """edit_cell=0 died in the region code at the first edit, cache_bytes='64MB' in the cache, threads=-1 in
    the backend's C++ core; memory_budget=-1 was used."""
    for settings, named in [({"edit_cell": 0}, r"edit_cell=0: give an integer >= 1"),
                            ({"edit_cell": 2.5}, r"edit_cell=2.5"), ({"cache_bytes": "64MB"}, r"cache_bytes='64MB'"),
                            ({"memory_budget": -1}, r"memory_budget=-1: give an integer >= 1"),
                            ({"assets": "no"}, r"assets='no': give True or False"),
                            ({"threads": -1}, r"threads=-1: give an integer >= 1"), ({"threads": 2.5}, "threads=2.5")]:
        with pytest.raises(RequestError, match=named):
            Generator.open(ort_bundle, **settings)
    assert Generator.open(ort_bundle, edit_cell=np.int64(4), memory_budget=None).config.edit_cell == 4


def test_render_serves_requests_whose_named_arrays_differ_in_size(tmp_path):
    """Requests were batched by their image's size only: two latents of a dynamic decoder at different sizes
    shared a batch and the whole render() failed."""
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (3, 4, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["latent", "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Sigmoid", ["c"], ["image"])], "decoder",
                          [helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["N", 4, "H", "W"])],
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b")
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    rng = np.random.default_rng(0)
    small, large = (rng.standard_normal((4, n, n)).astype(np.float32) for n in (8, 12))
    rendered = gen.render([{"latent": small}, {"latent": large}, {"latent": small * 0.5}])
    assert [r.pixels.shape[:2] for r in rendered] == [(8, 8), (12, 12), (8, 8)]
    np.testing.assert_array_equal(rendered[1].pixels, gen.generate(latent=large))


def test_a_backend_package_that_is_installed_but_fails_to_load_is_not_called_missing(monkeypatch):
    """Under a memory ceiling onnxruntime's library did not map, and the report said to `pip install onnxruntime`."""
    import importlib

    from edgegen import backends
    from edgegen.errors import BackendUnavailableError

    def no_room(name, *args):
        raise ImportError(f"{name}: failed to map segment from shared object")

    monkeypatch.setattr(importlib, "import_module", no_room)
    with pytest.raises(BackendUnavailableError, match=r"numpy package, which is installed but fails to load here "
                                                      r"\(numpy: failed to map segment.*raise the limit"):
        backends.require("numpy", "this bundle", "ort")


def test_an_artifact_that_does_not_load_is_a_bundle_error_naming_it(tmp_path, ort_bundle):
    """A damaged artifact whose sha256 had been updated (or one a device's runtime version cannot read) made
    `edgegen verify` end in a traceback."""
    import hashlib
    import shutil

    from edgegen.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(ort_bundle, copy)
    (copy / "model.onnx").write_bytes(b"garbage" * 100)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = hashlib.sha256(b"garbage" * 100).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"its onnxruntime artifact 'model.onnx' does not load \(.*\): a damaged "
                                          r"artifact, or one the onnxruntime version here cannot read"):
        Generator.open(copy)
    assert main(["verify", str(copy)]) == 2


@pytest.mark.parametrize("edit, said", [
    (lambda m: m.update(parts="x"), "parts is 'x', not a mapping"),  # was an AttributeError in verify
    (lambda m: m.update(batching=7), "batching is 7, not a mapping"),
    (lambda m: m["model"].update(inputs="x"), "model.inputs is not a list of tensor specs"),  # a TypeError
    (lambda m: m["model"].update(outputs=None), "model.outputs is not a list of tensor specs"),
    (lambda m: m["model"]["inputs"][0].update(shape="abc"), "model.inputs: not a tensor spec"),  # verify passed it
    # each a traceback in generate or verify, or passed by verify:
    (lambda m: m["model"]["inputs"][0].pop("role"), "role None is not one of"),
    (lambda m: m["reference"].pop("file"), "reference.file (None) is not a file name"),
    (lambda m: m["model"]["inputs"][1].update(num_classes="10"), "num_classes '10' is not an integer"),
    (lambda m: m["model"]["outputs"][0].update(range="x"), "range 'x' is not [low, high]"),
    (lambda m: m["model"]["inputs"][0].update(dtype="bogus"), "dtype 'bogus' is not a numeric"),
    (lambda m: m["model"]["inputs"][0].update(default_shape=[1, -5]), "default_shape [1, -5] is not a shape of"),
    (lambda m: m["model"]["inputs"][0].update(default_shape=[1, 65]), "that fits shape [None, 16]"),
    (lambda m: m["session"].update(entry=123), "session.entry (123)"),
    (lambda m: m["session"].update(providers="CPUExecutionProvider"), "session: 'providers' must be a list of names"),
    (lambda m: m.update(precision="x"), "precision is 'x', not one onnxruntime runs"),  # verify passed it
    (lambda m: m.update(backend="x"), "backend is 'x', not one of"),  # exit 2, "unknown backend"
    (lambda m: m.update(format="other"), "not an edgegen manifest"),  # exit 2
])
def test_a_manifest_edited_into_wrong_types_is_a_damaged_bundle(tmp_path, ort_bundle, edit, said):
    from edgegen.cli import main
    from edgegen.errors import DamagedBundle

    copy = _tampered_copy(ort_bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "model.onnx").write_bytes((ort_bundle / "model.onnx").read_bytes())  # only the manifest is damaged
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DamagedBundle, match=re.escape(said)):
        Generator.open(copy)
    assert main(["verify", str(copy), "--runs", "1"]) == 3


def test_an_int32_label_input_takes_numpys_int64_arrays(tmp_path):
    """run(label=np.array([3, 7])) on an int32 label input said "must be int32, got int64": every numpy user
    hit it once. Integer labels are cast where they fit."""
    from conftest import conditional_generator

    model = conditional_generator(extras=False)
    next(i for i in model.graph.input if i.name == "label").type.tensor_type.elem_type = TensorProto.INT32
    next(n for n in model.graph.node if n.op_type == "Gather").input[1] = "label64"
    model.graph.node.insert(0, helper.make_node("Cast", ["label"], ["label64"], to=TensorProto.INT64))
    onnx.save(model, str(tmp_path / "int32.onnx"))
    build(tmp_path / "int32.onnx", "x86-onnxruntime", tmp_path / "b")
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    latent = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    as_int64 = gen.run({"latent": latent, "label": np.array([3, 7])})
    as_int32 = gen.run({"latent": latent, "label": np.array([3, 7], np.int32)})
    np.testing.assert_array_equal(as_int64["image"], as_int32["image"])
    with pytest.raises(RequestError, match="do not fit int32"):
        gen.run({"latent": latent, "label": np.array([3, 2 ** 40])})



@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_a_manifest_that_is_no_regular_file_is_named_not_read(ort_bundle, tmp_path, kind):
    """A directory was an IsADirectoryError traceback; a FIFO hung every command; a link to /dev/zero was read
    until memory ran out."""
    import os
    import shutil

    from edgegen.errors import DamagedBundle

    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    (copy / "manifest.json").unlink()
    {"directory": lambda p: p.mkdir(), "fifo": os.mkfifo, "device": lambda p: p.symlink_to("/dev/zero")}[kind](
        copy / "manifest.json")
    with pytest.raises(DamagedBundle, match="manifest.json: not a regular file"):
        Generator.open(copy)


def test_run_from_one_thread_and_generate_from_another_share_no_backend_call(ov_bundle):
    """run() called the backend outside the Generator's lock: beside a generate() in another thread, one call's
    outputs were computed on the other's inputs (OpenVINO's infer request is one per batch size), or OpenVINO
    raised "Infer Request is busy"."""
    import threading

    gen = Generator.open(ov_bundle, cache_bytes=0, assets=False)
    latents = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(4)]
    labels = [np.array([i]) for i in range(4)]
    alone_run = [gen.run({"latent": z, "label": y})["image"] for z, y in zip(latents, labels)]
    alone_generate = [gen.generate(seed=i, label=i) for i in range(4)]
    wrong, errors = [], []

    def runner(i):
        for _ in range(40):
            try:
                if not np.array_equal(gen.run({"latent": latents[i], "label": labels[i]})["image"], alone_run[i]):
                    wrong.append(("run", i))
            except Exception as exc:  # noqa: BLE001 - any failure counts
                errors.append(repr(exc))

    def generator(i):
        for _ in range(40):
            try:
                if not np.array_equal(gen.generate(seed=i, label=i), alone_generate[i]):
                    wrong.append(("generate", i))
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    threads = [threading.Thread(target=f, args=(i,)) for i in range(4) for f in (runner, generator)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong and not errors, (wrong[:5], errors[:5])


def test_an_openvino_weights_file_changed_in_place_under_an_open_generator_changes_nothing(ov_bundle, tmp_path):
    """OpenVINO maps model.bin: a copy over an open bundle changed the pixels it served (and one cut short was
    a SIGBUS); the weights are read into memory when the bundle opens."""
    import os
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(ov_bundle, copy)
    gen = Generator.open(copy, cache_bytes=0, assets=False)
    before = gen.generate(seed=5, label=3)
    weights = copy / "model.bin"
    with open(weights, "r+b") as file:  # in place, as cp over the file does
        data = bytearray(file.read())
        file.seek(0)
        file.write(bytes(b ^ 0x55 for b in data))
    assert np.array_equal(gen.generate_batch([{"seed": 5, "label": 3}] * 3)[2], before)  # a batch: a new compile
    os.truncate(weights, 1)
    assert np.array_equal(gen.generate(seed=5, label=3), before)
