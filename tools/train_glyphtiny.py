"""Train, export and sample the ``glyphtiny`` zoo model: glyphgen's little sibling sized for the
iCE40 UP5K's on-chip RAM, distilled from glyphgen.

glyphtiny is a class-conditional generator: ``latent`` (float32 [N,64]) and ``label`` (int64 [N],
digits 0-9) -> ``image`` (float32 [N,3,32,32], tanh, [-1,1]). It takes glyphgen's latent and is
trained to reproduce glyphgen's own 32x32 ``preview`` output for the same (latent, label), so one
seed gives the same glyph from both models. Training data: latents z ~ N(0, I) and uniform labels,
fresh every step, run through ``edgegen/zoo/glyphgen.onnx`` (ONNX Runtime, only the nodes the
preview needs) in ``--workers`` processes ahead of the training loop; loss, images in [-1, 1]:

    L1(glyphtiny(z, y), teacher) + w_sharp * L1(grad glyphtiny(z, y), grad teacher)

Sized for the edgegen NPU on the UP5K (``targets/ice40-up5k-8lane.yaml``: 8 lanes, 64 KB activations,
64 KB weights): about 56 K int8 weights, no activation tensor over 16 KB (the 32x32 maps have 16
channels), ~13 MMACs:

    latent -> Linear 32 (style);  [style, embedding(label)] -> Linear -> 16x4x4 -> [up, 3x3] 32x8x8
    -> 3x3 -> [up, 3x3] 32x16x16 -> 3x3 -> [up, 3x3] 16x32x32 -> 3x3 -> 1x1: alpha + residual
    latent -> Linear -> ReLU -> Linear -> (fg, bg);  image = tanh(bg + sigmoid(alpha) (fg - bg) + residual)

    .venv/bin/python tools/train_glyphtiny.py --workers 1   # writes edgegen/zoo/glyphtiny.{onnx,train.json}
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glyph_data import NUM_CLASSES, make_grid  # noqa: E402
from train_common import start_run, warmup_cosine  # noqa: E402
from train_glyphgen import LATENT_DIM, REPO, ConvBlock, count_macs, grad_l1, n_params, train_classifier  # noqa: E402

STYLE_DIM = 32
EMBED_DIM = 16
SIZE = 32
TEACHER = os.path.join(REPO, "edgegen", "zoo", "glyphgen.onnx")


class GlyphTiny(nn.Module):
    """(latent [N,64], label [N]) -> image [N,3,32,32] in [-1,1].

    A Linear maps glyphgen's 64-d latent to a 32-d style code (a low-rank factor of the first layer:
    the 64 x 256 Linear alone would take a third of the UP5K's weight RAM); the label's embedding joins
    the style before the next layer, so every layer knows the digit; the body is plain 3x3 convolutions.
    The to-RGB head keeps glyphgen's two-colour prior: a small MLP gives a foreground/background pair
    from the latent, the last layer an alpha logit and an RGB residual:
    tanh(bg + sigmoid(alpha) * (fg - bg) + residual)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(NUM_CLASSES, EMBED_DIM)
        self.style = nn.Linear(LATENT_DIM, STYLE_DIM)
        self.fc = nn.Linear(STYLE_DIM + EMBED_DIM, 16 * 4 * 4)
        self.colors = nn.Sequential(nn.Linear(LATENT_DIM, 32), nn.ReLU(inplace=True), nn.Linear(32, 6))
        self.body = nn.Sequential(ConvBlock(16, 32, up=True), ConvBlock(32, 32),  # 8x8
                                  ConvBlock(32, 32, up=True), ConvBlock(32, 32),  # 16x16
                                  ConvBlock(32, 16, up=True), ConvBlock(16, 16))  # 32x32
        self.rgb = nn.Conv2d(16, 4, 1)
        with torch.no_grad():
            self.rgb.weight[1:].mul_(0.1)
            self.rgb.bias.zero_()

    def forward(self, latent, label):
        h = F.relu(self.fc(torch.cat([self.style(latent), self.embed(label)], 1))).view(-1, 16, 4, 4)
        o = self.rgb(self.body(h))
        c = self.colors(latent)[:, :, None, None]
        fg, bg = c[:, :3], c[:, 3:]
        return torch.tanh(bg + torch.sigmoid(o[:, :1]) * (fg - bg) + o[:, 1:])


