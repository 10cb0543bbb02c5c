#!/usr/bin/env python
"""Export small, seeded ONNX fixtures for the generator families edgegen supports.

The models below are faithful re-implementations of well-known reference
generators (same layer types and ordering as the original code) with reduced
channel widths so every file stays small.  Weights are random (seeded), BatchNorm
running statistics are made non-trivial by a few train-mode passes over random
data, and every model is exported in eval() mode the way users typically do it:

* ``legacy_b1``   - ``torch.onnx.export(model, args, f, dynamo=False, opset_version=17)``,
                    no names given, batch fixed at 1.
* ``legacy_dyn``  - same, with ``input_names``/``output_names`` and ``dynamic_axes`` on
                    the batch dim (and on H/W for the fully-convolutional image->image
                    families).
* ``dynamo_dyn``  - ``torch.onnx.export(model, args, f, dynamo=True, dynamic_shapes=...)``
                    with a dynamic batch ``Dim``; this exporter writes the weights to
                    ``<stem>.onnx.data`` (external data) by default.
* ``dcgan`` only: ``legacy_op13`` / ``legacy_op21`` (legacy exporter at another opset).

For each ``tests/data/families/<family>__<variant>.onnx`` a reference
``<family>__<variant>.npz`` is written: ONNX input name -> input array, and
``output:<onnx output name>`` -> PyTorch's output (batch 1 for fixed-batch variants,
batch 2 for dynamic ones).  The script checks every file with
``onnx.checker.check_model(path)`` and onnxruntime (max-abs <= 1e-4 vs PyTorch) and
regenerates ``tests/data/families/README.md``.

Run:  .venv/bin/python tools/export_families.py
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import contextlib
import dataclasses
import io
import logging
import sys
import traceback
import warnings
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "data" / "families"
BASE_SEED = 20240601
ATOL = 1e-4


# ---------------------------------------------------------------------------
# 1. DCGAN (PyTorch DCGAN tutorial generator)
# ---------------------------------------------------------------------------
class DCGANGenerator(nn.Module):
    """pytorch/tutorials beginner_source/dcgan_faces_tutorial.py ``Generator``."""

    def __init__(self, nz: int = 100, ngf: int = 4, nc: int = 3):
        super().__init__()
        self.main = nn.Sequential(
            # input is Z, going into a convolution
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            # state size. (ngf*8) x 4 x 4
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            # state size. (ngf*4) x 8 x 8
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            # state size. (ngf*2) x 16 x 16
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            # state size. (ngf) x 32 x 32
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
            # state size. (nc) x 64 x 64
        )

    def forward(self, input):  # noqa: A002 - name as in the tutorial
        return self.main(input)


def dcgan_weights_init(m: nn.Module) -> None:
    """``weights_init`` from the DCGAN tutorial (also what pix2pix/CycleGAN 'normal' does)."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.constant_(m.bias.data, 0.0)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


# ---------------------------------------------------------------------------
# 2. Class-conditional DCGAN (label embedding concatenated to the latent)
# ---------------------------------------------------------------------------
class ConditionalDCGANGenerator(nn.Module):
    """Common cGAN-on-DCGAN pattern: ``cat(z, Embedding(label))`` -> view [N,C,1,1] -> DCGAN stack.

    32x32 RGB output (CIFAR-10 style, 10 classes).
    """

    def __init__(self, nz: int = 32, n_classes: int = 10, emb_dim: int = 16, ngf: int = 8, nc: int = 3):
        super().__init__()
        self.label_emb = nn.Embedding(n_classes, emb_dim)
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz + emb_dim, ngf * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            # (ngf*4) x 4 x 4
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            # (ngf*2) x 8 x 8
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            # (ngf) x 16 x 16
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
            # (nc) x 32 x 32
        )

    def forward(self, noise, labels):
        gen_input = torch.cat((noise, self.label_emb(labels)), -1)
        gen_input = gen_input.view(gen_input.size(0), -1, 1, 1)
        return self.main(gen_input)


# ---------------------------------------------------------------------------
# 3. CycleGAN ResnetGenerator (junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py)
# ---------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        super().__init__()
        self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, use_dropout, use_bias)

    def build_conv_block(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        conv_block = []
        p = 0
        if padding_type == "reflect":
            conv_block += [nn.ReflectionPad2d(1)]
        elif padding_type == "replicate":
            conv_block += [nn.ReplicationPad2d(1)]
        elif padding_type == "zero":
            p = 1
        else:
            raise NotImplementedError("padding [%s] is not implemented" % padding_type)

        conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            conv_block += [nn.Dropout(0.5)]

        p = 0
        if padding_type == "reflect":
            conv_block += [nn.ReflectionPad2d(1)]
        elif padding_type == "replicate":
            conv_block += [nn.ReplicationPad2d(1)]
        elif padding_type == "zero":
            p = 1
        else:
            raise NotImplementedError("padding [%s] is not implemented" % padding_type)
        conv_block += [nn.Conv2d(dim, dim, kernel_size=3, padding=p, bias=use_bias), norm_layer(dim)]

        return nn.Sequential(*conv_block)

    def forward(self, x):
        out = x + self.conv_block(x)  # add skip connections
        return out


class ResnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False, n_blocks=6,
                 padding_type="reflect"):
        assert n_blocks >= 0
        super().__init__()
        use_bias = norm_layer == nn.InstanceNorm2d

        model = [nn.ReflectionPad2d(3),
                 nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
                 norm_layer(ngf),
                 nn.ReLU(True)]

        n_downsampling = 2
        for i in range(n_downsampling):  # add downsampling layers
            mult = 2 ** i
            model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                      norm_layer(ngf * mult * 2),
                      nn.ReLU(True)]

        mult = 2 ** n_downsampling
        for i in range(n_blocks):  # add ResNet blocks
            model += [ResnetBlock(ngf * mult, padding_type=padding_type, norm_layer=norm_layer,
                                  use_dropout=use_dropout, use_bias=use_bias)]

        for i in range(n_downsampling):  # add upsampling layers
            mult = 2 ** (n_downsampling - i)
            model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2),
                                         kernel_size=3, stride=2,
                                         padding=1, output_padding=1,
                                         bias=use_bias),
                      norm_layer(int(ngf * mult / 2)),
                      nn.ReLU(True)]
        model += [nn.ReflectionPad2d(3)]
        model += [nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0)]
        model += [nn.Tanh()]

        self.model = nn.Sequential(*model)

    def forward(self, input):  # noqa: A002
        return self.model(input)


