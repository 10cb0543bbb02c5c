"""Train, export and evaluate the ``upscale2x`` zoo model.

upscale2x is a fully-convolutional x2 super-resolution network (ESPCN-like):
``image`` float32 [N,3,H,W] in [0,1] -> ``image_2x`` float32 [N,3,2H,2W] in
[0,1], dynamic N, H, W.

Architecture (ESPCN-style, plain convolutions so that int8 kernels have work
to do): a 3x3 stem conv (3 -> 64), two 3x3 convs at 64 channels, a 3x3 conv to
12 channels and PixelShuffle(2) (ONNX DepthToSpace), all with ReLU between.
The network predicts a residual on top of a bicubic x2 upsampling of the input
(global skip); the last conv starts at zero, so training starts exactly at the
bicubic baseline.  Output is clamped to [0,1].  Receptive field: 9x9 input
pixels (a halo of 4), which keeps region-of-interest and edit requests cheap.

Data: colour photographs bundled with scikit-image (no download needed).
``chelsea`` is held out for validation (and ``cat``, the same photo, is not
used).  Low-resolution inputs are made by 2x downsampling with either area
averaging or antialiased bicubic (Pillow), half of each batch each.

Default command (produces the shipped model):

    .venv/bin/python tools/train_upscaler.py

Outputs: ``--out`` (ONNX, default edgegen/zoo/upscale2x.onnx), the summary JSON
next to it (``upscale2x.train.json``) and ``docs/zoo/upscale2x_sample.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_common import start_run, warmup_cosine  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN_IMAGES = ["astronaut", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "stereo_motorcycle"]
VAL_IMAGE = "chelsea"


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
class Upscale2x(nn.Module):
    """ESPCN-style: plain 3x3 convs at `c` channels (ReLU), a 3x3 conv to 12 channels, PixelShuffle(2),
    added to a bicubic x2 upsampling of the input and clamped to [0, 1]."""

    def __init__(self, c: int = 64, layers: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.body = nn.Sequential(*[m for _ in range(layers) for m in (nn.Conv2d(c, c, 3, 1, 1), nn.ReLU())])
        self.tail = nn.Conv2d(c, 3 * 4, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, image):
        h = self.body(F.relu(self.stem(image)))
        res = self.shuffle(self.tail(h))
        base = F.interpolate(image, scale_factor=2.0, mode="bicubic", align_corners=False)
        return (base + res).clamp(0.0, 1.0)


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = [0]

    def fn(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total[0] += out[0].numel() * k

    hooks = [m.register_forward_hook(fn) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return total[0]


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def load_photo(name: str) -> np.ndarray:
    import skimage.data as skd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = getattr(skd, name)()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    assert img.ndim == 3 and img.shape[2] == 3, (name, img.shape)
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    return np.ascontiguousarray(img[:h, :w])


def downsample(hr_u8: np.ndarray, method: str) -> np.ndarray:
    """x2 downsampling; returns float32 HWC in [0,1]."""
    h, w = hr_u8.shape[:2]
    if method == "area":
        x = hr_u8.astype(np.float32) / 255.0
        return x.reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
    if method == "bicubic":  # Pillow resize is antialiased (MATLAB-imresize like)
        im = Image.fromarray(hr_u8).resize((w // 2, h // 2), Image.BICUBIC)
        return np.asarray(im, dtype=np.float32) / 255.0
    raise ValueError(method)


def to_t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


class PatchSampler:
    """Aligned random (LR, HR) crops with flips / transposes / channel shuffles."""

    def __init__(self, names, seed):
        self.hr, self.lr = [], []
        for n in names:
            hr = load_photo(n)
            self.hr.append(to_t(hr.astype(np.float32) / 255.0))
            self.lr.append({m: to_t(downsample(hr, m)) for m in ("area", "bicubic")})
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int, lr_size: int):
        xs, ys = [], []
        for i in range(n):
            k = int(self.rng.integers(len(self.hr)))  # images picked uniformly
            method = "area" if i % 2 == 0 else "bicubic"
            lr = self.lr[k][method]
            _, h, w = lr.shape
            t = int(self.rng.integers(h - lr_size + 1))
            l = int(self.rng.integers(w - lr_size + 1))
            x = lr[:, t:t + lr_size, l:l + lr_size]
            y = self.hr[k][:, 2 * t:2 * t + 2 * lr_size, 2 * l:2 * l + 2 * lr_size]
            if self.rng.random() < 0.5:
                x, y = x.flip(2), y.flip(2)
            if self.rng.random() < 0.5:
                x, y = x.flip(1), y.flip(1)
            if self.rng.random() < 0.5:
                x, y = x.transpose(1, 2), y.transpose(1, 2)
            perm = torch.from_numpy(self.rng.permutation(3))
            xs.append(x[perm])
            ys.append(y[perm])
        return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.clamp(0, 1), b).item()
    return 10.0 * math.log10(1.0 / mse)


def bicubic_up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False).clamp(0, 1)


# --------------------------------------------------------------------------
# export / verification
# --------------------------------------------------------------------------
def export_onnx(model: nn.Module, path: str, description: str) -> None:
    import onnx

    model.eval()
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 32, 48),),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["image_2x"],
        dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "image_2x": {0: "N", 2: "H2", 3: "W2"}},
        do_constant_folding=True,
    )
    m = onnx.load(path)
    del m.metadata_props[:]
    for k, v in {"edgegen.output_range": "0,1", "edgegen.description": description}.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, path)


def verify_onnx(model: nn.Module, path: str) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    res = {}
    g = torch.Generator().manual_seed(5)
    for n, h, w in [(1, 37, 53), (4, 64, 64), (1, 128, 96)]:
        x = torch.rand(n, 3, h, w, generator=g)
        with torch.no_grad():
            t = model.eval()(x).numpy()
        (o,) = sess.run(["image_2x"], {"image": x.numpy()})
        assert o.shape == (n, 3, 2 * h, 2 * w), o.shape
        d = float(np.abs(o - t).max())
        res[f"n{n}_{h}x{w}_max_abs_diff"] = d
        assert d < 1e-4, f"ONNX Runtime mismatch {d} for {(n, h, w)}"
    return res


def save_sample(path_onnx: str, hr_u8: np.ndarray, out_png: str, box, zoom: int = 2) -> dict:
    """low-res | bicubic | model (ONNX Runtime) | ground truth on an HR crop."""
    import onnxruntime as ort

    t, l, s = box
    crop = hr_u8[t:t + s, l:l + s]
    lr = downsample(crop, "bicubic")
    x = to_t(lr)[None]
    sess = ort.InferenceSession(path_onnx, providers=["CPUExecutionProvider"])
    (sr,) = sess.run(["image_2x"], {"image": x.numpy()})
    sr = torch.from_numpy(sr)
    bic = bicubic_up(x)
    gt = to_t(crop.astype(np.float32) / 255.0)[None]
    lr_near = F.interpolate(x, scale_factor=2.0, mode="nearest")
    panels = [lr_near, bic, sr, gt]
    from PIL import ImageDraw

    pad, top = 4, 18
    names = ["low-res input (nearest)", "bicubic x2", "upscale2x (ONNX)", "ground truth"]
    canvas = np.full((s * zoom + top, 4 * s * zoom + 3 * pad, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        a = (p[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        a = np.asarray(Image.fromarray(a).resize((s * zoom, s * zoom), Image.NEAREST))
        canvas[top:, i * (s * zoom + pad): i * (s * zoom + pad) + s * zoom] = a
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    for i, n in enumerate(names):
        draw.text((i * (s * zoom + pad) + 4, 3), n, fill=(0, 0, 0))
    im.save(out_png)
    return dict(crop_box_tls=list(box), crop_psnr_bicubic=psnr(bic, gt), crop_psnr_model=psnr(sr, gt))


# --------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description="Train the upscale2x zoo model.")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(REPO, "edgegen", "zoo", "upscale2x.onnx"))
    ap.add_argument("--docs", default=os.path.join(REPO, "docs", "zoo"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48, help="low-res patch size")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2, help="3x3 convs between the stem and the tail")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=100)
    args = ap.parse_args()

    log = start_run(args.threads, args.seed)

    model = Upscale2x(args.channels, args.layers)
    macs128 = count_macs(model, torch.zeros(1, 3, 128, 128))
    params = sum(p.numel() for p in model.parameters())
    log(f"MACs at 128x128 -> 256x256: {macs128 / 1e6:.1f} M ({macs128 / 128 / 128:.0f} per input pixel, "
        f"convs only; bicubic skip and PixelShuffle not counted); params {params}")

    sampler = PatchSampler(TRAIN_IMAGES, args.seed)
    log("train images: " + ", ".join(f"{n} {tuple(h.shape[1:])}" for n, h in zip(TRAIN_IMAGES, sampler.hr)))
    val_hr_u8 = load_photo(VAL_IMAGE)
    val_hr = to_t(val_hr_u8.astype(np.float32) / 255.0)[None]
    val_lr = {m: to_t(downsample(val_hr_u8, m))[None] for m in ("area", "bicubic")}

    def evaluate():
        model.eval()
        out = {}
        with torch.no_grad():
            for m, x in val_lr.items():
                out[f"val_psnr_{m}_down_model"] = psnr(model(x), val_hr)
                out[f"val_psnr_{m}_down_bicubic"] = psnr(bicubic_up(x), val_hr)
        model.train()
        return out

    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    lr_at = warmup_cosine(args.lr, args.steps, 0.01)

    hist, ema = [], None
    t_train = time.time()
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = sampler.batch(args.batch, args.patch)
        loss = (model(x) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.time() - t_train
            rec = dict(step=step + 1, train_l1_ema=round(ema, 5))
            if (step + 1) % (args.log_every * 5) == 0 or step + 1 == args.steps:
                rec.update({k: round(v, 3) for k, v in evaluate().items()})
            log(" ".join(f"{k} {v}" for k, v in rec.items())
                + f"  ({el / (step + 1):.3f}s/step, eta {el / (step + 1) * (args.steps - step - 1):.0f}s)")
            hist.append(rec)
    train_time = time.time() - t_train - 0.0
    log(f"training took {train_time:.1f}s (includes periodic validation)")
    val = evaluate()
    log("validation (chelsea, RGB PSNR, full image): " + " ".join(f"{k} {v:.3f}" for k, v in val.items()))

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    desc = ("x2 super-resolution (ESPCN-style 3x3 convs, PixelShuffle, bicubic skip); "
            "image [N,3,H,W] in [0,1] -> image_2x [N,3,2H,2W] in [0,1]")
    model.eval()
    export_onnx(model, args.out, desc)
    size = os.path.getsize(args.out)
    log(f"exported {args.out}: {size / 1e6:.3f} MB")
    assert size < 4e6
    diffs = verify_onnx(model, args.out)
    log(f"onnxruntime check: {diffs}")

    os.makedirs(args.docs, exist_ok=True)
    png = os.path.join(args.docs, "upscale2x_sample.png")
    crop = save_sample(args.out, val_hr_u8, png, box=(60, 150, 128))
    log(f"wrote {png}: {crop}")

    summary = dict(
        model="upscale2x",
        command=" ".join(["python tools/train_upscaler.py"] + sys.argv[1:]),
        args=vars(args),
        torch=torch.__version__,
        threads=args.threads,
        train_images=TRAIN_IMAGES,
        val_image=VAL_IMAGE,
        train_time_s=round(train_time, 1),
        total_time_s=round(log.elapsed, 1),
        final_train_l1_ema=round(ema, 5),
        validation=val,
        sample_crop=crop,
        macs_128x128=macs128,
        params=params,
        onnx_bytes=size,
        onnx_check=diffs,
        history=hist,
    )
    js = os.path.splitext(os.path.abspath(args.out))[0] + ".train.json"
    with open(js, "w") as f:
        json.dump(summary, f, indent=1)
    log(f"wrote {js}")


if __name__ == "__main__":
    main()
