"""Resolution tiers: a preview from a head that stops at the low-resolution output, its upscaling,
and output sizes compiled for fully-convolutional models."""

import numpy as np
import onnx
import pytest
from PIL import Image

from edgegen.build import build
from edgegen.errors import BuildError, RequestError
from edgegen.runtime import Generator
from edgegen.runtime.tiers import Tiers, lanczos_resize
from runtime_models import glyph_like, sized_resize_like, upscaler_like

FAMILIES = "tests/data/families"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    onnx.save(glyph_like(), str(root / "glyph.onnx"))
    onnx.save(upscaler_like(), str(root / "up.onnx"))
    return root


def test_preview_runs_only_the_graph_up_to_the_preview(tmp_path, models):
    result = build(models / "glyph.onnx", "x86-onnxruntime", tmp_path / "b")
    assert result.manifest["serving"]["tiers"]["preview"]["part"] == "preview"  # unasked, no upscaling
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    assert gen.generate(seed=4, label=2, quality="preview").shape == (16, 16, 3)
    assert set(result.manifest["parts"]) == {"preview"}
    result = build(models / "glyph.onnx", "x86-onnxruntime", tmp_path / "b", preview_upscale="lanczos")
    tiers = result.manifest["serving"]["tiers"]
    assert tiers["preview"]["part"] == "preview" and tiers["full"]["output"] == "image"
    rows = {r["tier"]: r for r in result.manifest["serving_report"]["tiers"]["rows"]}
    assert rows["preview"]["macs"] < 0.6 * rows["full"]["macs"] and rows["preview"]["max_abs_vs_whole"] <= 1e-5
    assert "psnr_vs_full_downscaled_db" in rows["preview"] and "psnr_upscaled_vs_full_db" in rows["preview"]
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    raw = gen.generate(seed=4, label=2, output="preview")
    assert raw.shape == (16, 16, 3)
    np.testing.assert_array_equal(raw, gen.generate(seed=4, label=2, size=16))
    up = gen.generate(seed=4, label=2, quality="preview")
    assert up.shape == (32, 32, 3)
    np.testing.assert_array_equal(up, lanczos_resize(raw[None], 32, 32)[0])
    np.testing.assert_array_equal(gen.generate(seed=4, label=2, quality="full"), gen.generate(seed=4, label=2))
    assert gen.generate(seed=4, label=2, quality="full", size=32).shape == (32, 32, 3)
    with pytest.raises(RequestError, match=r"size 24 is not offered by this bundle; sizes: \[16, 32\]"):
        gen.generate(seed=4, label=2, size=24)
    with pytest.raises(RequestError, match="quality 'draft' is not one of full, preview"):
        gen.generate(seed=4, label=2, quality="draft")
    with pytest.raises(RequestError, match=r"size 16 is the preview tier's and quality='full' asks for the full "
                                           r"tier \(32\); leave size out, or ask for quality='preview'"):
        gen.generate(seed=4, label=2, size=16, quality="full")


def test_preview_upscaled_by_an_upscaler_compiled_for_the_target(tmp_path, models):
    result = build(models / "glyph.onnx", "x86-openvino", tmp_path / "b", split=["auto"],
                   preview_upscale=str(models / "up.onnx"))
    preview = result.manifest["serving"]["tiers"]["preview"]
    assert preview["upscale"] == "upscaler" and preview["part"] == "head_preview" and preview["trunk"]
    assert "upscaler" in result.manifest["parts"]
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    up = gen.generate(seed=1, label=1, quality="preview")
    raw = gen.generate(seed=1, label=1, output="preview")
    upscaler_bundle = tmp_path / "upscaler"
    build(models / "up.onnx", "x86-openvino", upscaler_bundle)
    # the preview in [-1, 1] maps to the upscaler's [0, 1]; in uint8 that is the preview image itself
    expected = Generator.open(upscaler_bundle).generate(image=raw)
    assert up.shape == (32, 32, 3) and np.abs(up.astype(int) - expected).max() <= 1