# ---------------------------------------------------------------------------
# 4. pix2pix UnetGenerator (same repository)
# ---------------------------------------------------------------------------
class UnetSkipConnectionBlock(nn.Module):
    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = norm_layer == nn.InstanceNorm2d
        if input_nc is None:
            input_nc = outer_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        downrelu = nn.LeakyReLU(0.2, True)
        downnorm = norm_layer(inner_nc)
        uprelu = nn.ReLU(True)
        upnorm = norm_layer(outer_nc)

        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            down = [downconv]
            up = [uprelu, upconv, nn.Tanh()]
            model = down + [submodule] + up
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            down = [downrelu, downconv]
            up = [uprelu, upconv, upnorm]
            model = down + up
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            down = [downrelu, downconv, downnorm]
            up = [uprelu, upconv, upnorm]

            if use_dropout:
                model = down + [submodule] + up + [nn.Dropout(0.5)]
            else:
                model = down + [submodule] + up

        self.model = nn.Sequential(*model)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        else:  # add skip connections
            return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        # construct unet structure
        unet_block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, input_nc=None, submodule=None, norm_layer=norm_layer,
                                             innermost=True)
        for i in range(num_downs - 5):  # add intermediate layers with ngf * 8 filters
            unet_block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, input_nc=None, submodule=unet_block,
                                                 norm_layer=norm_layer, use_dropout=use_dropout)
        # gradually reduce the number of filters from ngf * 8 to ngf
        unet_block = UnetSkipConnectionBlock(ngf * 4, ngf * 8, input_nc=None, submodule=unet_block, norm_layer=norm_layer)
        unet_block = UnetSkipConnectionBlock(ngf * 2, ngf * 4, input_nc=None, submodule=unet_block, norm_layer=norm_layer)
        unet_block = UnetSkipConnectionBlock(ngf, ngf * 2, input_nc=None, submodule=unet_block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=unet_block, outermost=True,
                                             norm_layer=norm_layer)  # add the outermost layer

    def forward(self, input):  # noqa: A002
        return self.model(input)


def pix2pix_init_weights(net: nn.Module, init_gain: float = 0.02) -> None:
    """``init_weights(net, 'normal', 0.02)`` from models/networks.py."""

    def init_func(m):
        classname = m.__class__.__name__
        if hasattr(m, "weight") and (classname.find("Conv") != -1 or classname.find("Linear") != -1):
            nn.init.normal_(m.weight.data, 0.0, init_gain)
            if hasattr(m, "bias") and m.bias is not None:
                nn.init.constant_(m.bias.data, 0.0)
        elif classname.find("BatchNorm2d") != -1:
            nn.init.normal_(m.weight.data, 1.0, init_gain)
            nn.init.constant_(m.bias.data, 0.0)

    net.apply(init_func)


# ---------------------------------------------------------------------------
# 5. ESPCN (Shi et al. 2016): conv5x5-tanh, conv3x3-tanh, conv3x3 -> PixelShuffle
# ---------------------------------------------------------------------------
class ESPCN(nn.Module):
    def __init__(self, upscale_factor: int = 3, num_channels: int = 1, c1: int = 32, c2: int = 16):
        super().__init__()
        self.first_part = nn.Sequential(
            nn.Conv2d(num_channels, c1, kernel_size=5, padding=5 // 2),
            nn.Tanh(),
            nn.Conv2d(c1, c2, kernel_size=3, padding=3 // 2),
            nn.Tanh(),
        )
        self.last_part = nn.Sequential(
            nn.Conv2d(c2, num_channels * (upscale_factor ** 2), kernel_size=3, padding=3 // 2),
            nn.PixelShuffle(upscale_factor),
        )

    def forward(self, x):
        x = self.first_part(x)
        x = self.last_part(x)
        return x


# ---------------------------------------------------------------------------
# 6. Fast neural style TransformerNet (pytorch/examples fast_neural_style/neural_style/transformer_net.py)
# ---------------------------------------------------------------------------
class ConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride):
        super().__init__()
        reflection_padding = kernel_size // 2
        self.reflection_pad = nn.ReflectionPad2d(reflection_padding)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        out = self.reflection_pad(x)
        out = self.conv2d(out)
        return out


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, kernel_size=3, stride=1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x):
        residual = x
        out = self.relu(self.in1(self.conv1(x)))
        out = self.in2(self.conv2(out))
        out = out + residual
        return out


class UpsampleConvLayer(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, upsample=None):
        super().__init__()
        self.upsample = upsample
        reflection_padding = kernel_size // 2
        self.reflection_pad = nn.ReflectionPad2d(reflection_padding)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x):
        x_in = x
        if self.upsample:
            x_in = F.interpolate(x_in, mode="nearest", scale_factor=self.upsample)
        out = self.reflection_pad(x_in)
        out = self.conv2d(out)
        return out


