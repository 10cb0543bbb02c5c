"""PyTorch exports of the generator families users bring (DCGAN, conditional DCGAN, CycleGAN-ResNet,
pix2pix U-Net, ESPCN, fast style transfer, TAESD-like decoder, MobileNet-ResNet, Real-ESRGAN x2 with its
pixel_unshuffle), from both of
PyTorch's exporters, fixed and dynamic batch: each must build for both CPU backends at fp32 and
reproduce PyTorch's own outputs. The files are made by tools/export_families.py."""

from pathlib import Path

import numpy as np
import pytest

from edgegen.build import build
from edgegen.runtime import Generator

FAMILIES = sorted((Path(__file__).parent / "data" / "families").glob("*.onnx"))


def test_fixtures_exist():
    assert len(FAMILIES) >= 20


@pytest.mark.parametrize("target", ["x86-onnxruntime", "x86-openvino"])
@pytest.mark.parametrize("model", FAMILIES, ids=lambda p: p.stem)
def test_family_builds_and_matches_pytorch(tmp_path, model, target):
    result = build(model, target, tmp_path / "b")
    assert result.fidelity["psnr_db"] >= 60 and result.fidelity["max_abs"] <= 1e-3
    reference = np.load(model.with_suffix(".npz"))
    feeds = {k: reference[k] for k in reference.files if not k.startswith("output:")}
    gen = Generator.open(tmp_path / "b")
    outputs = gen.run(feeds)
    for key in reference.files:
        if key.startswith("output:"):
            np.testing.assert_allclose(outputs[key[7:]], reference[key], atol=1e-4, rtol=1e-4)
    assert gen.self_test()["pass"]