def test_an_int8_bundles_upscaler_is_int8_too(tmp_path, models):
    """LiteRT int8 is full-integer: the float upscaler part failed the build with "quantize it first"."""
    result = build(models / "glyph.onnx", "x86-litert", tmp_path / "b", precision="int8",
                   preview_upscale=str(models / "up.onnx"))
    assert result.manifest["parts"]["upscaler"]["session"]["precision"] == "int8"
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    assert gen.generate(seed=1, label=1, quality="preview").shape == (32, 32, 3)


def test_an_upscaler_exported_for_another_size_is_refused_saying_so(tmp_path, models):
    """The refusal read "the shape 1x3x16x16 given for it does not fit", a shape the user never gave."""
    fixed = upscaler_like()
    for dim, size in zip(fixed.graph.input[0].type.tensor_type.shape.dim[2:], (24, 24)):
        dim.Clear()
        dim.dim_value = size
    onnx.save(fixed, str(tmp_path / "up24.onnx"))
    with pytest.raises(BuildError, match=r"up24.onnx: a preview upscaler must take the 16x16 preview, and this one was "
                                         r"exported for \?x3x24x24 input 'image'; export it with dynamic height"):
        build(models / "glyph.onnx", "x86-onnxruntime", tmp_path / "b", preview_upscale=str(tmp_path / "up24.onnx"))


def test_a_preview_at_a_ratio_that_is_not_whole_is_reported(tmp_path):
    """A 15x15 preview of a 32x32 image: the tier report's downscale reshaped by a whole factor and crashed."""
    h, nh = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(0)
    weights = [nh.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w"),
               nh.from_array(rng.normal(0, 0.3, (3, 8, 3, 3)).astype(np.float32), "rgb"),
               nh.from_array(rng.normal(0, 0.3, (3, 8, 4, 4)).astype(np.float32), "small"),
               nh.from_array(np.array([1, 1, 2, 2], np.float32), "x2")]
    nodes = [h.make_node("Conv", ["z", "w"], ["f"], pads=[1, 1, 1, 1]), h.make_node("Relu", ["f"], ["r"]),
             h.make_node("Conv", ["r", "small"], ["p"], pads=[1, 1, 1, 1]), h.make_node("Sigmoid", ["p"], ["preview"]),
             h.make_node("Resize", ["r", "", "x2"], ["u"], mode="nearest"),
             h.make_node("Conv", ["u", "rgb"], ["i"], pads=[1, 1, 1, 1]), h.make_node("Sigmoid", ["i"], ["image"])]
    graph = h.make_graph(nodes, "two", [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 4, 16, 16])],
                         [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 32, 32]),
                          h.make_tensor_value_info("preview", onnx.TensorProto.FLOAT, [1, 3, 15, 15])], weights)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(tmp_path / "two.onnx"))
    result = build(tmp_path / "two.onnx", "x86-onnxruntime", tmp_path / "b")
    row = result.manifest["serving_report"]["tiers"]["rows"][1]
    assert row["tier"] == "preview" and row["psnr_vs_full_downscaled_db"] > 0