@functools.lru_cache(maxsize=None)
def teacher_session(path: str):
    """ONNX Runtime session (1 thread) of glyphgen cut down to the nodes its ``preview`` output needs."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(path)
    need, nodes = {"preview"}, []
    for node in reversed(m.graph.node):
        if need.intersection(node.output):
            nodes.append(node)
            need.update(node.input)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    keep = [o for o in m.graph.output if o.name == "preview"]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    used = {i for n in m.graph.node for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def teach(path: str, latent: np.ndarray, label: np.ndarray) -> np.ndarray:
    """glyphgen's 32x32 preview [N,3,32,32] for these latents and labels."""
    return teacher_session(path).run(["preview"], {"latent": latent, "label": label})[0]


def teacher_batch(path: str, seed: int, batch: int, step: int):
    """Step `step`'s training batch, a pure function of (seed, step): (latent, label, teacher image)."""
    rng = np.random.default_rng([seed, step])
    z = rng.standard_normal((batch, LATENT_DIM), dtype=np.float32)
    y = rng.integers(NUM_CLASSES, size=batch).astype(np.int64)
    return torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(teach(path, z, y))


def batches_ahead(make, steps: int, workers: int):
    """make(step) for every step, in order; computed ahead by `workers` processes (0: in this one)."""
    if workers <= 0:
        yield from (make(step) for step in range(steps))
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked: a fork of a process whose torch threads are running can deadlock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        ahead = deque(pool.submit(make, step) for step in range(min(steps, 2 * workers)))
        for step in range(steps):
            done = ahead.popleft()
            if step + len(ahead) + 1 < steps:
                ahead.append(pool.submit(make, step + len(ahead) + 1))
            yield done.result()