class TransformerNet(nn.Module):
    def __init__(self, w: int = 6):
        super().__init__()
        # Initial convolution layers (original widths: 32, 64, 128)
        self.conv1 = ConvLayer(3, w, kernel_size=9, stride=1)
        self.in1 = nn.InstanceNorm2d(w, affine=True)
        self.conv2 = ConvLayer(w, 2 * w, kernel_size=3, stride=2)
        self.in2 = nn.InstanceNorm2d(2 * w, affine=True)
        self.conv3 = ConvLayer(2 * w, 4 * w, kernel_size=3, stride=2)
        self.in3 = nn.InstanceNorm2d(4 * w, affine=True)
        # Residual layers
        self.res1 = ResidualBlock(4 * w)
        self.res2 = ResidualBlock(4 * w)
        self.res3 = ResidualBlock(4 * w)
        self.res4 = ResidualBlock(4 * w)
        self.res5 = ResidualBlock(4 * w)
        # Upsampling Layers
        self.deconv1 = UpsampleConvLayer(4 * w, 2 * w, kernel_size=3, stride=1, upsample=2)
        self.in4 = nn.InstanceNorm2d(2 * w, affine=True)
        self.deconv2 = UpsampleConvLayer(2 * w, w, kernel_size=3, stride=1, upsample=2)
        self.in5 = nn.InstanceNorm2d(w, affine=True)
        self.deconv3 = ConvLayer(w, 3, kernel_size=9, stride=1)
        # Non-linearities
        self.relu = nn.ReLU()

    def forward(self, X):
        y = self.relu(self.in1(self.conv1(X)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res1(y)
        y = self.res2(y)
        y = self.res3(y)
        y = self.res4(y)
        y = self.res5(y)
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        y = self.deconv3(y)
        return y


# ---------------------------------------------------------------------------
# 7. TAESD-style tiny decoder (madebyollin/taesd, taesd.py)
# ---------------------------------------------------------------------------
def taesd_conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(taesd_conv(n_in, n_out), nn.ReLU(), taesd_conv(n_out, n_out), nn.ReLU(),
                                  taesd_conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def TinyDecoder(latent_channels: int = 4, c: int = 12) -> nn.Sequential:
    """``Decoder()`` from taesd.py with the 64-channel width reduced to ``c``."""
    return nn.Sequential(
        Clamp(), taesd_conv(latent_channels, c), nn.ReLU(),
        Block(c, c), Block(c, c), Block(c, c), nn.Upsample(scale_factor=2), taesd_conv(c, c, bias=False),
        Block(c, c), Block(c, c), Block(c, c), nn.Upsample(scale_factor=2), taesd_conv(c, c, bias=False),
        Block(c, c), Block(c, c), Block(c, c), nn.Upsample(scale_factor=2), taesd_conv(c, c, bias=False),
        Block(c, c), taesd_conv(c, 3),
    )


# ---------------------------------------------------------------------------
# 8. MobileNet-style image-to-image generator with depthwise-separable residual blocks
# ---------------------------------------------------------------------------
def dw_separable(cin: int, cout: int, stride: int, act: Callable[[], nn.Module]) -> nn.Sequential:
    """MobileNetV1 unit: depthwise 3x3 (groups=cin) + BN + act, pointwise 1x1 + BN + act."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        act(),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


class DepthwiseResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU6(inplace=True),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.Hardswish(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU6(inplace=True),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.body(x)


class MobileResnetGenerator(nn.Module):
    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 16, n_blocks: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_nc, ngf, 3, 1, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.Hardswish(inplace=True),
        )
        self.down = nn.Sequential(
            dw_separable(ngf, ngf * 2, 2, lambda: nn.ReLU6(inplace=True)),
            dw_separable(ngf * 2, ngf * 4, 2, lambda: nn.ReLU6(inplace=True)),
        )
        self.blocks = nn.Sequential(*[DepthwiseResBlock(ngf * 4) for _ in range(n_blocks)])
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            dw_separable(ngf * 4, ngf * 2, 1, lambda: nn.ReLU6(inplace=True)),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            dw_separable(ngf * 2, ngf, 1, lambda: nn.Hardswish(inplace=True)),
        )
        self.head = nn.Sequential(nn.Conv2d(ngf, output_nc, 3, 1, 1), nn.Tanh())

    def forward(self, x):
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


# ---------------------------------------------------------------------------
# 9. Real-ESRGAN x2 (xinntao/Real-ESRGAN, basicsr/archs/rrdbnet_arch.py RRDBNet, scale=2)
# ---------------------------------------------------------------------------
class ResidualDenseBlock(nn.Module):
    """basicsr ``ResidualDenseBlock``: five 3x3 convs, each reading the concat of all before; x + 0.2 * out."""

    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(num_feat + i * num_grow_ch, num_feat if i == 4 else num_grow_ch, 3, 1, 1) for i in range(5))
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        feats = [x]
        for i, conv in enumerate(self.convs):
            out = conv(torch.cat(feats, 1))
            if i < 4:
                feats.append(self.lrelu(out))
        return out * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat: int, num_grow_ch: int):
        super().__init__()
        self.rdbs = nn.Sequential(*[ResidualDenseBlock(num_feat, num_grow_ch) for _ in range(3)])

    def forward(self, x):
        return self.rdbs(x) * 0.2 + x


class RRDBNetX2(nn.Module):
    """``RRDBNet(scale=2)``: F.pixel_unshuffle(x, 2) first (the x2 model runs its trunk at half size),
    then RRDB trunk, two nearest x2 upsamplings, conv_hr, conv_last."""

    def __init__(self, num_feat: int = 8, num_block: int = 1, num_grow_ch: int = 4):
        super().__init__()
        self.conv_first = nn.Conv2d(3 * 4, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x):
        feat = self.conv_first(F.pixel_unshuffle(x, 2))
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# ---------------------------------------------------------------------------
# Family registry
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class InputSpec:
    arg: str                 # forward() argument name (dynamo exporter uses it as the ONNX name)
    onnx_name: str           # name passed as input_names for legacy_dyn
    shape: tuple             # shape at batch 1
    kind: str                # 'normal' | 'image_pm1' | 'image_01' | 'image_255' | 'label:<n>'


@dataclasses.dataclass
class Family:
    name: str
    build: Callable[[], nn.Module]
    inputs: list
    output_names: list
    spatial_dynamic: bool
    description: str
    init: Callable[[nn.Module], None] | None = None
    # std of the last conv's output (pre-Tanh) after calibration; None = leave the init as is
    out_std: float | None = None


FAMILIES = [
    Family(
        "dcgan",
        lambda: DCGANGenerator(nz=100, ngf=4, nc=3),
        [InputSpec("input", "latent", (1, 100, 1, 1), "normal")],
        ["image"], False,
        "PyTorch DCGAN tutorial Generator, nz=100, ngf=4 (orig. 64), 64x64 RGB, Tanh",
        init=lambda m: m.apply(dcgan_weights_init),
        out_std=1.0,
    ),
    Family(
        "cgan_dcgan",
        lambda: ConditionalDCGANGenerator(nz=32, n_classes=10, emb_dim=16, ngf=8, nc=3),
        [InputSpec("noise", "noise", (1, 32), "normal"), InputSpec("labels", "label", (1,), "label:10")],
        ["image"], False,
        "class-conditional DCGAN: cat(z[N,32], Embedding(10,16)(label[N] int64)) -> view -> 4x ConvT; 32x32 RGB",
        init=lambda m: m.apply(dcgan_weights_init),
        out_std=1.0,
    ),
    Family(
        "cyclegan_resnet",
        lambda: ResnetGenerator(3, 3, ngf=8, norm_layer=nn.InstanceNorm2d, use_dropout=False, n_blocks=3),
        [InputSpec("input", "input", (1, 3, 64, 64), "image_pm1")],
        ["output"], True,
        "CycleGAN ResnetGenerator, ngf=8 (orig. 64), 3 res blocks (orig. 9), InstanceNorm2d(affine=False)",
        init=lambda m: pix2pix_init_weights(m),
        out_std=1.0,
    ),
    Family(
        "pix2pix_unet",
        lambda: UnetGenerator(3, 3, num_downs=6, ngf=3, norm_layer=nn.BatchNorm2d, use_dropout=True),
        [InputSpec("input", "input", (1, 3, 64, 64), "image_pm1")],
        ["output"], False,
        "pix2pix UnetGenerator (unet_64: num_downs=6), ngf=3 (orig. 64), BatchNorm, use_dropout=True",
        init=lambda m: pix2pix_init_weights(m),
        out_std=1.0,
    ),
    Family(
        "espcn",
        lambda: ESPCN(upscale_factor=3, num_channels=1, c1=32, c2=16),
        [InputSpec("x", "input", (1, 1, 32, 32), "image_01")],
        ["output"], True,
        "ESPCN x3 on the Y channel: conv5x5(32)+tanh, conv3x3(16)+tanh, conv3x3(9) -> PixelShuffle(3) (orig. 64/32)",
    ),
    Family(
        "fast_style",
        lambda: TransformerNet(w=4),
        [InputSpec("X", "input", (1, 3, 64, 64), "image_255")],
        ["output"], True,
        "pytorch/examples fast_neural_style TransformerNet, widths 4/8/16 (orig. 32/64/128), 5 res blocks, "
        "input in [0,255], unbounded output",
    ),
    Family(
        "tiny_decoder",
        lambda: TinyDecoder(latent_channels=4, c=12),
        [InputSpec("input", "latent", (1, 4, 8, 8), "normal")],
        ["image"], False,
        "TAESD Decoder (Clamp, conv, 10 Blocks, 3x Upsample nearest), width 12 (orig. 64), 4x8x8 -> 3x64x64",
        out_std=0.3,
    ),
    Family(
        "mobilenet_resnet",
        lambda: MobileResnetGenerator(3, 3, ngf=16, n_blocks=3),
        [InputSpec("x", "input", (1, 3, 64, 64), "image_pm1")],
        ["output"], True,
        "MobileNet-style generator: dw-separable stride-2 downs, 3 dw-separable residual blocks "
        "(ReLU6/Hardswish, BatchNorm), bilinear Upsample(align_corners=False), Tanh",
        out_std=1.0,
    ),
    Family(
        "realesrgan_x2",
        lambda: RRDBNetX2(num_feat=8, num_block=1, num_grow_ch=4),
        [InputSpec("x", "input", (1, 3, 32, 32), "image_01")],
        ["output"], True,
        "Real-ESRGAN RRDBNet scale=2: pixel_unshuffle(2), 1 RRDB (orig. 23), width 8/4 (orig. 64/32), "
        "2x nearest upsample; 32x32 -> 64x64",
        out_std=0.3,
    ),
]
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}


def stable_seed(*parts: str) -> int:
    return (BASE_SEED + zlib.crc32("/".join(parts).encode())) % (2 ** 31)


def make_inputs(fam: Family, batch: int, gen: torch.Generator) -> tuple:
    out = []
    for spec in fam.inputs:
        shape = (batch,) + tuple(spec.shape[1:])
        if spec.kind == "normal":
            t = torch.randn(shape, generator=gen)
        elif spec.kind.startswith("label:"):
            n = int(spec.kind.split(":")[1])
            t = torch.randint(0, n, shape, generator=gen, dtype=torch.int64)
        elif spec.kind.startswith("image"):
            # uint8 pixels, normalised the way the respective training code does it
            px = torch.randint(0, 256, shape, generator=gen, dtype=torch.int64).to(torch.float32)
            t = {"image_pm1": px / 127.5 - 1.0, "image_01": px / 255.0, "image_255": px}[spec.kind]
        else:
            raise ValueError(spec.kind)
        out.append(t.contiguous())
    return tuple(out)


def jitter_norm_affine(model: nn.Module, gen: torch.Generator) -> None:
    """Make affine norm params look trained (non-unit scale, non-zero shift)."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            with torch.no_grad():
                m.weight.mul_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=gen))


def build_model(fam: Family) -> nn.Module:
    torch.manual_seed(stable_seed(fam.name, "init"))
    model = fam.build()
    if fam.init is not None:
        fam.init(model)
    gen = torch.Generator().manual_seed(stable_seed(fam.name, "train"))
    jitter_norm_affine(model, gen)
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        # a few train-mode passes so BatchNorm running stats are non-trivial
        model.train()
        with torch.no_grad():
            for _ in range(8):
                model(*make_inputs(fam, 4, gen))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fam.out_std is not None:
        calibrate_output(model, fam, gen)
    return model


def calibrate_output(model: nn.Module, fam: Family, gen: torch.Generator) -> None:
    """Rescale the last conv so outputs span an image-like range, as a trained generator's do.

    The reference inits (N(0, 0.02) for DCGAN/pix2pix) give outputs of ~1e-2, which makes an
    absolute-tolerance comparison nearly meaningless.  Only the final layer is touched (it
    comes after every norm layer), so BatchNorm statistics stay valid.
    """
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    seen = []
    h = last.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        model(*make_inputs(fam, 4, gen))
    h.remove()
    k = fam.out_std / float(seen[0].std())
    with torch.no_grad():
        last.weight.mul_(k)
        if last.bias is not None:
            last.bias.mul_(k)


def count_macs(model: nn.Module, args: tuple) -> int:
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += out.numel() * k
        elif isinstance(m, nn.ConvTranspose2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.out_channels // m.groups)
            total += inp[0].numel() * k
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        model(*args)
    for h in handles:
        h.remove()
    return total


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    family: str
    variant: str
    exporter: str
    ok: bool
    note: str = ""
    path: Path | None = None
    opset: int | None = None
    inputs: list = dataclasses.field(default_factory=list)   # (name, shape, dtype)
    outputs: list = dataclasses.field(default_factory=list)
    size: int = 0
    data_size: int = 0
    max_abs: float | None = None
    ops: Counter = dataclasses.field(default_factory=Counter)
    macs: int = 0
    params: int = 0


@contextlib.contextmanager
def quiet(caught: list | None = None):
    """Swallow the exporters' chatter (re-printed if something fails); collect exporter warnings."""
    buf = io.StringIO()
    onnx_logger = logging.getLogger("torch.onnx")
    old_level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                try:
                    yield buf
                except BaseException:
                    sys.__stderr__.write(buf.getvalue()[-4000:])
                    raise
        if caught is not None:
            for w in ws:
                if issubclass(w.category, torch.onnx.errors.OnnxExporterWarning):
                    msg = " ".join(str(w.message).split())
                    if msg not in caught:
                        caught.append(msg)
    finally:
        onnx_logger.setLevel(old_level)


def export_legacy(model, args, path: Path, opset: int, fam: Family, dynamic: bool, caught: list) -> None:
    with quiet(caught):
        if not dynamic:
            # the minimal call most users write: no names, static shapes
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset)
            return
        input_names = [s.onnx_name for s in fam.inputs]
        output_names = list(fam.output_names)
        dynamic_axes = {}
        for s in fam.inputs:
            axes = {0: "batch_size"}
            if fam.spatial_dynamic and len(s.shape) == 4:
                axes.update({2: "height", 3: "width"})
            dynamic_axes[s.onnx_name] = axes
        for o in output_names:
            axes = {0: "batch_size"}
            if fam.spatial_dynamic:
                axes.update({2: "out_height", 3: "out_width"})
            dynamic_axes[o] = axes
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)


