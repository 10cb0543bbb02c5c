import numpy as np
from PIL import Image

from edgegen.image_files import read_rgb
from edgegen.passes.calibration import load_calibration
from edgegen.specs import TensorSpec


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    wide = np.array([[0, 257, 30000], [60000, 65535, 12850]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = read_rgb(tmp_path / "deep.png")
    np.testing.assert_array_equal(pixels[:, :, 0], [[0, 1, 117], [233, 255, 50]])
    assert pixels.shape == (2, 3, 3) and (pixels == pixels[:, :, :1]).all()


def test_calibration_images_of_16_bits_keep_their_values(tmp_path):
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "deep.png")
    spec = TensorSpec(name="image", dtype="float32", shape=[None, 3, 8, 8], role="image", default_shape=[1, 3, 8, 8],
                      range=[0.0, 1.0])
    feeds = load_calibration([spec], str(tmp_path), 1).feeds["image"]
    np.testing.assert_allclose(feeds, 117 / 255, atol=1e-6)
