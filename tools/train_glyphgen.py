"""Train, export and sample the ``glyphgen`` zoo model.

glyphgen is a class-conditional generator: ``latent`` (float32 [N,64]) and
``label`` (int64 [N], digits 0-9) -> ``image`` (float32 [N,3,64,64], tanh,
[-1,1]) plus ``preview`` (float32 [N,3,32,32], [-1,1]), a cheap
low-resolution output taken from the intermediate 32x32 stage (multi-resolution
outputs as in Anycost GAN).

It is trained as the decoder of a conditional VAE on the procedural glyph data
of ``tools/glyph_data.py`` (CPU friendly, no GAN).  Each training example is a
pair of renders sharing one style (font, colours, size, rotation, offset):
(xa, ya) goes through the encoder, the decoder gets the latent and the label y
of the second render x and must reproduce x (a cross-reconstruction CVAE; with
plain self-reconstruction the latent learns the digit and the label is
ignored):

    z ~ q(z | xa, ya)
    loss = L1(image(z, y), x) + w32 * L1(preview(z, y), avgpool2(x))
           + w_sharp * L1(grad(image), grad(x))
           + beta * KL(q(z|xa,ya) || N(0,I)) / (3*64*64)

The generator is built from plain (dense) 3x3 convs with BN and ReLU and
nearest x2 upsampling, no depthwise convs: int8 kernels (XNNPACK, ONNX
Runtime, OpenVINO) speed dense convs up about 3x over fp32, depthwise ones
little.  The work sits at full resolution: the 64x64 stage holds about three
quarters of the MACs, so the 32x32 preview costs about a quarter of the image.
The label only joins part-way: a latent-only trunk (Linear -> 4x4 -> 8x8)
runs first, then an ``nn.Embedding`` vector is broadcast over the 8x8 map, and
the head finishes the image (joining at 8x8 rather than 16x16 gives the
digit's shape a wide receptive field: a first run that joined a 48-channel
trunk at 16x16 read 69% legible, against 74% before the redesign).  The first
conv after the join reads [trunk features, embedding]; it runs as the sum of
two convs, and the trunk's half belongs to the trunk (what the runtime's
feature cache keeps per seed):

    latent -> Linear 128x4x4 -> 3x3 128 -> [up, 3x3] 128x8x8 -> 3x3 128   (trunk)
    + 3x3 over the broadcast embedding(label) 32 -> BN, ReLU -> [up, 3x3] 64x16x16
    -> [up, 3x3] 48x32x32 -> preview -> [up, 3x3] 48x64x64 -> 3x3 48 -> 3x3 to-RGB -> image
    latent -> Linear -> ReLU -> Linear -> (fg, bg): both to-RGB heads draw
    tanh(bg + sigmoid(alpha) (fg - bg) + residual)

After training, a full-covariance Gaussian is fitted to the aggregate posterior
(ex-post density estimation as in RAE, Ghosh et al. 2020) and folded into the
two Linear layers that read the latent, so that latent ~ N(0, I) at the
exported interface samples where the training data actually lies (without it,
prior samples are washed-out, low-contrast glyphs).

Default command (produces the shipped model):

    .venv/bin/python tools/train_glyphgen.py

Outputs: ``--out`` (ONNX, default edgegen/zoo/glyphgen.onnx), the training
summary JSON next to it (``glyphgen.train.json``) and the sample grids
``docs/zoo/glyphgen_samples.png`` / ``docs/zoo/glyphgen_preview.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glyph_data import NUM_CLASSES, GlyphDataset, make_grid  # noqa: E402
from train_common import start_run, warmup_cosine  # noqa: E402

LATENT_DIM = 64
EMBED_DIM = 32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """[nearest x2] -> 3x3 conv -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, up: bool = False):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if up else nn.Identity()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(self.up(x))))


