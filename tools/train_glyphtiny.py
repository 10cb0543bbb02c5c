"""Train, export and sample the ``glyphtiny`` zoo model: glyphgen's little sibling sized for the
iCE40 UP5K's on-chip RAM.

glyphtiny is a class-conditional generator: ``latent`` (float32 [N,32]) and ``label`` (int64 [N],
digits 0-9) -> ``image`` (float32 [N,3,32,32], tanh, [-1,1]). It is trained exactly like glyphgen
(``tools/train_glyphgen.py``): the decoder of a cross-reconstruction conditional VAE on the
procedural glyphs of ``tools/glyph_data.py`` (rendered at 32x32), with an L1 + gradient-L1 + KL
loss, then an ex-post full-covariance Gaussian fit of the aggregate posterior folded into the
Linear layer that reads the latent.

Sized for the edgegen NPU on the UP5K (``targets/ice40-up5k.yaml``: 8 lanes, 64 KB activations,
64 KB weights, 1024 requantization entries, 4 tables, 32 layers): about 53 K int8 weights, at most
32 KB of live activations (the 32x32 maps have 16 channels), ~12.7 MMACs:

    [latent, embedding(label)] -> Linear -> 16x4x4 -> [up, 3x3] 32x8x8 -> 3x3 -> [up, 3x3] 32x16x16
    -> 3x3 -> [up, 3x3] 16x32x32 -> 3x3 -> 1x1: alpha + residual
    latent -> Linear -> ReLU -> Linear -> (fg, bg);  image = tanh(bg + sigmoid(alpha) (fg - bg) + residual)

    .venv/bin/python tools/train_glyphtiny.py     # writes edgegen/zoo/glyphtiny.{onnx,train.json}
"""

from __future__ import annotations

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
from train_glyphgen import (ConvBlock, count_macs, cvae_arguments, fit_latent_prior, grad_l1,  # noqa: E402
                            n_params, train_classifier)

LATENT_DIM = 32
EMBED_DIM = 16
SIZE = 32


