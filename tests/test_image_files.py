import numpy as np
from PIL import Image

from edgegen.image_files import read_image
from edgegen.passes.calibration import load_calibration
from edgegen.specs import TensorSpec


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    wide = np.array([[0, 257, 30000], [60000, 65535, 12850]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = read_image(tmp_path / "deep.png")
    np.testing.assert_array_equal(pixels[:, :, 0], [[0, 1, 117], [233, 255, 50]])
    assert pixels.shape == (2, 3, 3) and (pixels == pixels[:, :, :1]).all()


def test_calibration_images_of_16_bits_keep_their_values(tmp_path):
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "deep.png")
    spec = TensorSpec(name="image", dtype="float32", shape=[None, 3, 8, 8], role="image", default_shape=[1, 3, 8, 8],
                      range=[0.0, 1.0])
    feeds = load_calibration([spec], str(tmp_path), 1).feeds["image"]
    np.testing.assert_allclose(feeds, 117 / 255, atol=1e-6)


def _image_spec(channels: int) -> TensorSpec:
    return TensorSpec(name="image", dtype="float32", shape=[None, channels, 8, 8], role="image",
                      default_shape=[1, channels, 8, 8], range=[0.0, 1.0])


def test_pictures_pillow_cannot_take_as_they_are_are_refused_naming_the_file(tmp_path, monkeypatch):
    """A float TIFF was read as a black picture (Pillow's convert truncates 0..1), silently; a picture past
    Pillow's decompression-bomb limit ended in a traceback."""
    import pytest

    from edgegen.errors import RequestError

    (tmp_path / "float").mkdir()
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "float" / "f.tif")
    with pytest.raises(RequestError, match=r"f\.tif: cannot read the image \(a 32-bit float image"):
        read_image(tmp_path / "float" / "f.tif")
    with pytest.raises(RequestError, match=r"f\.tif: not a readable image \(a 32-bit float image.*\.npz"):
        load_calibration([_image_spec(3)], str(tmp_path / "float"), 1)
    (tmp_path / "big").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "big" / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit, a "bomb"
    with pytest.raises(RequestError, match=r"b\.png: cannot read the image \(Image size \(4096 pixels\)"):
        read_image(tmp_path / "big" / "b.png")
    with pytest.raises(RequestError, match=r"b\.png: not a readable image \(Image size"):
        load_calibration([_image_spec(3)], str(tmp_path / "big"), 1)


def test_a_four_channel_image_input_reads_pictures_with_their_alpha(tmp_path):
    """An RGBA input (--role NAME=image) had every RGBA picture of its folder refused as unreadable, and
    generate --image said the picture had 3 channels."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[..., 0] = 51
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", 4).shape == (8, 8, 4) and read_image(tmp_path / "a.png").shape == (8, 8, 3)
    feeds = load_calibration([_image_spec(4)], str(tmp_path), 1).feeds["image"]
    np.testing.assert_allclose(feeds[0, :, 0, 0], [0.2, 0, 0, 1], atol=1e-6)


def test_an_npz_member_that_is_not_an_array_is_named(tmp_path):
    import zipfile

    import pytest

    from edgegen.errors import RequestError

    with zipfile.ZipFile(tmp_path / "c.npz", "w") as archive:  # another tool's zip: a PNG under image.npy
        archive.writestr("image.npy", b"\x89PNG not an array")
    with pytest.raises(RequestError, match=r"c\.npz: member 'image' is not a numpy array"):
        load_calibration([_image_spec(3)], str(tmp_path / "c.npz"), 1)


def test_calibration_arrays_far_outside_an_image_inputs_range_are_refused(tmp_path):
    """float32 0..255 pixels for a [0, 1] input: the build calibrated and verified on them (40.9 dB) and the bundle
    served photos at 12 dB. Arrays within one range width of it (a [-1, 1] input's [0, 1] data) are taken."""
    import pytest

    from edgegen.errors import RequestError

    pixels = np.random.default_rng(0).integers(0, 256, (4, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "c.npy", pixels)
    with pytest.raises(RequestError, match=r"c\.npy: array 'image' holds values 0\.\.255, far outside the image "
                                           r"input's range \[0, 1\].*divide by 255.*--input-range"):
        load_calibration([_image_spec(3)], str(tmp_path / "c.npy"), 4)
    np.save(tmp_path / "c.npy", pixels / 255 * 2 - 0.5)  # -0.5..1.5: within a range width
    assert load_calibration([_image_spec(3)], str(tmp_path / "c.npy"), 4).feeds["image"].shape == (4, 3, 8, 8)