class ToRGB(nn.Module):
    """To-RGB head with a two-colour compositing prior.

    A kxk conv to 4 channels: an alpha logit and an RGB residual.  With
    per-image colours fg, bg (pre-tanh, predicted from the latent by the
    trunk):  rgb = tanh(bg + sigmoid(alpha) * (fg - bg) + residual).
    The residual starts at zero, so early training only has to learn a mask
    (the glyph shape) while the colours come straight from the latent; the
    residual keeps the output unrestricted (any RGB image is reachable)."""

    def __init__(self, cin: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, 4, kernel, 1, kernel // 2, bias=True)
        with torch.no_grad():
            self.conv.weight[1:].mul_(0.1)
            self.conv.bias.zero_()

    def forward(self, x, fg, bg):
        o = self.conv(x)
        alpha = torch.sigmoid(o[:, :1])
        return torch.tanh(bg + alpha * (fg - bg) + o[:, 1:])


class Trunk(nn.Module):
    """Latent-only part: latent -> Linear -> 128x4x4 -> 3x3 -> [up, 3x3] 128x8x8 -> the latent half
    of the head's first conv, plus a small MLP latent -> (fg, bg) colour pair for the to-RGB heads."""

    def __init__(self):
        super().__init__()
        # small MLP (not a single Linear): data colours always contrast, a
        # non-convex set that a linear map of a Gaussian cannot cover
        self.colors = nn.Sequential(nn.Linear(LATENT_DIM, 64), nn.ReLU(inplace=True), nn.Linear(64, 6))
        self.fc = nn.Linear(LATENT_DIM, 128 * 4 * 4)  # 128 KB of int8 weights
        self.bn0 = nn.BatchNorm2d(128)
        self.blocks = nn.Sequential(ConvBlock(128, 128), ConvBlock(128, 128, up=True))  # 4x4, 8x8
        self.join = nn.utils.skip_init(nn.Conv2d, 128, 128, 3, padding=1, bias=False)  # GlyphGen initialises it

    def forward(self, z):
        h = self.fc(z).view(-1, 128, 4, 4)
        h = F.relu(self.bn0(h))
        c = self.colors(z)[:, :, None, None]
        return self.join(self.blocks(h)), c[:, :3], c[:, 3:]


class Head(nn.Module):
    """Label-conditioned part: 8x8 (+label) -> 16x16 -> 32x32 (preview) -> 64x64 (image).

    The 64x64 stage holds about three quarters of the MACs, so the preview
    path (everything up to the 32x32 to-RGB head) costs about a quarter of
    the full image."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(NUM_CLASSES, EMBED_DIM)
        # the first layer after the join is one 3x3 conv over [trunk features, label embedding], run as
        # two (a conv is linear in its input channels): the trunk's half depends on the latent only, so
        # the runtime's feature cache keeps it per seed; the label's half is added here
        joint = nn.Conv2d(128 + EMBED_DIM, 128, 3, 1, 1, bias=False)
        self.latent_half_init = joint.weight.data[:, :128].clone()  # for Trunk.join (GlyphGen)
        self.join = nn.utils.skip_init(nn.Conv2d, EMBED_DIM, 128, 3, padding=1, bias=False)
        self.join.weight.data.copy_(joint.weight.data[:, 128:])
        self.join_bn = nn.BatchNorm2d(128)
        self.b16 = ConvBlock(128, 64, up=True)
        self.b32 = ConvBlock(64, 48, up=True)  # 32x32
        self.to_rgb32 = ToRGB(48, 1)  # preview head
        self.b64 = nn.Sequential(ConvBlock(48, 48, up=True), ConvBlock(48, 48))  # 64x64
        self.to_rgb64 = ToRGB(48, 3)

    def forward(self, h, fg, bg, label):
        # broadcast to the constant 8x8, not to h's shape: the label's branch then reads nothing of the trunk
        e = self.embed(label)[:, :, None, None].expand(-1, -1, 8, 8)
        h = self.b16(F.relu(self.join_bn(h + self.join(e))))
        h32 = self.b32(h)
        preview = self.to_rgb32(h32, fg, bg)
        image = self.to_rgb64(self.b64(h32), fg, bg)
        return image, preview


class GlyphGen(nn.Module):
    """The exported generator: (latent, label) -> (image 64x64, preview 32x32)."""

    def __init__(self):
        super().__init__()
        self.trunk = Trunk()
        self.head = Head()
        self.trunk.join.weight.data.copy_(self.head.latent_half_init)
        del self.head.latent_half_init

    def forward(self, latent, label):
        h, fg, bg = self.trunk(latent)
        return self.head(h, fg, bg, label)


class Encoder(nn.Module):
    """Training-only encoder q(z | x, y): strided 3x3 convs -> (mu, logvar)."""

    def __init__(self):
        super().__init__()
        chans = [3 + NUM_CLASSES, 32, 64, 128, 256]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        self.conv = nn.Sequential(*layers)  # 64 -> 4
        self.fc = nn.Linear(256 * 4 * 4, 2 * LATENT_DIM)

    def forward(self, x, y):
        onehot = F.one_hot(y, NUM_CLASSES).to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        h = self.conv(torch.cat([x, onehot], 1)).flatten(1)
        mu, logvar = self.fc(h).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 6.0)


# --------------------------------------------------------------------------
# MAC counting (Conv / ConvTranspose / Linear(Gemm)), per image
# --------------------------------------------------------------------------
def count_macs(model: nn.Module, *inputs) -> dict[str, int]:
    """MACs per top-level-qualified module name, for batch size 1 inputs."""
    macs: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
                n = out[0].numel() * k
            elif isinstance(mod, nn.ConvTranspose2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.out_channels // mod.groups)
                n = inp[0][0].numel() * k
            elif isinstance(mod, nn.Linear):
                n = mod.in_features * mod.out_features
            else:
                return
            macs[name] = macs.get(name, 0) + int(n)

        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(*inputs)
    model.train(was_training)
    for h in hooks:
        h.remove()
    return macs


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# --------------------------------------------------------------------------
# training helpers
# --------------------------------------------------------------------------
def grad_l1(a, b):
    dax, dbx = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    day, dby = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    return (dax - dbx).abs().mean() + (day - dby).abs().mean()


def vae_losses(enc, gen, xa, ya, x, y, beta, w32, w_sharp, sample=True):
    """Encode (xa, ya); decode with label y; reconstruct x.

    x is digit y rendered in exactly the style of xa (see GlyphDataset.pair_batch),
    so the latent only pays off for style and the label must decide the digit."""
    mu, logvar = enc(xa, ya)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
    img, prev = gen(z, y)
    x32 = F.avg_pool2d(x, 2)
    rec64 = (img - x).abs().mean()
    rec32 = (prev - x32).abs().mean()
    sharp = grad_l1(img, x)
    kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()
    loss = rec64 + w32 * rec32 + w_sharp * sharp + beta * kl / x[0].numel()
    return loss, dict(rec64=rec64.item(), rec32=rec32.item(), sharp=sharp.item(), kl=kl.item(), loss=loss.item())


def latent_readers(gen: "GlyphGen") -> tuple[nn.Linear, nn.Linear]:
    """The two Linear layers that read glyphgen's latent."""
    return gen.trunk.fc, gen.trunk.colors[0]


@torch.no_grad()
def fit_latent_prior(enc: nn.Module, ds: GlyphDataset, layers: tuple[nn.Linear, ...], n: int,
                     latent_dim: int = LATENT_DIM) -> dict:
    """Ex-post Gaussian fit of the aggregate posterior, folded into the generator.

    A VAE's aggregate posterior q(z) = E_x q(z|x) does not match N(0, I): here
    some latent directions spread with variance ~8 while others are barely
    used, and z ~ N(0, I) lands on washed-out, low-contrast "average" glyphs.
    As in the ex-post density estimation of RAE (Ghosh et al., 2020) we fit a
    full-covariance Gaussian N(m, S) to q(z) (S = Cov(mu) + E[sigma^2]) on
    ``n`` fresh renders of ``ds``, and fold z' = m + chol(S) z into the first
    ``latent_dim`` input columns of the Linear ``layers`` that read the latent.
    The exported interface stays latent ~ N(0, I); nothing else changes.
    """
    mus, variances = [], []
    for i in range(0, n, 512):
        xa, ya, _, _ = ds.pair_batch(i, min(512, n - i))
        mu, logvar = enc(xa, ya)
        mus.append(mu.double())
        variances.append(logvar.double().exp())
    mu, var = torch.cat(mus), torch.cat(variances)
    m = mu.mean(0)
    cov = torch.cov(mu.T) + torch.diag(var.mean(0))
    a = torch.linalg.cholesky(cov)
    for lin in layers:
        w, b = lin.weight.data.double(), lin.bias.data.double()
        lin.bias.data = (w[:, :latent_dim] @ m + b).float()
        lin.weight.data[:, :latent_dim] = (w[:, :latent_dim] @ a).float()
    eig = torch.linalg.eigvalsh(cov)
    return dict(samples=n, mean_norm=round(m.norm().item(), 4), cov_eig_min=round(eig[0].item(), 5),
                cov_eig_max=round(eig[-1].item(), 4), cov_trace=round(eig.sum().item(), 3))


@torch.no_grad()
def sensitivity(gen: "GlyphGen", n: int = 256, seed: int = 99) -> dict:
    """Mean |difference| (0-255 scale) between images that differ only in label / only in latent."""
    g = torch.Generator().manual_seed(seed)
    z, z2 = torch.randn(n, LATENT_DIM, generator=g), torch.randn(n, LATENT_DIM, generator=g)
    a = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    b = (a + torch.randint(1, NUM_CLASSES, (n,), generator=g)) % NUM_CLASSES
    ia, ib, ic = gen(z, a)[0], gen(z, b)[0], gen(z2, a)[0]
    lab = (ia - ib).abs().mean((1, 2, 3)) * 127.5
    lat = (ia - ic).abs().mean((1, 2, 3)) * 127.5
    return dict(label_change_mean_abs_diff=round(lab.mean().item(), 3),
                label_change_frac_above_5=round((lab > 5).float().mean().item(), 3),
                latent_change_mean_abs_diff=round(lat.mean().item(), 3))


class DigitClassifier(nn.Module):
    """Small CNN used only to measure whether generated digits are legible."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),  # 32
            nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),  # 16
            nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(),  # 8
            nn.Conv2d(128, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(),  # 4
            nn.Flatten(), nn.Linear(128 * 16, NUM_CLASSES),
        )

    def forward(self, x):
        return self.net(x)


def train_classifier(seed, steps, batch, log):
    """Train the legibility probe on real glyphs (disjoint data seed)."""
    torch.manual_seed(seed + 7)
    ds = GlyphDataset(seed=seed + 2000)
    clf = DigitClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for s in range(steps):
        x, y = ds.batch(s * batch, batch)
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (s + 1) % 100 == 0:
            log(f"  classifier step {s + 1}/{steps} ce {loss.item():.3f}")
    clf.eval()
    xv, yv = GlyphDataset(seed=seed + 3000).batch(0, 1000)
    with torch.no_grad():
        acc = (clf(xv).argmax(1) == yv).float().mean().item()
    return clf, acc


# --------------------------------------------------------------------------
# export / verification / samples
# --------------------------------------------------------------------------
def export_onnx(gen: GlyphGen, path: str, description: str) -> None:
    import onnx

    gen = gen.eval()
    z = torch.randn(2, LATENT_DIM)
    y = torch.tensor([3, 7], dtype=torch.int64)
    torch.onnx.export(
        gen,
        (z, y),
        path,
        dynamo=False,
        opset_version=17,
        input_names=["latent", "label"],
        output_names=["image", "preview"],
        dynamic_axes={"latent": {0: "N"}, "label": {0: "N"}, "image": {0: "N"}, "preview": {0: "N"}},
        do_constant_folding=True,
    )
    m = onnx.load(path)
    # the exporter leaves the spatial output dims symbolic (they come out of
    # Resize); they are fixed, so record them: image [N,3,64,64], preview [N,3,32,32]
    for out in m.graph.output:
        side = {"image": 64, "preview": 32}[out.name]
        dims = out.type.tensor_type.shape.dim
        for i, v in ((1, 3), (2, side), (3, side)):
            dims[i].Clear()
            dims[i].dim_value = v
    meta = {
        "edgegen.output_range": "-1,1",
        "edgegen.num_classes": "10",
        "edgegen.description": description,
    }
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, path)  # small model: weights stay inside the .onnx file


def verify_onnx(gen: GlyphGen, path: str) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    res = {}
    for n in (1, 4):
        g = torch.Generator().manual_seed(100 + n)
        z = torch.randn(n, LATENT_DIM, generator=g)
        y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        with torch.no_grad():
            ti, tp = gen.eval()(z, y)
        oi, op = sess.run(["image", "preview"], {"latent": z.numpy(), "label": y.numpy()})
        assert oi.shape == (n, 3, 64, 64) and op.shape == (n, 3, 32, 32), (oi.shape, op.shape)
        d = max(np.abs(oi - ti.numpy()).max(), np.abs(op - tp.numpy()).max())
        res[f"batch{n}_max_abs_diff"] = float(d)
        assert d < 1e-4, f"ONNX Runtime mismatch {d} at batch {n}"
    return res


def ort_sample_grids(path: str, seeds: list[int], out_img: str, out_prev: str):
    """Rows = labels 0-9, columns = seeds; latent = default_rng(seed).standard_normal(64)."""
    import onnxruntime as ort
    from PIL import Image

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    lat = np.stack([np.random.default_rng(s).standard_normal(LATENT_DIM, dtype=np.float32) for s in seeds])
    imgs, prevs, labels = [], [], []
    for d in range(NUM_CLASSES):
        i, p = sess.run(["image", "preview"], {"latent": lat, "label": np.full(len(seeds), d, np.int64)})
        imgs.append(i)
        prevs.append(p)
        labels += [d] * len(seeds)
    imgs = torch.from_numpy(np.concatenate(imgs))
    prevs = torch.from_numpy(np.concatenate(prevs))
    # tiles are shown enlarged with nearest neighbour: 64px x2, 32px x4 (same on-screen size)
    g = make_grid(imgs, len(seeds))
    Image.fromarray(g).resize((g.shape[1] * 2, g.shape[0] * 2), Image.NEAREST).save(out_img)
    g = make_grid(prevs, len(seeds))
    Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4), Image.NEAREST).save(out_prev)
    return imgs, prevs, torch.tensor(labels)


# --------------------------------------------------------------------------
def cvae_arguments(model: str, description: str, batch: int, pixels: int, log_every: int) -> argparse.ArgumentParser:
    """The command line both glyph generators' training scripts share (the CVAE recipe's knobs)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(REPO, "edgegen", "zoo", f"{model}.onnx"))
    ap.add_argument("--docs", default=os.path.join(REPO, "docs", "zoo"), help="where the sample PNGs go")
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=2.0, help=f"KL weight (per-pixel-mean L1 units x {pixels})")
    ap.add_argument("--w-sharp", type=float, default=0.5, help="weight of the gradient (sharpness) L1 loss")
    ap.add_argument("--kl-warmup", type=float, default=0.2, help="fraction of steps over which beta ramps up")
    ap.add_argument("--latent-fit", type=int, default=4096,
                    help="renders used for the ex-post Gaussian fit of the latent (0 = skip)")
    ap.add_argument("--classifier-steps", type=int, default=300, help="legibility-probe steps (0 = skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=log_every)
    return ap


def main() -> None:
    ap = cvae_arguments("glyphgen", "Train the glyphgen zoo model (conditional VAE decoder).", 32, 3 * 64 * 64, 50)
    ap.add_argument("--w32", type=float, default=0.5, help="weight of the 32x32 preview L1 loss")
    ap.add_argument("--ckpt", default="", help="optional path to save the PyTorch weights (encoder + generator)")
    ap.add_argument("--reexport", default="", metavar="CKPT",
                    help="skip training: load a --ckpt file, export to --out, verify and redraw the sample grids")
    args = ap.parse_args()

    log = start_run(args.threads, args.seed)

    gen, enc = GlyphGen(), Encoder()
    desc = ("Class-conditional 64x64 digit-glyph generator (latent[N,64] + label[N] 0-9 -> image [-1,1] "
            "+ 32x32 preview), plain-conv conditional-VAE decoder, most MACs at 64x64")
    if args.reexport:
        ck = torch.load(args.reexport)
        gen.load_state_dict(ck["gen"])
        enc.load_state_dict(ck["enc"])
        gen.eval()
        enc.eval()
        if args.latent_fit:
            fit = fit_latent_prior(enc, GlyphDataset(seed=args.seed + 5000), latent_readers(gen), args.latent_fit)
            log(f"latent fit: {fit}")
        export_onnx(gen, args.out, desc)
        log(f"exported {args.out}: {os.path.getsize(args.out)} bytes; onnxruntime check: {verify_onnx(gen, args.out)}")
        os.makedirs(args.docs, exist_ok=True)
        ort_sample_grids(args.out, list(range(8)), os.path.join(args.docs, "glyphgen_samples.png"),
                         os.path.join(args.docs, "glyphgen_preview.png"))
        return

    # --- MACs / params -----------------------------------------------------
    z1, y1 = torch.zeros(1, LATENT_DIM), torch.zeros(1, dtype=torch.int64)
    macs = count_macs(gen, z1, y1)
    total = sum(macs.values())
    trunk = sum(v for k, v in macs.items() if k.startswith("trunk."))
    preview_only = sum(v for k, v in macs.items() if k.startswith(("head.join", "head.b16", "head.b32", "head.to_rgb32"))) + trunk
    image_stage = sum(v for k, v in macs.items() if k.startswith(("head.b64", "head.to_rgb64")))
    enc_macs = sum(count_macs(enc, torch.zeros(1, 3, 64, 64), y1).values())
    log("generator MACs per image:")
    for k, v in macs.items():
        log(f"  {k:28s} {v / 1e6:8.3f} M")
    log(f"total {total / 1e6:.2f} MMACs, trunk {trunk / 1e6:.2f} MMACs = {trunk / total:.3f} of total; "
        f"preview path only {preview_only / 1e6:.2f} MMACs = {preview_only / total:.3f}; "
        f"64x64 stage {image_stage / 1e6:.2f} MMACs = {image_stage / total:.3f}; encoder (training only) {enc_macs / 1e6:.2f} MMACs")
    log(f"params: generator {n_params(gen)}, trunk {n_params(gen.trunk)}, encoder {n_params(enc)}")

    # --- training ----------------------------------------------------------
    gen = gen.to(memory_format=torch.channels_last)
    enc = enc.to(memory_format=torch.channels_last)
    params = list(gen.parameters()) + list(enc.parameters())
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.99))
    lr_at = warmup_cosine(args.lr, args.steps, 0.02)

    ds = GlyphDataset(seed=args.seed)
    hist = []
    run = {}
    t_train = time.time()
    gen.train()
    enc.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        beta = args.beta * min(1.0, (step + 1) / max(1, args.kl_warmup * args.steps))
        xa, ya, x, y = ds.pair_batch(step * args.batch, args.batch)
        xa = xa.contiguous(memory_format=torch.channels_last)
        loss, st = vae_losses(enc, gen, xa, ya, x, y, beta, args.w32, args.w_sharp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        for k, v in st.items():
            run[k] = 0.9 * run.get(k, v) + 0.1 * v if step else v
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.time() - t_train
            eta = el / (step + 1) * (args.steps - step - 1)
            log(f"step {step + 1}/{args.steps} lr {lr_at(step):.2e} beta {beta:.2f} "
                + " ".join(f"{k} {v:.4f}" for k, v in run.items()) + f"  ({el / (step + 1):.2f}s/step, eta {eta:.0f}s)")
            hist.append(dict(step=step + 1, **{k: round(v, 5) for k, v in run.items()}))
    train_time = time.time() - t_train
    log(f"training took {train_time:.1f}s")
    if args.ckpt:
        os.makedirs(os.path.dirname(os.path.abspath(args.ckpt)), exist_ok=True)
        torch.save({"gen": gen.state_dict(), "enc": enc.state_dict(), "args": vars(args)}, args.ckpt)
        log(f"saved {args.ckpt}")

    # --- held-out evaluation -----------------------------------------------
    gen.eval()
    enc.eval()
    gen = gen.to(memory_format=torch.contiguous_format)
    xva, yva, xv, yv = GlyphDataset(seed=args.seed + 1000).pair_batch(0, 512)
    with torch.no_grad():
        _, val = vae_losses(enc, gen, xva, yva, xv, yv, args.beta, args.w32, args.w_sharp, sample=False)
        _, same = vae_losses(enc, gen, xv, yv, xv, yv, args.beta, args.w32, args.w_sharp, sample=False)
        val.update({f"same_label_{k}": v for k, v in same.items() if k in ("rec64", "rec32")})
        mu, _ = enc(xva, yva)
        img, prev = gen(mu, yv)
        val["preview_vs_image_down_l1"] = (prev - F.avg_pool2d(img, 2)).abs().mean().item()
        # latent usage: dimensions whose posterior means vary across the data
        val["active_latent_dims"] = int((mu.var(0) > 0.01).sum().item())
    log("held-out (posterior mean): " + " ".join(f"{k} {v:.4f}" for k, v in val.items()))
    sens_before = sensitivity(gen)
    fit = {}
    if args.latent_fit:
        t0 = time.time()
        fit = fit_latent_prior(enc, GlyphDataset(seed=args.seed + 5000), latent_readers(gen), args.latent_fit)
        fit["time_s"] = round(time.time() - t0, 1)
        log(f"latent fit folded into the generator: {fit}")
    sens = sensitivity(gen)
    log(f"prior-sample sensitivity before fit {sens_before}, after {sens}")

    # --- export + verify -----------------------------------------------------
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    export_onnx(gen, args.out, desc)
    size = os.path.getsize(args.out)
    log(f"exported {args.out}: {size / 1e6:.3f} MB")
    assert size < 4e6, "ONNX file over 4 MB"
    diffs = verify_onnx(gen, args.out)
    log(f"onnxruntime check: {diffs}")

    os.makedirs(args.docs, exist_ok=True)
    seeds = list(range(8))
    s_img = os.path.join(args.docs, "glyphgen_samples.png")
    s_prev = os.path.join(args.docs, "glyphgen_preview.png")
    imgs, prevs, labels = ort_sample_grids(args.out, seeds, s_img, s_prev)
    log(f"wrote {s_img} and {s_prev}")

    # --- legibility probe: classifier trained on real glyphs -----------------
    probe = {}
    if args.classifier_steps > 0:
        t0 = time.time()
        clf, real_acc = train_classifier(args.seed, args.classifier_steps, 64, log)
        g = torch.Generator().manual_seed(args.seed + 4242)
        zs = torch.randn(1000, LATENT_DIM, generator=g)
        ys = torch.arange(1000) % NUM_CLASSES
        with torch.no_grad():
            gi, gp = gen(zs, ys)
            acc_prior = (clf(gi).argmax(1) == ys).float().mean().item()
            acc_prev = (clf(F.interpolate(gp, scale_factor=2, mode="bilinear", align_corners=False)).argmax(1) == ys).float().mean().item()
            acc_grid = (clf(imgs).argmax(1) == labels).float().mean().item()
        probe = dict(classifier_acc_real_heldout=real_acc, classifier_acc_generated_prior_1000=acc_prior,
                     classifier_acc_generated_preview_1000=acc_prev, classifier_acc_sample_grid=acc_grid,
                     probe_time_s=round(time.time() - t0, 1))
        log(f"legibility probe: {probe}")

    summary = dict(
        model="glyphgen",
        command=" ".join(["python tools/train_glyphgen.py"] + sys.argv[1:]),
        args=vars(args),
        torch=torch.__version__,
        threads=args.threads,
        train_time_s=round(train_time, 1),
        total_time_s=round(log.elapsed, 1),
        final_train_losses_ema={k: round(v, 5) for k, v in run.items()},
        heldout=val,
        latent_fit=fit,
        prior_sensitivity_before_fit=sens_before,
        prior_sensitivity=sens,
        macs_per_image=total,
        macs_trunk=trunk,
        trunk_fraction=round(trunk / total, 4),
        macs_preview_path=preview_only,
        preview_path_fraction=round(preview_only / total, 4),
        macs_image_stage=image_stage,
        image_stage_fraction=round(image_stage / total, 4),
        macs_by_module=macs,
        params_generator=n_params(gen),
        params_trunk=n_params(gen.trunk),
        params_encoder_training_only=n_params(enc),
        onnx_bytes=size,
        onnx_check=diffs,
        legibility_probe=probe,
        history=hist,
    )
    js = os.path.splitext(os.path.abspath(args.out))[0] + ".train.json"
    with open(js, "w") as f:
        json.dump(summary, f, indent=1)
    log(f"wrote {js}")


if __name__ == "__main__":
    main()