class GlyphTiny(nn.Module):
    """(latent [N,32], label [N]) -> image [N,3,32,32] in [-1,1].

    The label's embedding joins the latent before the first layer, so every layer knows the digit;
    the body is plain 3x3 convolutions (a depthwise-separable body of this size, with the label joining
    at 8x8, learned only colours in 2500 steps: 10% of its samples read as their digit). The to-RGB head
    keeps glyphgen's two-colour prior: a small MLP gives a foreground/background pair from the latent,
    the last layer an alpha logit and an RGB residual: tanh(bg + sigmoid(alpha) * (fg - bg) + residual)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(NUM_CLASSES, EMBED_DIM)
        self.fc = nn.Linear(LATENT_DIM + EMBED_DIM, 16 * 4 * 4)
        self.colors = nn.Sequential(nn.Linear(LATENT_DIM, 32), nn.ReLU(inplace=True), nn.Linear(32, 6))
        self.body = nn.Sequential(ConvBlock(16, 32, up=True), ConvBlock(32, 32),  # 8x8
                                  ConvBlock(32, 32, up=True), ConvBlock(32, 32),  # 16x16
                                  ConvBlock(32, 16, up=True), ConvBlock(16, 16))  # 32x32
        self.rgb = nn.Conv2d(16, 4, 1)
        with torch.no_grad():
            self.rgb.weight[1:].mul_(0.1)
            self.rgb.bias.zero_()

    def forward(self, latent, label):
        h = F.relu(self.fc(torch.cat([latent, self.embed(label)], 1))).view(-1, 16, 4, 4)
        o = self.rgb(self.body(h))
        c = self.colors(latent)[:, :, None, None]
        fg, bg = c[:, :3], c[:, 3:]
        return torch.tanh(bg + torch.sigmoid(o[:, :1]) * (fg - bg) + o[:, 1:])


class Encoder(nn.Module):
    """Training-only encoder q(z | x, y) for 32x32 renders: strided 3x3 convs -> (mu, logvar)."""

    def __init__(self):
        super().__init__()
        chans = [3 + NUM_CLASSES, 32, 64, 128]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        self.conv = nn.Sequential(*layers)  # 32 -> 4
        self.fc = nn.Linear(128 * 4 * 4, 2 * LATENT_DIM)

    def forward(self, x, y):
        onehot = F.one_hot(y, NUM_CLASSES).to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        mu, logvar = self.fc(self.conv(torch.cat([x, onehot], 1)).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 6.0)


def pair_batches(ds: GlyphDataset, steps: int, batch: int, workers: int):
    """Training pairs of every step, in order; rendered ahead by `workers` processes (0: in this one)."""
    if workers <= 0:
        yield from (ds.pair_batch(step * batch, batch) for step in range(steps))
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked: a fork of a process whose torch threads are running can deadlock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        ahead = deque(pool.submit(ds.pair_batch, step * batch, batch) for step in range(min(steps, 2 * workers)))
        for step in range(steps):
            done = ahead.popleft()
            if step + len(ahead) + 1 < steps:
                ahead.append(pool.submit(ds.pair_batch, (step + len(ahead) + 1) * batch, batch))
            yield done.result()


def losses(enc, gen, xa, ya, x, y, beta, w_sharp, sample=True):
    """Encode (xa, ya), decode with the label of x (same style, maybe another digit), reconstruct x."""
    mu, logvar = enc(xa, ya)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
    img = gen(z, y)
    rec = (img - x).abs().mean()
    sharp = grad_l1(img, x)
    kl = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()
    loss = rec + w_sharp * sharp + beta * kl / x[0].numel()
    return loss, dict(rec=rec.item(), sharp=sharp.item(), kl=kl.item(), loss=loss.item())


def export_onnx(gen: GlyphTiny, path: str) -> None:
    import onnx

    gen = gen.eval()
    tmp = path + ".tmp"
    torch.onnx.export(gen, (torch.randn(2, LATENT_DIM), torch.tensor([3, 7])), tmp, dynamo=False, opset_version=17,
                      input_names=["latent", "label"], output_names=["image"],
                      dynamic_axes={"latent": {0: "N"}, "label": {0: "N"}, "image": {0: "N"}},
                      do_constant_folding=True)
    m = onnx.load(tmp)
    dims = m.graph.output[0].type.tensor_type.shape.dim  # the exporter leaves the Resize output symbolic
    for i, v in ((1, 3), (2, SIZE), (3, SIZE)):
        dims[i].Clear()
        dims[i].dim_value = v
    del m.metadata_props[:]
    for k, v in {"edgegen.output_range": "-1,1", "edgegen.num_classes": "10",
                 "edgegen.description": "Class-conditional 32x32 digit-glyph generator (latent[N,32] + label[N] "
                                        "0-9 -> image [-1,1]) sized for the iCE40 UP5K's on-chip RAM"}.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m)
    onnx.save(m, tmp)
    os.replace(tmp, path)


def verify_onnx(gen: GlyphTiny, path: str) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for n in (1, 4):
        g = torch.Generator().manual_seed(100 + n)
        z, y = torch.randn(n, LATENT_DIM, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)
        with torch.no_grad():
            want = gen.eval()(z, y).numpy()
        got = sess.run(["image"], {"latent": z.numpy(), "label": y.numpy()})[0]
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst < 1e-4, f"ONNX Runtime differs from PyTorch by {worst}"
    return worst


def sample_grid(path: str, out_png: str) -> None:
    """Rows = labels 0-9, columns = seeds 0-7 (latent = default_rng(seed).standard_normal(32)), x4."""
    import onnxruntime as ort
    from PIL import Image

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    lat = np.stack([np.random.default_rng(s).standard_normal(LATENT_DIM, dtype=np.float32) for s in range(8)])
    imgs = np.concatenate([sess.run(["image"], {"latent": lat, "label": np.full(8, d, np.int64)})[0]
                           for d in range(NUM_CLASSES)])
    g = make_grid(torch.from_numpy(imgs), 8)
    Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4), Image.NEAREST).save(out_png)


def main() -> None:
    ap = cvae_arguments("glyphtiny", "Train the glyphtiny zoo model (conditional VAE decoder, 32x32).", 64,
                        3 * 32 * 32, 100)
    ap.add_argument("--workers", type=int, default=0, help="processes rendering training pairs ahead (0: none)")
    args = ap.parse_args()

    log = start_run(args.threads, args.seed)

    gen, enc = GlyphTiny(), Encoder()
    macs = count_macs(gen, torch.zeros(1, LATENT_DIM), torch.zeros(1, dtype=torch.int64))
    log(f"generator {sum(macs.values()) / 1e6:.2f} MMACs, {n_params(gen)} parameters; encoder {n_params(enc)}")
    params = list(gen.parameters()) + list(enc.parameters())
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.99))
    lr_at = warmup_cosine(args.lr, args.steps, 0.02)

    ds = GlyphDataset(seed=args.seed, size=SIZE)
    run, hist = {}, []
    t_train = time.time()
    gen.train()
    enc.train()
    for step, (xa, ya, x, y) in enumerate(pair_batches(ds, args.steps, args.batch, args.workers)):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        beta = args.beta * min(1.0, (step + 1) / max(1, args.kl_warmup * args.steps))
        loss, st = losses(enc, gen, xa, ya, x, y, beta, args.w_sharp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        run = {k: 0.9 * run.get(k, v) + 0.1 * v if step else v for k, v in st.items()}
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.time() - t_train
            log(f"step {step + 1}/{args.steps} " + " ".join(f"{k} {v:.4f}" for k, v in run.items())
                + f" ({el / (step + 1):.2f}s/step, eta {el / (step + 1) * (args.steps - step - 1):.0f}s)")
            hist.append(dict(step=step + 1, **{k: round(v, 5) for k, v in run.items()}))
    train_time = time.time() - t_train

    gen.eval()
    enc.eval()
    xva, yva, xv, yv = GlyphDataset(seed=args.seed + 1000, size=SIZE).pair_batch(0, 512)
    with torch.no_grad():
        _, heldout = losses(enc, gen, xva, yva, xv, yv, args.beta, args.w_sharp, sample=False)
    log(f"held-out (posterior mean): {heldout}")
    # fc reads the latent, then the label's embedding: the fit folds into its first LATENT_DIM columns
    fit = fit_latent_prior(enc, GlyphDataset(seed=args.seed + 5000, size=SIZE), (gen.fc, gen.colors[0]),
                           args.latent_fit, LATENT_DIM) if args.latent_fit else {}
    log(f"latent fit: {fit}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    export_onnx(gen, args.out)
    diff = verify_onnx(gen, args.out)
    os.makedirs(args.docs, exist_ok=True)
    png = os.path.join(args.docs, "glyphtiny_samples.png")
    sample_grid(args.out, png)
    log(f"exported {args.out} ({os.path.getsize(args.out)} bytes, ORT vs PyTorch {diff:.2e}); wrote {png}")

    probe = {}
    if args.classifier_steps > 0:  # glyphgen's legibility probe (64x64): generated images upsampled x2
        clf, real_acc = train_classifier(args.seed, args.classifier_steps, 64, log)
        g = torch.Generator().manual_seed(args.seed + 4242)
        zs, ys = torch.randn(1000, LATENT_DIM, generator=g), torch.arange(1000) % NUM_CLASSES
        with torch.no_grad():
            acc = (clf(F.interpolate(gen(zs, ys), scale_factor=2, mode="bilinear", align_corners=False)).argmax(1)
                   == ys).float().mean().item()
        probe = dict(classifier_acc_real_heldout=real_acc, classifier_acc_generated_prior_1000=acc)
        log(f"legibility probe: {probe}")

    summary = dict(model="glyphtiny", command=" ".join(["python tools/train_glyphtiny.py"] + sys.argv[1:]),
                   args={k: v for k, v in vars(args).items() if k not in ("out", "docs")}, torch=torch.__version__,
                   train_time_s=round(train_time, 1), total_time_s=round(log.elapsed, 1),
                   final_train_losses_ema={k: round(v, 5) for k, v in run.items()}, heldout=heldout, latent_fit=fit,
                   macs_per_image=sum(macs.values()), macs_by_module=macs, params_generator=n_params(gen),
                   params_encoder_training_only=n_params(enc), onnx_bytes=os.path.getsize(args.out),
                   onnx_vs_torch_max_abs=diff, legibility_probe=probe, history=hist)
    js = os.path.splitext(os.path.abspath(args.out))[0] + ".train.json"
    with open(js + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(js + ".tmp", js)
    log(f"wrote {js}")


if __name__ == "__main__":
    main()