def export_dynamo(model, args, path: Path, fam: Family, dynamic: bool, caught: list,
                  opset: int | None = None, spatial: bool = False) -> None:
    """spatial: H and W dynamic too, as even sizes (what a pixel_unshuffle(2) model takes)."""
    kwargs = {}
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=1024)
        dims = {0: batch}
        if spatial:
            dims.update({2: 2 * torch.export.Dim("half_height", min=4, max=1024),
                         3: 2 * torch.export.Dim("half_width", min=4, max=1024)})
        kwargs["dynamic_shapes"] = tuple(dims for _ in fam.inputs)
    if opset is not None:
        kwargs["opset_version"] = opset
    with quiet(caught):
        torch.onnx.export(model, args, str(path), dynamo=True, **kwargs)
    relativize_stack_traces(path)


def relativize_stack_traces(path: Path) -> None:
    """The dynamo exporter stores Python stack traces (absolute file paths) in node metadata.

    Keep them (real exports have them) but make the paths relative to the repository so the
    files do not depend on where the checkout lives.  Only the .onnx proto is rewritten; the
    external-data file is left untouched (initializers keep their location/offset/length).
    """
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    prefix = str(REPO) + os.sep
    changed = False

    def fix(props):
        nonlocal changed
        for p in props:
            if prefix in p.value:
                p.value = p.value.replace(prefix, "")
                changed = True

    def walk(g):
        for n in g.node:
            fix(n.metadata_props)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    walk(m.graph)
    for f in m.functions:
        for n in f.node:
            fix(n.metadata_props)
    fix(m.metadata_props)
    if changed:
        onnx.save(m, str(path))


