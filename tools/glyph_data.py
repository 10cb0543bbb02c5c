"""Procedural glyph dataset used to train the ``glyphgen`` zoo model.

Every sample is a 64x64 RGB picture of one digit (classes 0-9) rendered with
Pillow from one of the TrueType fonts that matplotlib ships
(``matplotlib.get_data_path()/fonts/ttf``).  Per sample, randomly:

* font (DejaVu Sans/Serif/Mono with bold/oblique variants, STIX General
  variants, Computer Modern roman/bold/sans/typewriter/italic),
* foreground colour on a contrasting background colour,
* glyph size: the longer side of the (rotated) glyph covers 55-90 % of the
  canvas,
* rotation in [-20, 20] degrees,
* small offset from the centre (at most 4 px and never leaving the canvas).

``GlyphDataset.pair_batch`` additionally renders two digits in one shared
style (used by the glyphgen trainer to tie the digit identity to the label).

Everything is a pure function of ``(seed, index)`` so a dataset is fully
reproducible and can be indexed in any order (no stored state is needed).

Images are returned as float32 tensors in [-1, 1], NCHW; labels as int64.

Run ``python tools/glyph_data.py --out grid.png`` to write a preview grid.
"""

from __future__ import annotations

import argparse
import glob
import os
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

NUM_CLASSES = 10
IMAGE_SIZE = 64

# Fonts (file names inside matplotlib's fonts/ttf) whose digits render at the
# usual code points.  cmmi10 (old-style figures), the symbol-only STIX/cm
# fonts, the *Display fonts and LastResort are deliberately left out.
FONT_FILES = [
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
]

_RENDER_PT = 160  # point size of the cached master glyphs
_SUPERSAMPLE = 4  # glyphs are composed at 4x and box-filtered down


def font_dir() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def available_fonts() -> list[str]:
    """Absolute paths of the fonts used, in a fixed order."""
    d = font_dir()
    present = {os.path.basename(p) for p in glob.glob(os.path.join(d, "*.ttf"))}
    fonts = [os.path.join(d, f) for f in FONT_FILES if f in present]
    if not fonts:
        raise RuntimeError(f"no usable fonts found in {d}")
    return fonts


