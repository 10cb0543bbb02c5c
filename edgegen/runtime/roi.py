"""Region-of-interest execution, incremental edits and halo-aware tiles from a spatial program.

The spatial program (built by `edgegen.receptive_field`) lists the local ops between the roots
(the image input, or maps a projection computed whole) and an image output. For an output
rectangle the planner walks it back to every tensor's needed interval, picks an output window
aligned so that every strided op samples the same grid as on the full frame, crops the roots to
that window and runs the `post` part on the crop: the window's halo absorbs the crop's borders,
and the rectangle cut from the result equals the same region of the full output.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import RequestError
from .geometry import Interval, needed, out_size
from .parts import Parts

Rect = tuple[Interval, Interval]  # (rows, columns), half-open, output pixels
STATIC_SHAPE_BACKENDS = {"tflite", "fpga"}  # a region runs on a crop of its own size, which they cannot take


def static_shapes_refusal(backend: str) -> str:
    """Why a backend of STATIC_SHAPE_BACKENDS offers no regions, and what to do."""
    return (f"{backend} artifacts have static shapes, and a region runs on a crop of its own size; build for an "
            "ONNX Runtime or OpenVINO target")
MEMO_ENTRIES = 4096


class SpatialProgram:
    """Geometry of one image output: sizes, needed intervals and aligned windows."""

    def __init__(self, data: dict[str, Any]):
        self.output = data["output"]
        self.ops = data["ops"]
        self.align = data["align"]
        self.bytes_per_pixel = data["bytes_per_pixel"]
        self.roots = [r["name"] for r in data["roots"] if r["spatial"]]
        self.side = [r["name"] for r in data["roots"] if not r["spatial"]]
        self.scales = {t: tuple(Fraction(*s) for s in pair) for t, pair in data["scales"].items()}

    def sizes(self, root_sizes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """Full-frame (H, W) of every tensor, from the roots' sizes; UnrunnableSize where the network cannot
        take them: an op whose inputs no longer line up (a U-Net's skip Concat at a side its strides floor), or
        one left with an empty map. The backend refuses such a frame; a crop of it could run all the same."""
        sizes = dict(root_sizes)
        for op in self.ops:
            given = [sizes[x] for x in op["inputs"]]
            outs = {tuple(out_size(op["kind"], op["axes"][a], src[a]) for a in (0, 1)) for src in given}
            if len(outs) > 1:
                raise UnrunnableSize(f"node {op['node']!r} ({op['op']}) would join maps of "
                                     f"{' and '.join(f'{h}x{w}' for h, w in given)}, which do not line up")
            out = outs.pop()
            if min(out) < 1:
                raise UnrunnableSize(f"node {op['node']!r} ({op['op']}) would be left with an empty "
                                     f"{out[0]}x{out[1]} map")
            sizes[op["output"]] = out
        return sizes

    def needed(self, axis: int, interval: Interval, sizes: dict[str, tuple[int, int]]) -> dict[str, Interval]:
        """Per tensor, the interval along one axis that an output interval reads."""
        need = {self.output: interval}
        for op in reversed(self.ops):
            if op["output"] not in need:
                continue
            lo, hi = need[op["output"]]
            for x in op["inputs"]:
                got = needed(op["kind"], op["axes"][axis], lo, hi, sizes[x][axis])
                if got is not None:
                    old = need.get(x, got)
                    need[x] = (min(old[0], got[0]), max(old[1], got[1]))
        return need

    def window(self, axis: int, interval: Interval, sizes: dict[str, tuple[int, int]]) -> Interval:
        """The aligned output window whose crop holds everything the interval reads."""
        step = self.align[axis]
        full = sizes[self.output][axis]
        need = self.needed(axis, interval, sizes)
        lo = min(math.floor(a / self.scales[t][axis]) for t, (a, _) in need.items())
        hi = max(math.ceil(b / self.scales[t][axis]) for t, (_, b) in need.items())
        return max(lo // step * step, 0), min(-(-hi // step) * step, full)

    def root_crop(self, root: str, axis: int, window: Interval, sizes: dict[str, tuple[int, int]]) -> Interval:
        """A root's slice for an output window."""
        scale, full_out, full = self.scales[root][axis], sizes[self.output][axis], sizes[root][axis]
        end = full if window[1] >= full_out else min(math.ceil(window[1] * scale), full)
        return int(window[0] * scale), end


class UnrunnableSize(ValueError):
    """A frame size the network cannot take (found by the planner, which the runtime reports as the backend's
    own refusal of that frame)."""


WHOLE_FRAME_SHARE = 0.5  # a region that first computes this share of the MACs on the whole frame comes from the frame


class RoiEngine:
    """Computes regions of one image output: `region` for a rectangle, `tiled` for a whole frame in
    tiles, `dirty_rects` for the output an input edit reaches."""

    def __init__(self, program: SpatialProgram, parts: Parts, pre: str | None, post: str, pre_share: float = 0.0):
        self.program = program
        self.parts = parts
        self.pre = pre
        self.post = post
        self.pre_share = pre_share  # the share of the frame's MACs computed whole before any region
        self._memo: dict[tuple, Any] = {}  # geometry per frame size: sizes, windows, tile reaches

    def _remember(self, key: tuple, compute):
        if key not in self._memo:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[key] = compute()
        return self._memo[key]

    def roots(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The root tensors of a full frame (from the pre part, or the inputs themselves)."""
        names = self.program.roots + self.program.side
        if self.pre is None:
            return {n: feeds[n] for n in names}
        computed = self.parts.run(self.pre, feeds)
        return {n: computed[n] if n in computed else feeds[n] for n in names}

    def sizes(self, roots: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
        frame = tuple((r, tuple(roots[r].shape[2:4])) for r in self.program.roots)
        return self._remember(("sizes", frame), lambda: self.program.sizes(dict(frame)))

    def _window(self, axis: int, interval: Interval, sizes: dict[str, tuple[int, int]]) -> Interval:
        key = ("window", axis, interval, sizes[self.program.output], tuple(sizes[r] for r in self.program.roots))
        return self._remember(key, lambda: self.program.window(axis, interval, sizes))

    def frame_size(self, roots: dict[str, np.ndarray]) -> tuple[int, int]:
        return self.sizes(roots)[self.program.output]

    @staticmethod
    def check(rect: Rect, size: tuple[int, int]) -> None:
        """RequestError for a rectangle reaching outside an output of `size` (h, w)."""
        h, w = size
        (y0, y1), (x0, x1) = rect
        if y1 > h or x1 > w:
            raise RequestError(f"roi (x={x0}, y={y0}, width={x1 - x0}, height={y1 - y0}) reaches outside the "
                               f"{w}x{h} image; keep x + width <= {w} and y + height <= {h}")

    def region(self, roots: dict[str, np.ndarray], rect: Rect) -> np.ndarray:
        """Raw output [N, C, h, w] of one rectangle, computed on a crop."""
        sizes = self.sizes(roots)
        windows = [self._window(a, rect[a], sizes) for a in (0, 1)]
        feeds = {n: roots[n] for n in self.program.side}
        for r, ((a0, a1), (b0, b1)) in self._crops(windows, sizes).items():
            feeds[r] = np.ascontiguousarray(roots[r][:, :, a0:a1, b0:b1])
        out = self.parts.run(self.post, feeds)[self.program.output]
        expected = tuple(w1 - w0 for w0, w1 in windows)
        if tuple(out.shape[2:4]) != expected:
            raise RuntimeError(f"ROI window {windows} gave a {out.shape[2:4]} output, not {expected}")
        (y0, y1), (x0, x1) = rect
        return out[:, :, y0 - windows[0][0]:y1 - windows[0][0], x0 - windows[1][0]:x1 - windows[1][0]]

    @property
    def frame_first(self) -> bool:
        """Whether regions come from the frame, cropped: where the tensors a region needs whole (channel
        attention's gates, squeeze-excitation) already cost half the frame's MACs or more, the region's own
        runs on top of them cost more than the rest of the frame (RCAN-style: 1.2-1.4x a full frame)."""
        return self.pre_share >= WHOLE_FRAME_SHARE

    def crops_nothing(self, roots: dict[str, np.ndarray], rect: Rect) -> bool:
        """Whether a rectangle needs every root whole (its receptive field spans the input, as a deep
        U-Net's does): the frame's own artifact then computes it faster than the region's."""
        sizes = self.sizes(roots)
        windows = [self._window(a, rect[a], sizes) for a in (0, 1)]
        return all(crop == ((0, sizes[r][0]), (0, sizes[r][1])) for r, crop in self._crops(windows, sizes).items())

    def _crops(self, windows: list[Interval],
               sizes: dict[str, tuple[int, int]]) -> dict[str, tuple[Interval, Interval]]:
        """Each root's (rows, columns) that an output window needs."""
        return {r: tuple(self.program.root_crop(r, a, windows[a], sizes) for a in (0, 1)) for r in self.program.roots}

    def window_area(self, rect: Rect, sizes: dict[str, tuple[int, int]]) -> int:
        windows = [self._window(a, rect[a], sizes) for a in (0, 1)]
        return (windows[0][1] - windows[0][0]) * (windows[1][1] - windows[1][0])

    def tile_size(self, roots: dict[str, np.ndarray], budget_bytes: int) -> int | None:
        """The largest square tile (aligned) whose computed window fits the byte budget, or None
        when the whole frame fits."""
        sizes = self.sizes(roots)
        h, w = sizes[self.program.output]
        batch = len(next(iter(roots.values())))
        per_pixel = self.program.bytes_per_pixel * batch
        if h * w * per_pixel <= budget_bytes:
            return None
        step = math.lcm(*self.program.align)
        tile = max(h, w)
        while tile > step:
            tile = max(step, tile // 2 // step * step)
            y, x = max((h - tile) // 2 // step * step, 0), max((w - tile) // 2 // step * step, 0)
            rect = ((y, min(y + tile, h)), (x, min(x + tile, w)))
            if self.window_area(rect, sizes) * per_pixel <= budget_bytes:
                return tile
        return step

    def tiled(self, roots: dict[str, np.ndarray], tile: int) -> np.ndarray:
        """The whole frame computed tile by tile."""
        h, w = self.frame_size(roots)
        return self.assemble(roots, [((y, min(y + tile, h)), (x, min(x + tile, w)))
                                     for y in range(0, h, tile) for x in range(0, w, tile)])

    def assemble(self, roots: dict[str, np.ndarray], rects: list[Rect]) -> np.ndarray:
        """A frame made of rectangles computed one by one."""
        out = None
        for rect in rects:
            part = self.region(roots, rect)
            if out is None:
                h, w = self.frame_size(roots)
                out = np.empty(part.shape[:2] + (h, w), part.dtype)
            (y0, y1), (x0, x1) = rect
            out[:, :, y0:y1, x0:x1] = part
        return out

    def dirty_rects(self, changed: np.ndarray, root: str, roots: dict[str, np.ndarray], cell: int) -> list[Rect]:
        """Output rectangles that the changed pixels of `root` reach. Changes are grouped into blobs
        (cells of `cell` pixels, joined where their reaches would overlap) and each blob's bounding box
        maps exactly, axis by axis, to the output rows and columns whose receptive field holds it."""
        sizes = self.sizes(roots)
        frame = (sizes[self.program.output], tuple(sizes[r] for r in self.program.roots))
        tables = [self._remember(("reach", a, root, frame), lambda a=a: self._reach_table(a, root, sizes))
                  for a in (0, 1)]
        field = max(int(np.max(t[1] - t[0])) for t in tables)  # receptive field width at the root
        rects = []
        for y0, y1, x0, x1 in _blobs(changed, cell, join=-(-field // cell)):
            rows, cols = _reach(tables[0], y0, y1), _reach(tables[1], x0, x1)
            if rows and cols:
                rects.append((rows, cols))
        return rects

    def _reach_table(self, axis: int, root: str, sizes: dict[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """For every output index along an axis, the interval of `root` it reads (monotone in the index)."""
        lo, hi = [], []
        for u in range(sizes[self.program.output][axis]):
            got = self.program.needed(axis, (u, u + 1), sizes).get(root)
            a, b = got if got is not None else (lo[-1] if lo else 0, hi[-1] if hi else 0)
            lo.append(a)
            hi.append(b)
        return np.array(lo), np.array(hi)


def _reach(table: tuple[np.ndarray, np.ndarray], start: int, stop: int) -> Interval | None:
    """Output indices whose input interval meets [start, stop)."""
    lo, hi = table
    first, end = int(np.searchsorted(hi, start, side="right")), int(np.searchsorted(lo, stop, side="left"))
    return (first, end) if first < end else None


def _blobs(changed: np.ndarray, cell: int, join: int) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, y1, x0, x1) of the changed pixels, grouped by cells that lie within `join`
    cells of each other."""
    h, w = changed.shape
    cell = min(cell, max(h, w))  # a cell as large as the frame already holds all of it
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.zeros((gh * cell, gw * cell), bool)
    padded[:h, :w] = changed
    cells = padded.reshape(gh, cell, gw, cell).any(axis=(1, 3))
    label = np.full(cells.shape, -1)
    boxes = []
    for start in zip(*np.nonzero(cells)):
        if label[start] >= 0:
            continue
        label[start] = len(boxes)
        stack, members = [start], []
        while stack:
            i, j = stack.pop()
            members.append((i, j))
            for a in range(max(i - join, 0), min(i + join + 1, gh)):
                for b in range(max(j - join, 0), min(j + join + 1, gw)):
                    if cells[a, b] and label[a, b] < 0:
                        label[a, b] = len(boxes)
                        stack.append((a, b))
        rows, cols = zip(*members)
        window = padded[min(rows) * cell:(max(rows) + 1) * cell, min(cols) * cell:(max(cols) + 1) * cell]
        ys, xs = np.nonzero(window)
        boxes.append((min(rows) * cell + int(ys.min()), min(rows) * cell + int(ys.max()) + 1,
                      min(cols) * cell + int(xs.min()), min(cols) * cell + int(xs.max()) + 1))
    return boxes


def to_rect(roi: tuple[int, int, int, int]) -> Rect:
    """(x, y, width, height) -> ((y0, y1), (x0, x1))."""
    x, y, w, h = roi
    return (y, y + h), (x, x + w)