def describe_value_info(vi) -> tuple:
    import onnx

    tt = vi.type.tensor_type
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return vi.name, tuple(dims), onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name


def verify(res: Result, fam: Family, model: nn.Module, batch: int) -> None:
    import onnx
    import onnxruntime as ort

    path = res.path
    onnx.checker.check_model(str(path))  # path form: handles external data
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        res.note += f" full_check(strict shape inference) failed: {str(e).splitlines()[0][:200]};"
    m = onnx.load(str(path), load_external_data=False)
    res.opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    init_names = {i.name for i in m.graph.initializer}
    graph_inputs = [vi for vi in m.graph.input if vi.name not in init_names]
    res.inputs = [describe_value_info(vi) for vi in graph_inputs]
    res.outputs = [describe_value_info(vi) for vi in m.graph.output]
    if not res.variant.endswith("_dyn"):
        for name, shape, _ in res.outputs:
            if any(not isinstance(d, int) for d in shape):
                res.note += (f" output `{name}` has symbolic dims {fmt_shape(shape)} although all inputs are static"
                             " (legacy exporter lost shape info, e.g. around reflect Pad); real shape is "
                             "in the .npz;")

    def walk(g):
        for n in g.node:
            res.ops[(n.domain or "") + ("::" if n.domain else "") + n.op_type] += 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    walk(m.graph)
    for f in m.functions:
        walk(f)
    res.size = path.stat().st_size
    data = path.with_name(path.name + ".data")
    res.data_size = data.stat().st_size if data.exists() else 0
    ext = [i.name for i in m.graph.initializer
           if i.data_location == onnx.TensorProto.EXTERNAL]
    if ext and not data.exists():
        raise RuntimeError(f"{path.name}: external initializers but no {data.name}")

    if len(graph_inputs) != len(fam.inputs):
        raise RuntimeError(f"{path.name}: {len(graph_inputs)} ONNX inputs, expected {len(fam.inputs)}")

    gen = torch.Generator().manual_seed(stable_seed(fam.name, res.variant, "reference"))
    args = make_inputs(fam, batch, gen)
    with torch.no_grad():
        ref = model(*[a.clone() for a in args])
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    if len(refs) != len(m.graph.output):
        raise RuntimeError(f"{path.name}: {len(m.graph.output)} ONNX outputs vs {len(refs)} torch outputs")

    feeds = {vi.name: a.numpy() for vi, a in zip(graph_inputs, args)}
    arrays = dict(feeds)
    for vi, r in zip(m.graph.output, refs):
        arrays["output:" + vi.name] = r.numpy()
    npz = path.with_suffix(".npz")
    np.savez_compressed(npz, **arrays)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    loaded = np.load(npz)
    outs = sess.run(None, {vi.name: loaded[vi.name] for vi in graph_inputs})
    worst = 0.0
    for vi, o in zip(m.graph.output, outs):
        r = loaded["output:" + vi.name]
        if o.shape != r.shape:
            raise RuntimeError(f"{path.name}: ORT output {vi.name} shape {o.shape} != torch {r.shape}")
        worst = max(worst, float(np.max(np.abs(o.astype(np.float64) - r.astype(np.float64)))))
    res.max_abs = worst
    if worst > ATOL:
        res.ok = False
        res.note += f" ORT vs torch max-abs {worst:.3g} > {ATOL};"