@lru_cache(maxsize=None)
def _master_glyph(font_path: str, digit: int) -> Image.Image:
    """Tight-cropped 8-bit coverage mask of ``digit`` at a large point size."""
    font = ImageFont.truetype(font_path, _RENDER_PT)
    canvas = Image.new("L", (_RENDER_PT * 2, _RENDER_PT * 2), 0)
    ImageDraw.Draw(canvas).text((_RENDER_PT // 2, _RENDER_PT // 4), str(digit), font=font, fill=255)
    bbox = canvas.getbbox()
    if bbox is None:
        raise RuntimeError(f"font {font_path} has no glyph for {digit}")
    return canvas.crop(bbox)


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random foreground/background colours with a clear luminance contrast."""
    while True:
        fg = rng.random(3)
        bg = rng.random(3)
        if abs(_luma(fg) - _luma(bg)) >= 0.35:
            return fg.astype(np.float32), bg.astype(np.float32)


def sample_style(rng: np.random.Generator, fonts: list[str]) -> dict:
    """Draw everything about a sample except the digit itself."""
    font_path = fonts[int(rng.integers(len(fonts)))]
    fg, bg = _colours(rng)
    return dict(
        font=font_path,
        fg=fg,
        bg=bg,
        frac=float(rng.uniform(0.55, 0.90)),
        angle=float(rng.uniform(-20.0, 20.0)),
        offset=rng.uniform(-1.0, 1.0, size=2),
    )


def render_style(digit: int, style: dict, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render ``digit`` in ``style``; returns float32 HWC in [0, 1]."""
    big = size * _SUPERSAMPLE
    glyph = _master_glyph(style["font"], digit).rotate(style["angle"], resample=Image.BICUBIC, expand=True)
    glyph = glyph.crop(glyph.getbbox())
    gw, gh = glyph.size
    scale = style["frac"] * big / max(gw, gh)
    nw, nh = max(1, round(gw * scale)), max(1, round(gh * scale))
    glyph = glyph.resize((nw, nh), resample=Image.LANCZOS)

    # centre + small offset (<= 4 px at output resolution, clipped to canvas)
    max_off = 4 * _SUPERSAMPLE
    room_x, room_y = (big - nw) // 2, (big - nh) // 2
    dx = int(round(style["offset"][0] * min(max_off, room_x)))
    dy = int(round(style["offset"][1] * min(max_off, room_y)))
    mask = Image.new("L", (big, big), 0)
    mask.paste(glyph, (room_x + dx, room_y + dy))
    mask = mask.resize((size, size), resample=Image.BOX)

    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    fg, bg = style["fg"], style["bg"]
    return bg[None, None, :] * (1.0 - m) + fg[None, None, :] * m


def render_glyph(
    digit: int,
    rng: np.random.Generator,
    size: int = IMAGE_SIZE,
    fonts: list[str] | None = None,
) -> np.ndarray:
    """Render one glyph in a random style; returns float32 HWC in [0, 1]."""
    fonts = fonts if fonts is not None else available_fonts()
    return render_style(digit, sample_style(rng, fonts), size)


class GlyphDataset(torch.utils.data.Dataset):
    """Indexable, deterministic glyph dataset.

    ``ds[i]`` -> (image float32 [3,64,64] in [-1,1], label int64 scalar).
    Sample ``i`` depends only on ``(seed, i)``; ``length`` is nominal (any
    non-negative index works, so ``batch`` can stream fresh samples forever).
    """

    def __init__(self, seed: int = 0, length: int = 100_000, size: int = IMAGE_SIZE):
        self.seed = int(seed)
        self.length = int(length)
        self.size = int(size)
        self.fonts = available_fonts()

    def __len__(self) -> int:
        return self.length

    def sample_np(self, index: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, int(index)])
        label = int(rng.integers(NUM_CLASSES))
        img = render_glyph(label, rng, self.size, self.fonts)
        return img, label

    def pair_np(self, index: int) -> tuple[np.ndarray, int, np.ndarray, int]:
        """Two digits (independent labels, may coincide) in the SAME style
        (font, colours, size, rotation, offset).  Used to teach a conditional
        generator that the label, not the latent, decides which digit is drawn."""
        rng = np.random.default_rng([self.seed, int(index), 1])
        a, b = (int(v) for v in rng.integers(NUM_CLASSES, size=2))
        style = sample_style(rng, self.fonts)
        return render_style(a, style, self.size), a, render_style(b, style, self.size), b

    def pair_batch(self, start: int, n: int):
        """Pairs ``start .. start+n-1``: (xa, ya, xb, yb), images in [-1,1] NCHW."""
        xa, ya, xb, yb = zip(*(self.pair_np(i) for i in range(start, start + n)))

        def t(imgs):
            return torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy()) * 2.0 - 1.0

        return t(xa), torch.tensor(ya, dtype=torch.int64), t(xb), torch.tensor(yb, dtype=torch.int64)

    def __getitem__(self, index: int):
        img, label = self.sample_np(index)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))) * 2.0 - 1.0
        return x, torch.tensor(label, dtype=torch.int64)

    def batch(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start .. start+n-1`` stacked: ([n,3,H,W] in [-1,1], [n] int64)."""
        imgs, labels = zip(*(self.sample_np(i) for i in range(start, start + n)))
        x = torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy()) * 2.0 - 1.0
        return x, torch.tensor(labels, dtype=torch.int64)


def make_grid(x: torch.Tensor, nrow: int) -> np.ndarray:
    """[N,3,H,W] in [-1,1] -> uint8 HWC grid with a 2 px grey border."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    n, _, h, w = x.shape
    ncol = nrow
    nrows = (n + ncol - 1) // ncol
    pad = 2
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, 3), 128, np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i].transpose(1, 2, 0)
    return grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out", default="glyph_data_grid.png")
    args = ap.parse_args()
    ds = GlyphDataset(seed=args.seed)
    x, y = ds.batch(0, args.n)
    Image.fromarray(make_grid(x, 8)).save(args.out)
    print("fonts:", len(ds.fonts), "labels:", y.tolist())


if __name__ == "__main__":
    main()