def losses(gen, z, y, x, w_sharp):
    img = gen(z, y)
    rec = (img - x).abs().mean()
    sharp = grad_l1(img, x)
    loss = rec + w_sharp * sharp
    return loss, dict(rec=rec.item(), sharp=sharp.item(), loss=loss.item())


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
                 "edgegen.description": f"Class-conditional 32x32 digit-glyph generator (latent[N,{LATENT_DIM}] + "
                                        "label[N] 0-9 -> image [-1,1]) distilled from glyphgen, sized for the "
                                        "iCE40 UP5K's on-chip RAM"}.items():
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
    """Rows = labels 0-9, columns = seeds 0-7 (latent = default_rng(seed).standard_normal(64)), x4."""
    import onnxruntime as ort
    from PIL import Image

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    lat = np.stack([np.random.default_rng(s).standard_normal(LATENT_DIM, dtype=np.float32) for s in range(8)])
    imgs = np.concatenate([sess.run(["image"], {"latent": lat, "label": np.full(8, d, np.int64)})[0]
                           for d in range(NUM_CLASSES)])
    g = make_grid(torch.from_numpy(imgs), 8)
    tmp = out_png + ".tmp.png"
    Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4), Image.NEAREST).save(tmp)
    os.replace(tmp, out_png)


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Train the glyphtiny zoo model (32x32, distilled from glyphgen's preview).")
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(REPO, "edgegen", "zoo", "glyphtiny.onnx"))
    ap.add_argument("--docs", default=os.path.join(REPO, "docs", "zoo"), help="where the sample PNG goes")
    ap.add_argument("--teacher", default=TEACHER, help="glyphgen ONNX file whose preview output is the target")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--w-sharp", type=float, default=0.5, help="weight of the gradient (sharpness) L1 loss")
    ap.add_argument("--classifier-steps", type=int, default=300, help="legibility-probe steps (0 = skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="processes running the teacher ahead (0: none)")
    ap.add_argument("--log-every", type=int, default=200)
    return ap


def main() -> None:
    args = arguments().parse_args()
    log = start_run(args.threads, args.seed)

    gen = GlyphTiny()
    macs = count_macs(gen, torch.zeros(1, LATENT_DIM), torch.zeros(1, dtype=torch.int64))
    log(f"generator {sum(macs.values()) / 1e6:.2f} MMACs, {n_params(gen)} parameters")
    opt = torch.optim.Adam(gen.parameters(), lr=args.lr, betas=(0.9, 0.99))
    lr_at = warmup_cosine(args.lr, args.steps, 0.02)

    make = functools.partial(teacher_batch, args.teacher, args.seed, args.batch)
    run, hist = {}, []
    t_train = time.time()
    gen.train()
    for step, (z, y, x) in enumerate(batches_ahead(make, args.steps, args.workers)):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss, st = losses(gen, z, y, x, args.w_sharp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 5.0)
        opt.step()
        run = {k: 0.9 * run.get(k, v) + 0.1 * v if step else v for k, v in st.items()}
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.time() - t_train
            log(f"step {step + 1}/{args.steps} " + " ".join(f"{k} {v:.4f}" for k, v in run.items())
                + f" ({el / (step + 1):.2f}s/step, eta {el / (step + 1) * (args.steps - step - 1):.0f}s)")
            hist.append(dict(step=step + 1, **{k: round(v, 5) for k, v in run.items()}))
    train_time = time.time() - t_train

    gen.eval()
    zv, yv, xv = teacher_batch(args.teacher, args.seed + 1000, 1024, 0)
    with torch.no_grad():
        _, heldout = losses(gen, zv, yv, xv, args.w_sharp)
    log(f"held-out (1024 fresh latents vs the teacher): {heldout}")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    export_onnx(gen, args.out)
    diff = verify_onnx(gen, args.out)
    os.makedirs(args.docs, exist_ok=True)
    png = os.path.join(args.docs, "glyphtiny_samples.png")
    sample_grid(args.out, png)
    log(f"exported {args.out} ({os.path.getsize(args.out)} bytes, ORT vs PyTorch {diff:.2e}); wrote {png}")

    probe = {}
    if args.classifier_steps > 0:  # glyphgen's legibility probe (64x64): 32x32 images upsampled x2
        clf, real_acc = train_classifier(args.seed, args.classifier_steps, 64, log)
        g = torch.Generator().manual_seed(args.seed + 4242)
        zs, ys = torch.randn(1000, LATENT_DIM, generator=g), torch.arange(1000) % NUM_CLASSES
        teacher = torch.from_numpy(teach(args.teacher, zs.numpy(), ys.numpy()))

        def read(images):
            with torch.no_grad():
                up = F.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
                return (clf(up).argmax(1) == ys).float().mean().item()

        with torch.no_grad():
            mine = gen(zs, ys)
        probe = dict(classifier_acc_real_heldout=real_acc, classifier_acc_generated_prior_1000=read(mine),
                     teacher_preview_acc_same_1000=read(teacher),
                     l1_vs_teacher_same_1000=(mine - teacher).abs().mean().item())
        log(f"legibility probe: {probe}")

    summary = dict(model="glyphtiny", command=" ".join(["python tools/train_glyphtiny.py"] + sys.argv[1:]),
                   args={k: v for k, v in vars(args).items() if k not in ("out", "docs", "teacher")},
                   teacher="edgegen/zoo/glyphgen.onnx (preview output)", torch=torch.__version__,
                   train_time_s=round(train_time, 1), total_time_s=round(log.elapsed, 1),
                   final_train_losses_ema={k: round(v, 5) for k, v in run.items()}, heldout=heldout,
                   macs_per_image=sum(macs.values()), macs_by_module=macs, params_generator=n_params(gen),
                   onnx_bytes=os.path.getsize(args.out), onnx_vs_torch_max_abs=diff, legibility_probe=probe,
                   history=hist)
    js = os.path.splitext(os.path.abspath(args.out))[0] + ".train.json"
    with open(js + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(js + ".tmp", js)
    log(f"wrote {js}")


if __name__ == "__main__":
    main()