def run_variant(fam: Family, model: nn.Module, variant: str, out: Path, macs: int, params: int) -> Result:
    path = out / f"{fam.name}__{variant}.onnx"
    data = path.with_name(path.name + ".data")
    for p in (path, data, path.with_suffix(".npz")):
        if p.exists():
            p.unlink()
    dynamic = variant.endswith("_dyn")
    exporter = "dynamo" if variant.startswith("dynamo") else "legacy"
    res = Result(fam.name, variant, exporter, ok=True, path=path, macs=macs, params=params)
    batch = 2 if dynamic else 1
    gen = torch.Generator().manual_seed(stable_seed(fam.name, variant, "export"))
    # dynamo specialises a size-1 dim, so trace the dynamic variants with batch 2
    args = make_inputs(fam, batch, gen)
    caught: list = []
    try:
        if exporter == "legacy":
            opset = int(variant.split("_op")[1]) if "_op" in variant else 17
            export_legacy(model, args, path, opset, fam, dynamic, caught)
        else:
            opset = int(variant.split("_op")[1]) if "_op" in variant else None
            export_dynamo(model, args, path, fam, dynamic, caught, opset, spatial="_hw" in variant)
    except Exception as e:  # noqa: BLE001
        res.ok = False
        res.note = f"export failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
        for p in (path, data):
            if p.exists():
                p.unlink()
        return res
    for msg in caught:
        res.note += f" exporter warning: {msg[:300]};"
    try:
        verify(res, fam, model, batch)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        res.ok = False
        res.note += f" verification failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    return res