def test_preview_needs_a_low_resolution_output(tmp_path):
    with pytest.raises(BuildError, match="lower-resolution image output"):
        build(f"{FAMILIES}/dcgan__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "b", preview_upscale="lanczos")
    build(f"{FAMILIES}/dcgan__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "b")
    with pytest.raises(RequestError, match="no preview tier"):
        Generator.open(tmp_path / "b").generate(seed=1, quality="preview")


def test_tiers_of_a_model_with_two_image_outputs_say_its_preview_comes_without_them(tmp_path, models):
    with pytest.raises(BuildError, match=r"one image output; this one has 2 \('image', 'preview'\)\. Build without "
                                         r"--tiers: a lower-resolution image output is served as the preview tier"):
        build(models / "glyph.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[32, 64])
    assert not (tmp_path / "b").exists()


def test_a_bundle_built_without_its_preview_tier_says_how_to_get_one():
    tiers = Tiers({}, ["image", "preview"], {"image": (32, 32), "preview": (16, 16)}, has_split=False)
    with pytest.raises(RequestError, match="built without a preview tier.*--preview-upscale lanczos"):
        tiers.route(None, None, "preview")


def test_fully_convolutional_sizes_are_compiled(tmp_path):
    result = build(f"{FAMILIES}/tiny_decoder__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[64, 128])
    sizes = result.manifest["serving"]["tiers"]["sizes"]
    assert sizes["64"]["part"] == "main" and sizes["128"]["part"] == "size128"
    assert sizes["128"]["inputs"] == {"latent": [4, 16, 16]}
    assert result.manifest["serving_report"]["sizes"]["128"]["max_abs_vs_graph"] <= 1e-4
    gen = Generator.open(tmp_path / "b")
    big = gen.generate(seed=3, size=128)
    assert big.shape == (128, 128, 3) and gen.generate(seed=3).shape == (64, 64, 3)
    latent = np.random.Generator(np.random.PCG64(3)).standard_normal((4, 16, 16), dtype=np.float32)
    raw = gen.parts.run("size128", {"latent": latent[None]})["image"]
    np.testing.assert_array_equal(big, np.clip(np.rint(raw[0].transpose(1, 2, 0) * 255), 0, 255))  # range [0, 1]
    with pytest.raises(RequestError, match=r"sizes: \[64, 128\]"):
        gen.generate(seed=3, size=96)
    with pytest.raises(BuildError, match="the nearest sizes it gives: 96, 104$"):
        build(f"{FAMILIES}/tiny_decoder__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "c", tiers=[100])


def test_lanczos_matches_pillow():
    rng = np.random.default_rng(0)
    images = np.clip(np.cumsum(rng.normal(0, 9, (2, 24, 20, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    for height, width in [(48, 40), (30, 64), (12, 10)]:
        ours = lanczos_resize(images, height, width)
        for i in range(2):
            pillow = np.asarray(Image.fromarray(images[i]).resize((width, height), Image.LANCZOS))
            assert np.abs(ours[i].astype(int) - pillow).max() <= 1


def gray(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def test_image_model_sizes_take_the_image_of_their_size(tmp_path):
    # a static export: each size is its own artifact at its own input size
    build(f"{FAMILIES}/espcn__legacy_b1.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[48, 96, 192])
    gen = Generator.open(tmp_path / "b")
    for size in (48, 96, 192):
        small = gray(size // 3, size)
        image = gen.generate(image=small, size=size)
        assert image.shape[:2] == (size, size)
        np.testing.assert_array_equal(gen.generate(image=small), image)  # the image's size picks the tier
    with pytest.raises(RequestError, match=r"size 48 is made from a 16x16 image \(input 'input.1'\), got 32x32"):
        gen.generate(image=gray(32, 0), size=48)
    with pytest.raises(RequestError, match=r"a 20x20 image \(input 'input.1'\); this bundle's tiers take 16x16, 32x32, "
                                           r"64x64 images"):
        gen.generate(image=gray(20, 0))
    # a dynamic export: one artifact serves every size, and a size the image does not give is refused
    result = build(f"{FAMILIES}/espcn__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "d", tiers=[96, 192])
    rows = {r["tier"]: r["macs"] for r in result.manifest["serving_report"]["tiers"]["rows"]}
    assert rows["size192"] == rows["full"] and rows["size96"] == rows["full"] // 4  # 192x192 is the default
    dyn = Generator.open(tmp_path / "d")
    assert dyn.generate(image=gray(32, 1), size=96).shape[:2] == (96, 96)
    assert dyn.generate(image=gray(20, 1)).shape[:2] == (60, 60)
    with pytest.raises(RequestError, match=r"size 192 is made from a 64x64 image .* got 16x16"):
        dyn.generate(image=gray(16, 1), size=192)


def test_sizes_of_a_model_exported_with_a_fixed_batch_of_two(tmp_path):
    """The size's part was checked on a batch of one, which a fixed batch of 2 refuses: the build failed
    blaming the size."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["h"], pads=[1, 1, 1, 1]),
                               helper.make_node("Sigmoid", ["h"], ["out"])], "fcn",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3, 8, 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "b2.onnx"))
    build(tmp_path / "b2.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[16])
    gen = Generator.open(tmp_path / "b")
    picture = np.stack([gray(16, 3)] * 3, axis=-1)
    assert gen.generate(image=picture, size=16).shape == (16, 16, 3)
    assert gen.generate(image=picture[:8, :8]).shape == (8, 8, 3)


def test_the_default_size_of_an_image_model_without_tiers_is_made_from_the_default_image(tmp_path):
    """size=S named the default output and was served at the image's size, whatever the image."""
    build(f"{FAMILIES}/espcn__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "b")
    gen = Generator.open(tmp_path / "b")
    assert gen.tiers.offered() == [192]
    np.testing.assert_array_equal(gen.generate(image=gray(64, 2), size=192), gen.generate(image=gray(64, 2)))
    with pytest.raises(RequestError, match=r"size 192 is made from a 64x64 image \(input 'input'\), got 20x20"):
        gen.generate(image=gray(20, 2), size=192)
    with pytest.raises(RequestError, match=r"size 60 is not offered by this bundle; sizes: \[192\] \(an "
                                           r"image-to-image model's output follows its image: leave size out"):
        gen.generate(image=gray(20, 2), size=60)
    assert gen.generate(image=gray(20, 2)).shape[:2] == (60, 60)


def test_tiers_of_a_dynamic_export_on_litert_are_an_artifact_per_size(tmp_path):
    """TFLite's shapes are static: every size served by the one artifact failed at run time."""
    build(f"{FAMILIES}/espcn__legacy_dyn.onnx", "x86-litert", tmp_path / "b", tiers=[48, 96])
    gen = Generator.open(tmp_path / "b")
    assert {entry["part"] for entry in gen.manifest["serving"]["tiers"]["sizes"].values()} == {"size48", "size96"}
    for size in (48, 96):
        assert gen.generate(image=gray(size // 3, size), size=size).shape[:2] == (size, size)


def test_a_tier_size_the_network_floors_is_refused(tmp_path):
    """A pooling network takes a 33x33 input to 32x32: a size-33 tier would serve 32x32 images (it did). The
    refusal names the sizes around it on the network's grid (a stride-2 pool: even sizes)."""
    h, nh = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(0)
    weights = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.2, "w1"),
               nh.from_array(rng.standard_normal((3, 8, 3, 3)).astype(np.float32) * 0.2, "w2"),
               nh.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [h.make_node("Conv", ["image", "w1"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
             h.make_node("Conv", ["u", "w2"], ["y"], pads=[1, 1, 1, 1]), h.make_node("Tanh", ["y"], ["out"])]
    graph = h.make_graph(nodes, "pool", [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
                         [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 32, 32])], weights)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(tmp_path / "pool.onnx"))
    with pytest.raises(BuildError, match=r"no input size gives output size 33 \(input 'image' at 33x33 gives 32x32; "
                                         r"input 'image' at 34x34 gives 34x34; .*\); the nearest sizes it gives: 32, 34$"):
        build(tmp_path / "pool.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[32, 33])
    assert not (tmp_path / "b").exists()
    build(tmp_path / "pool.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[32, 64])
    assert Generator.open(tmp_path / "b").generate(image=np.zeros((64, 64, 3), np.uint8)).shape == (64, 64, 3)


def test_tiers_of_an_output_one_pixel_short_of_the_input_scale_follow_its_layers(tmp_path):
    """A ConvTranspose k3 s2 p1 takes n rows to 2n - 1: size 31 comes from 16 rows (refused before, as 16.53 by
    the ratio of 15 to 8, with the hint "multiples of 1"); an even size comes from none."""
    h, nh = onnx.helper, onnx.numpy_helper
    nodes = [h.make_node("ConvTranspose", ["image", "w"], ["out"], strides=[2, 2], pads=[1, 1, 1, 1])]
    graph = h.make_graph(nodes, "ct", [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                         [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1, 3, 15, 15])],
                         [nh.from_array(np.full((3, 3, 3, 3), 0.1, np.float32), "w")])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(tmp_path / "ct.onnx"))
    with pytest.raises(BuildError, match=r"no input size gives output size 16 \(input 'image' at 9x9 gives 17x17; "
                                         r"input 'image' at 10x10 gives 19x19; .*; its layers make 2n - 1 rows from n "
                                         r"input rows \(.*ConvTranspose k3 s2 p1 without output_padding=1.*\): choose "
                                         r"sizes among 1, 3, 5, 7"):
        build(tmp_path / "ct.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[15, 16])
    assert not (tmp_path / "b").exists()
    result = build(tmp_path / "ct.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[15, 31])
    assert result.manifest["serving"]["tiers"]["sizes"]["31"]["inputs"] == {"image": [3, 16, 16]}
    gen = Generator.open(tmp_path / "b")
    assert gen.generate(image=np.zeros((16, 16, 3), np.uint8), size=31).shape == (31, 31, 3)


def test_a_tier_size_beyond_the_targets_memory_is_refused_before_anything_runs(tmp_path):
    """--tiers 100000 allocated 28 GiB for its check and died with numpy's MemoryError."""
    with pytest.raises(BuildError, match=r"at output size 99999 node .* writes \d+ MiB, which with its input exceeds "
                                         r"target x86-onnxruntime's memory_mb"):
        build(f"{FAMILIES}/espcn__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[96, 99999])
    assert not (tmp_path / "b").exists()


def test_an_image_models_preview_is_upscaled_to_its_own_images_size(tmp_path):
    """quality='preview' stretched every preview to the verified size (a 20x28 image's to 64x64 square)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["full"]),
             helper.make_node("AveragePool", ["full"], ["preview"], kernel_shape=[2, 2], strides=[2, 2])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
                          [helper.make_tensor_value_info("full", TensorProto.FLOAT, [1, 3, "H", "W"]),
                           helper.make_tensor_value_info("preview", TensorProto.FLOAT, [1, 3, "h", "w"])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b", preview_upscale="lanczos")
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    for height, width in [(64, 64), (32, 32), (20, 28)]:
        image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
        raw = gen.generate(image=image, output="preview")
        assert raw.shape == (height // 2, width // 2, 3)
        np.testing.assert_array_equal(gen.generate(image=image, quality="preview"),
                                      lanczos_resize(raw[None], height, width)[0])
    # size= the preview's size is made from an image of the default size, as the full tier's is (a 20x20 image
    # asked for size 32 was served its own 10x10 preview; with quality='preview', its 20x20 upscale)
    for ask in ({"size": 32}, {"size": 64, "quality": "preview"}):
        with pytest.raises(RequestError, match=r"size (32|64) is made from a 64x64 image \(input 'image'\), got 20x20"):
            gen.generate(image=np.zeros((20, 20, 3), np.uint8), **ask)
    assert gen.generate(image=np.zeros((64, 64, 3), np.uint8), size=32).shape == (32, 32, 3)
    # an output of one tier with the quality of the other was served one of the two, silently
    for ask in ({"output": "full", "quality": "preview"}, {"output": "preview", "quality": "full"}):
        with pytest.raises(RequestError, match=r"asks for two tiers: the preview tier gives 'preview'; leave one"):
            gen.generate(image=np.zeros((64, 64, 3), np.uint8), **ask)
    with pytest.raises(RequestError, match=r"upscaled preview; ask for the raw preview, output='preview' \(--output-name"):
        gen.generate(image=np.zeros((64, 64, 3), np.uint8), quality="preview", roi=(0, 0, 4, 4))


def test_a_tier_of_an_export_fixed_at_one_size_says_to_export_it_dynamic(tmp_path):
    """A static export whose layers hard-code its size listed only sizes that "do not run"."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((3, 3, 3, 3), 0.1, np.float32), "w")
    dense = numpy_helper.from_array(np.eye(192, dtype=np.float32), "dense")  # a Linear over the flattened map
    shape = numpy_helper.from_array(np.array([1, 3, 8, 8], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("MatMul", ["f", "dense"], ["m"]), helper.make_node("Reshape", ["m", "shape"], ["r"]),
             helper.make_node("Sigmoid", ["r"], ["out"])]
    g = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])], [w, dense, shape])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "fixed.onnx"))
    with pytest.raises(BuildError, match=r"input 'image' was exported at a fixed 1x3x8x8: export it with dynamic height "
                                         r"and width"):
        build(tmp_path / "fixed.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[16])


@pytest.mark.parametrize("form", ["sizes", "shape"])
def test_a_tier_of_a_model_resizing_to_a_fixed_size_is_refused_naming_the_resize(tmp_path, form):
    """F.interpolate(size=(32, 32)) before the output: a static export built a 16 tier as if it were a x4 scale
    (an image the model never gives: it gives 32x32 at any input); a dynamic one blamed a ConvTranspose."""
    onnx.save(sized_resize_like(form=form, skip=False), str(tmp_path / "m.onnx"))
    with pytest.raises(BuildError, match=r"--tiers 16: Resize '.*' resizes to the fixed size \[32, 32\] .* "
                                         r"only 32 can"):
        build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[16, 32])
    assert not (tmp_path / "b").exists()


def test_the_default_size_tier_runs_through_the_split(tmp_path):
    """With --tiers the default size was routed to the whole artifact: the split shipped, and the feature
    cache was never asked (0 hits for the same image with other segmentation maps)."""
    from runtime_models import spade_like

    onnx.save(spade_like(), str(tmp_path / "m.onnx"))
    build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b", split=["auto"], tiers=[16, 32],
          graph_options={"input_shapes": {"image": [1, 3, 16, 16], "seg": [1, 2, 16, 16]}})
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    image = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    for seed in range(3):
        gen.generate(image=image, seed=seed)
    assert gen.stats()["features"]["hits"] == 2



def test_tiers_of_a_dcgan_stack_follow_its_affine_size_line(tmp_path):
    """A DCGAN stack (ConvTranspose k4 s1 p0, then three k4 s2 p1) makes 8n + 24 rows from an n x n latent map:
    sizes were searched around the proportional input (5x5 for 40 from the exported 64x64 -> 536), so 40 (2x2)
    was refused, with the advice 'multiples of 32' and a ConvTranspose the model does not have."""
    h, nh = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(0)
    nodes, x = [], "z"
    for i, (stride, pad) in enumerate([(1, 0), (2, 1), (2, 1), (2, 1)]):
        nodes.append(h.make_node("ConvTranspose", [x, f"w{i}"], [f"t{i}"], strides=[stride] * 2, pads=[pad] * 4))
        x = f"t{i}"
    nodes.append(h.make_node("Tanh", [x], ["image"]))
    weights = [nh.from_array(rng.normal(0, 0.3, (4 if i == 0 else 2, 2 if i < 3 else 3, 4, 4)).astype(np.float32),
                             f"w{i}") for i in range(4)]
    graph = h.make_graph(nodes, "dcgan", [h.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 4, "h", "w"])],
                         [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, "H", "W"])], weights)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(tmp_path / "dcgan.onnx"))
    shape = {"graph_options": {"input_shapes": {"z": [1, 4, 64, 64]}}}
    result = build(tmp_path / "dcgan.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[40, 48], **shape)
    assert result.manifest["serving"]["tiers"]["sizes"]["40"]["inputs"]["z"] == [4, 2, 2]
    with pytest.raises(BuildError, match=r"its layers make 8n \+ 24 rows from n input rows: choose sizes among "
                                         r"32, 40, 48, 56"):
        build(tmp_path / "dcgan.onnx", "x86-onnxruntime", tmp_path / "c", tiers=[44], **shape)


def test_tiers_of_a_model_taking_an_image_and_a_mask(tmp_path):
    """The build's timing request gave the image alone: --tiers on an inpainting model (image + mask) failed,
    telling the user how to pass a mask."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Concat", ["image", "mask"], ["both"], axis=1),
         helper.make_node("Conv", ["both", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["conv"], ["out"])], "inpaint",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [onnx.numpy_helper.from_array((rng.standard_normal((3, 4, 3, 3)) * 0.3).astype(np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    result = build(tmp_path / "m.onnx", "x86-onnxruntime", tmp_path / "b", tiers=[16, 32],
                   graph_options={"input_shapes": {"image": [1, 3, 32, 32], "mask": [1, 1, 32, 32]},
                                  "roles": {"mask": "image"}})
    assert {r["tier"] for r in result.manifest["serving_report"]["tiers"]["rows"]} == {"full", "size16", "size32"}
    gen = Generator.open(tmp_path / "b")
    mask = np.zeros((16, 16, 1), np.uint8)
    assert gen.generate(image=gray(16, 1), mask=mask, size=16).shape[:2] == (16, 16)