VARIANTS = ["legacy_b1", "legacy_dyn", "dynamo_dyn"]
EXTRA_VARIANTS = {"dcgan": ["legacy_op13", "legacy_op21"], "realesrgan_x2": ["dynamo_hw_dyn"]}


def fmt_shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def fmt_io(items) -> str:
    return "<br>".join(f"`{n}` {fmt_shape(s)} {dt}" for n, s, dt in items)


def fmt_size(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def fmt_macs(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def write_readme(out: Path, results: list[Result]) -> None:
    ok = [r for r in results if r.ok]
    lines = [
        "# Generator-family ONNX fixtures",
        "",
        "Small ONNX models that look like what users export from PyTorch for the generator",
        "families edgegen supports. Weights are random but seeded; they are faithful",
        "re-implementations of the reference models with reduced channel widths.",
        "Generated by `tools/export_families.py` -- do not edit by hand.",
        "",
        "Regenerate (needs torch, onnx, onnxruntime, onnxscript; nothing at test time needs torch):",
        "",
        "```",
        ".venv/bin/python tools/export_families.py",
        "```",
        "",
        f"Produced with torch {torch.__version__}. Re-running with the same versions reproduces the files",
        "byte for byte (other torch/onnxscript versions may change node names, ops or opsets).",
        "",
        "## Files",
        "",
        "* `<family>__<variant>.onnx` - the model.",
        "* `<family>__<variant>.onnx.data` - external weights (dynamo exporter default); load with",
        "  `onnx.load(path)` / `onnx.checker.check_model(path)` (path form) so it is found.",
        "* `<family>__<variant>.npz` - reference: ONNX input name -> input array, and",
        "  `output:<onnx output name>` -> PyTorch output. Batch 1 for fixed-batch variants,",
        "  batch 2 for `*_dyn`. onnxruntime matches these within 1e-4 max-abs (column `ort err`).",
        "",
        "Variants:",
        "",
        "* `legacy_b1`: `torch.onnx.export(model, args, f, dynamo=False, opset_version=17)`, no",
        "  input/output names given (auto-generated names), batch fixed at 1.",
        "* `legacy_dyn`: same plus `input_names`/`output_names` and `dynamic_axes` on the batch",
        "  dim (`batch_size`), and on H/W (`height`/`width`, outputs `out_height`/`out_width`)",
        "  for the fully-convolutional image->image families (cyclegan_resnet, espcn,",
        "  fast_style, mobilenet_resnet, realesrgan_x2).",
        "* `dynamo_dyn`: `torch.onnx.export(model, args, f, dynamo=True,",
        "  dynamic_shapes=({0: Dim('batch', min=1, max=1024)}, ...))`, traced at batch 2; names",
        "  come from the forward() arguments; weights in `.onnx.data`.",
        "* `legacy_op13` / `legacy_op21` (dcgan only): legacy exporter at another opset.",
        "* `dynamo_hw_dyn` (realesrgan_x2 only): the dynamo exporter with even H and W dynamic too, so its",
        "  pixel_unshuffle computes its shapes from the input's Shape.",
        "",
        "All models were exported in `eval()` mode. Weights use each reference's own init",
        "(DCGAN/pix2pix `normal(0, 0.02)`, PyTorch defaults elsewhere); BatchNorm running stats",
        "come from 8 train-mode passes over random batches; affine norm params were jittered so",
        "they are not the identity; for " + ", ".join(f.name for f in FAMILIES if f.out_std) + " the",
        "last conv was rescaled so outputs span an image-like range (pre-Tanh std 1.0; TAESD",
        "std 0.3), as a trained generator's would.",
        "",
        "Reference inputs: latents are `randn`; images are uint8 pixels normalised as the",
        "family's training code does (`[-1,1]` for GANs/mobilenet, `[0,1]` Y channel for ESPCN,",
        "`[0,255]` for fast_style); labels are int64 in `[0,10)`.",
        "",
        "## Exporter artifacts worth knowing",
        "",
        f"Observed with torch {torch.__version__}; these are what real exports look like, so the",
        "fixtures keep them.",
        "",
        "* Legacy exporter, `ReflectionPad2d`: each pad becomes a ~12-node int64 subgraph",
        "  (`Constant` -> `ConstantOfShape` -> `Concat` -> `Reshape` -> `Slice` with step -1 ->",
        "  `Transpose` -> `Reshape` -> `Cast`) feeding `Pad(mode=reflect)`'s `pads` input; it is",
        "  not constant-folded even at fixed batch. ONNX shape inference then loses the spatial",
        "  dims, so `cyclegan_resnet__legacy_b1` / `fast_style__legacy_b1` declare outputs like",
        "  `[Tanh259_dim_0,3,Tanh259_dim_0,Tanh259_dim_3]` (the same symbol for batch and",
        "  height!) although the input is `[1,3,64,64]`.",
        "* Legacy exporter deduplicates equal initializers: the CycleGAN conv biases (all zero",
        "  from `init_weights`) become one initializer plus `Identity` nodes.",
        "* Legacy exporter fuses Conv+BatchNorm but not ConvTranspose+BatchNorm; the dynamo",
        "  exporter (onnxscript optimizer) fuses both, so dynamo files have no",
        "  `BatchNormalization` and ConvTranspose gets a synthesized `*_bias` initializer.",
        "* Legacy `dcgan__legacy_op21`: opset 21 is above the legacy exporter's max (20); it",
        "  only warns and stamps opset 21 on opset-20 symbolics (valid here: only",
        "  ConvTranspose/BatchNormalization/Relu/Tanh). `legacy_op13` has IR 7 and",
        "  `BatchNormalization` without `training_mode`.",
        "* `legacy_b1` files carry auto-generated names: inputs `input.1`, `onnx::Concat_0`,",
        "  `onnx::ConvTranspose_0`, `onnx::Div_0`; outputs are numbers (`39`, `259`).",
        "* `cgan_dcgan__legacy_dyn`: `view(x.size(0), -1, 1, 1)` becomes",
        "  `Shape`/`Gather`/`Unsqueeze`/`Concat`/`Reshape`; dynamo writes `Reshape(allowzero=1)`.",
        "* Dynamo files: IR 10, opset 20, weights in `.onnx.data` (small tensors such as biases",
        "  stay inline), node `metadata_props` with module paths and Python stack traces (made",
        "  repository-relative by the script), `Resize` with an empty `roi` input.",
        "* Upsampling: nearest `Resize` uses `asymmetric`/`floor`; bilinear uses `half_pixel`.",
        "  `PixelShuffle` is `DepthToSpace(mode=CRD)`; `ReLU6` is `Clip` with min/max inputs;",
        "  `Hardswish` is the `HardSwish` op; Dropout (pix2pix, eval) disappears.",
        "",
        "## Families",
        "",
        "| family | model |",
        "|---|---|",
    ]
    for f in FAMILIES:
        lines.append(f"| `{f.name}` | {f.description} |")
    lines += [
        "",
        "## Table",
        "",
        "MACs are for batch 1 at the reference spatial size (Conv/ConvTranspose/Gemm only).",
        "",
        "| family | variant | exporter | opset | inputs | outputs | .onnx | .onnx.data | MACs | params | ort err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ok:
        lines.append(
            f"| {r.family} | {r.variant} | {r.exporter} | {r.opset} | {fmt_io(r.inputs)} | {fmt_io(r.outputs)} "
            f"| {fmt_size(r.size)} | {fmt_size(r.data_size) if r.data_size else '-'} | {fmt_macs(r.macs)} "
            f"| {r.params:,} | {r.max_abs:.1e} |"
        )
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "## Not produced / failing", ""]
        for r in failed:
            lines.append(f"* `{r.family}__{r.variant}`: {r.note.strip()}")
    notes = [r for r in ok if r.note.strip()]
    if notes:
        lines += ["", "## Notes", ""]
        for r in notes:
            lines.append(f"* `{r.family}__{r.variant}`: {r.note.strip()}")

    total = Counter()
    for r in ok:
        total.update(r.ops)
    lines += [
        "",
        "## Op inventory",
        "",
        "Op types (count over all files) and the files using them:",
        "",
        "| op | nodes | files |",
        "|---|---|---|",
    ]
    for op, n in sorted(total.items()):
        users = [f"{r.family}__{r.variant}" for r in ok if op in r.ops]
        short = ", ".join(users) if len(users) <= 6 else f"{len(users)} files"
        lines.append(f"| {op} | {n} | {short} |")
    lines += ["", "Per file:", ""]
    for r in ok:
        ops = ", ".join(f"{k}x{v}" if v > 1 else k for k, v in sorted(r.ops.items()))
        lines.append(f"* `{r.family}__{r.variant}`: {ops}")
    total_bytes = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.name != "README.md")
    lines += ["", f"Total size of the fixtures: {total_bytes / 1024 / 1024:.2f} MiB.", ""]
    (out / "README.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", help="family names (README is not rewritten)")
    a = ap.parse_args(argv)
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    fams = [FAMILY_BY_NAME[n] for n in a.only] if a.only else FAMILIES
    if not a.only:
        for p in out.iterdir():
            if "__" in p.name and (p.name.endswith((".onnx", ".onnx.data", ".npz"))):
                p.unlink()

    results: list[Result] = []
    for fam in fams:
        model = build_model(fam)
        gen = torch.Generator().manual_seed(stable_seed(fam.name, "macs"))
        macs = count_macs(model, make_inputs(fam, 1, gen))
        params = sum(p.numel() for p in model.parameters())
        for variant in VARIANTS + EXTRA_VARIANTS.get(fam.name, []):
            res = run_variant(fam, model, variant, out, macs, params)
            results.append(res)
            status = "ok " if res.ok else "FAIL"
            size = (res.size + res.data_size) / 1024
            err = f"{res.max_abs:.1e}" if res.max_abs is not None else "-"
            print(f"[{status}] {fam.name}__{variant}: opset={res.opset} size={size:.1f}KiB err={err} {res.note}",
                  flush=True)

    if not a.only:
        write_readme(out, results)
    total = Counter()
    for r in results:
        total.update(r.ops)
    print("ops:", ", ".join(f"{k}:{v}" for k, v in sorted(total.items())))
    n_bad = sum(not r.ok for r in results)
    print(f"{len(results) - n_bad}/{len(results)} variants ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
