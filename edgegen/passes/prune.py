"""Training-free structured channel pruning on the ONNX graph.

1. Channel groups (`channel_groups`): output channels of Conv / ConvTranspose / Gemm layers that must go
   together (residual Add, Concat offsets, depthwise, norms, Gemm -> Reshape), and what may not be
   touched (graph inputs and outputs, ops edgegen does not model), with reasons.
2. Importance (`channel_importance`): calibration activations times the weight norms of the layers
   that read each channel.
3. Selection: within a group the least important channels go. `prune(ratio)` first takes the same
   ratio in every prunable group (floor(ratio x channels), at least one kept; groups of 32 channels or
   more keep a multiple of 8, which vector kernels need), then re-allocates that MAC budget by measured
   sensitivity (`Pruner.allocate`): each group pruned alone at the ratio gives its damage (MSE against
   the unpruned model, reconstructed) and its MAC saving, and the groups get their own ratios with at
   most the uniform result's MACs and the least modelled damage. The allocation is kept only when its
   reconstructed quality beats the uniform one; the report shows both. The ratio searches use the
   uniform selection, whose MACs fall predictably with the ratio.
4. Reconstruction (`reconstruct`): layers that lost input channels are re-fitted by least squares so
   their outputs match the unpruned model's on the calibration data.

`prune_to_floor` and `prune_to_macs` search the ratio; the analysis and importance are computed once.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterator

import numpy as np
import onnx

from ..errors import BuildError, RequestError
from ..graph import Graph
from ..inputs import fixed_batch, run_batched, sample_feeds
from .calibration import Calibration
from .channel_edit import constants_to_initializers, remove_channels, tensor_shapes
from .channel_groups import ChannelGraph, Group, analyze
from .channel_importance import channel_importance
from .floor import Evaluator, QualityFloor
from .reconstruct import Targets, reconstruct as refit, record_targets, refit_samples, refittable

log = logging.getLogger(__name__)

HELD_OUT_SEED = 20_000  # default quality check inputs; calibration uses seeds 0..n-1
HELD_OUT_COUNT = 8
MIN_SAVING = 0.05  # the share of the MACs that pruning every prunable group must be able to save
CHANNEL_MULTIPLE = 8  # odd widths run up to 2x slower in ONNX Runtime (measured: MobileNet-ResNet, 45 vs 48 ch)
MAX_GROUP_SHARE = 0.9  # the most an allocation takes from one group
FLOOR_STEP = 0.05
MACS_STEP = 0.01
IMPORTANCE = "rms(calibration activation) x ||weights of the layers reading the channel||, summed over readers"
Progress = Callable[[str, int, int], None]  # (step, done, total)


def prune(graph: Graph, ratio: float, calibration: Calibration, reconstruct: bool = True,
          evaluator: Evaluator | None = None, allocate: bool = True,
          progress: Progress | None = None) -> tuple[Graph, dict[str, Any]]:
    """Prune to the MACs of removing `ratio` of every prunable group's output channels (with `allocate`, the
    channels re-allocated across groups by measured sensitivity); returns the pruned graph and a report.

    Quality (PSNR/SSIM) is measured with `evaluator` (default: the unpruned model on 8 held-out inputs
    from the input spec) both with and without reconstruction.
    """
    _check_ratio(ratio)
    pruner = Pruner(graph, calibration, progress)
    if not pruner.keep(ratio):
        raise BuildError(f"{graph.source}: --prune {ratio:g} removes no channel ({pruner.smallest_effect()}); "
                         "give a larger ratio")
    return pruner.result(ratio, reconstruct, evaluator or pruner.default_evaluator(), allocate and reconstruct)


def prune_to_floor(graph: Graph, calibration: Calibration, evaluator: Evaluator, floor: QualityFloor,
                   max_ratio: float = 0.9, progress: Progress | None = None) -> tuple[Graph, dict[str, Any]]:
    """The largest ratio of `Pruner.floor_grid(max_ratio)` whose reconstructed result meets `floor`.

    Quality falls with the ratio, so the grid is bisected; every ratio tried is in the report's `search`.
    If the smallest ratio that removes a channel misses the floor, that is an error, not a silently
    unpruned model.
    """
    if not floor:
        raise RequestError("pruning to a quality floor needs --min-psnr and/or --min-ssim")
    _check_ratio(max_ratio)
    pruner = Pruner(graph, calibration, progress)
    grid = pruner.floor_grid(max_ratio)
    if not grid:
        raise BuildError(f"{graph.source}: no pruning ratio up to {max_ratio:g} removes a channel "
                         f"({pruner.smallest_effect()}); give a larger --prune")
    search: list[dict[str, Any]] = []
    if grid[-1] == max_ratio:  # the ratio asked for, as --prune alone ships it (re-allocated): where it meets, it ships
        pruned, report = pruner.result(max_ratio, True, evaluator, allocate=True)
        search.append({"ratio": max_ratio, "allocated": True, **report["quality"]["result"],
                       "met": floor.met(report["quality"]["result"])})
        if search[-1]["met"]:
            report["search"] = {"floor": floor.describe(), "max_ratio": max_ratio, "step": FLOOR_STEP,
                                "tried": search}
            return pruned, report

    def meets(ratio: float) -> bool:
        quality = evaluator.quality(pruner.model(ratio, True)[0])
        search.append({"ratio": ratio, **quality, "met": floor.met(quality)})
        return search[-1]["met"]

    if not meets(grid[0]):
        raise BuildError(f"{graph.source}: no pruning ratio meets the quality floor ({floor.describe()}): "
                         f"{grid[0]:g}, the smallest ratio that removes any channel, already gives "
                         f"{search[-1]['psnr_db']:.1f} dB / SSIM {search[-1]['ssim']:.4f} with reconstruction. Lower "
                         "the floor, calibrate with more representative data, or build without pruning.")
    lo, hi = 0, len(grid)  # grid[lo] meets the floor; grid[hi:] do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if meets(grid[mid]) else (lo, mid)
    pruned, report = pruner.result(grid[lo], True, evaluator, allocate=True)  # re-allocated where that scores higher
    if not floor.met(report["quality"]["result"]):  # its PSNR is higher; an SSIM floor it may still miss
        pruned, report = pruner.result(grid[lo], True, evaluator)
    report["search"] = {"floor": floor.describe(), "max_ratio": max_ratio, "step": FLOOR_STEP, "tried": search}
    return pruned, report


def prune_to_macs(graph: Graph, calibration: Calibration, target_macs: int, evaluator: Evaluator | None = None,
                  progress: Progress | None = None, compiled_macs: Callable[[Graph], int] | None = None
                  ) -> tuple[Graph, dict[str, Any]]:
    """The smallest ratio on a 0.01 grid whose result needs at most `target_macs` MACs (batch 1), reconstructed.
    compiled_macs: the MACs of a graph as the build compiles it (after lowerings that add some), when not the
    graph's own."""
    pruner = Pruner(graph, calibration, progress)
    count = compiled_macs or (lambda g: pruner.costs(g.model)["macs"])
    before = count(graph)
    if not 0 < target_macs < before:
        raise RequestError(f"--prune-to-macs {target_macs}: {graph.source} needs {before:,} MACs (batch "
                           f"{fixed_batch(graph.inputs) or 1}); give "
                           "a target between 1 and that")
    grid = [round(MACS_STEP * k, 2) for k in range(1, round(1 / MACS_STEP))]
    macs = {}

    def fits(k: int) -> bool:
        macs[grid[k]] = count(graph.with_model(pruner.model(grid[k], False)[0], []))
        return macs[grid[k]] <= target_macs

    if not fits(len(grid) - 1):
        raise BuildError(f"{graph.source}: pruning cannot reach {target_macs:,} MACs: even at {grid[-1]:.0%} the "
                         f"model needs {macs[grid[-1]]:,} (layers that cannot be pruned: see `excluded` in the "
                         "report of --prune). Raise the target.")
    lo, hi = -1, len(grid) - 1  # grid[hi] fits; grid[:lo + 1] do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    pruned, report = pruner.result(grid[hi], True, evaluator or pruner.default_evaluator())
    report["search"] = {"target_macs": target_macs, "step": MACS_STEP,
                        "tried": [{"ratio": r, "macs": m} for r, m in sorted(macs.items())],
                        "counted": "as compiled (after the int8 lowerings)" if compiled_macs else "as pruned"}
    if compiled_macs:  # the budget's count beside the pruned graph's own (report["macs"])
        report["search"]["compiled_macs"] = {"before": before, "after": count(pruned)}
    return pruned, report


class Pruner:
    """Channel groups and importance of one graph, computed once; models at any ratio on demand."""

    def __init__(self, graph: Graph, calibration: Calibration, progress: Progress | None = None):
        """progress(step, done, total): called as the importance, each re-fit wave and each group alone finish."""
        _check_calibration(graph, calibration)
        self.graph, self.calibration = graph, calibration
        self.progress = progress or (lambda step, done, total: None)
        self.batch = fixed_batch(graph.inputs)
        self.work = constants_to_initializers(graph.model)
        self.cg: ChannelGraph = analyze(self.work, tensor_shapes(self.work, graph.concrete_shapes()))
        groups = self.cg.groups()
        self.prunable = [g for g in groups if not g.reasons and g.size > 1]
        self.excluded = [g for g in groups if g.reasons and (g.producers or g.consumers)]
        if not self.prunable:
            raise BuildError(f"{graph.source}: no prunable channels: " + _why_none(self.excluded, groups))
        self._macs_seen: dict[tuple[tuple[int, int], ...], int] = {}
        self.costs_before = self.costs(self.work)
        self._refuse_negligible()
        self.progress("importance", 0, 1)
        self.importance = channel_importance(self.work, self.cg, self.prunable, calibration, self.batch)
        self.progress("importance", 1, 1)
        self._cache: dict[tuple[float, bool], tuple[onnx.ModelProto, list[dict], list[dict]]] = {}
        self._targets: Targets | None = None

    def _refuse_negligible(self) -> None:
        """Refuse where even keeping one channel of every prunable group would save under MIN_SAVING of
        the MACs (a StyleGAN's modulated convolutions have computed weights, and only its mapping MLP is
        prunable): pruning would cost quality for no speed."""
        total = self.costs_before["macs"]
        saving = total - self._macs({g.root: np.arange(1) for g in self.prunable})
        if total and saving < MIN_SAVING * total:
            reasons = list(dict.fromkeys(r for g in self.excluded for r in g.reasons))
            raise BuildError(f"{self.graph.source}: pruning cannot make this model faster: its {len(self.prunable)} "
                             f"prunable channel group(s) hold {saving / total:.2%} of the MACs (at most that is "
                             f"saved, keeping one channel of each); {len(self.excluded)} group(s) are excluded: "
                             + "; ".join(reasons[:3]) + ". Build without --prune")

    def keep(self, ratio: float) -> dict[int, np.ndarray]:
        """Kept channel indices per group at the same ratio everywhere (see keep_shares)."""
        return self.keep_shares({g.root: ratio for g in self.prunable})

    def smallest_ratio(self) -> float:
        """The smallest ratio that removes a channel (k/n of a group of n, rounded up to 4 decimals)."""
        candidates = sorted({math.ceil(k / g.size * 1e4 - 1e-6) / 1e4 for g in self.prunable
                             for k in range(1, g.size)})
        lo, hi = -1, len(candidates) - 1  # removing n - 1 of any group of n removes one; candidates[:lo + 1] do not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.keep(candidates[mid]) else (mid, hi)
        return candidates[hi]

    def smallest_effect(self) -> str:
        """The smallest ratio that removes a channel, said for an error message."""
        sizes = sorted(g.size for g in self.prunable)
        return (f"its {len(sizes)} prunable groups have {sizes[0]}-{sizes[-1]} channels; the smallest ratio that "
                f"removes one is {self.smallest_ratio():g}")

    def floor_grid(self, max_ratio: float) -> list[float]:
        """The ratios a floor search tries: the multiples of FLOOR_STEP up to `max_ratio`, `max_ratio` itself and
        the smallest ratio that removes a channel, less those that remove none."""
        steps = {round(FLOOR_STEP * k, 2) for k in range(1, int(max_ratio / FLOOR_STEP + 1e-9) + 1)}
        return [r for r in sorted(steps | {max_ratio, self.smallest_ratio()}) if r <= max_ratio and self.keep(r)]

    def keep_shares(self, shares: dict[int, float]) -> dict[int, np.ndarray]:
        """Kept channel indices per group root: all but the floor(share x size) least important, at least one;
        groups of 4 x CHANNEL_MULTIPLE channels or more keep a multiple of CHANNEL_MULTIPLE."""
        keep = {}
        for g in self.prunable:
            kept = max(1, g.size - math.floor(shares.get(g.root, 0.0) * g.size + 1e-9))
            if g.size >= 4 * CHANNEL_MULTIPLE:
                kept = min(g.size, -(-kept // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE)
            if kept < g.size:
                keep[g.root] = np.sort(np.argsort(-self.importance[g.root], kind="stable")[:kept])
        return keep

    def model(self, ratio: float, reconstruct: bool) -> tuple[onnx.ModelProto, list[dict], list[dict]]:
        """(pruned model, refit rows, layers left as they were) at `ratio`; reconstructed models are cached."""
        if (ratio, reconstruct) not in self._cache:
            keep = self.keep(ratio)
            pruned = self.model(ratio, False)[0] if reconstruct else remove_channels(self.work, self.cg, keep)
            self._cache[ratio, reconstruct] = self._reconstruct(pruned, keep) if reconstruct else (pruned, [], [])
        return self._cache[ratio, reconstruct]

    def allocate(self, ratio: float, evaluator: Evaluator) -> dict[int, float] | None:
        """Per-group shares with at most the MACs of `ratio` everywhere and the least modelled damage.

        Each group pruned alone at `ratio` (reconstructed) gives its damage d (MSE against the unpruned
        model) and MAC saving m at share r; damage is modelled as d (x / r)^2 and saving as m x / r, so the
        best shares are x_g = lambda m_g r_g / (2 d_g) (capped at MAX_GROUP_SHARE), with lambda the
        smallest that meets the MAC budget (bisection on the real MACs). None when no group loses a channel."""
        uniform = self.keep(ratio)
        if not uniform:
            return None
        budget = self._macs(uniform)
        cost = {}
        for g, model in self.each_group_alone(ratio):
            share = 1 - len(uniform[g.root]) / g.size
            damage = max(10 ** (-evaluator.quality(model)["psnr_db"] / 10), 1e-20)
            saving = max(self.costs_before["macs"] - self.costs(model)["macs"], 1)
            cost[g.root] = saving * share / (2 * damage)  # x_g = lambda * cost_g

        def shares(lam: float) -> dict[int, float]:
            return {root: min(MAX_GROUP_SHARE, lam * c) for root, c in cost.items()}

        lo, hi = 0.0, 1.0 / max(cost.values())
        while self._macs(self.keep_shares(shares(hi))) > budget:
            if all(x >= MAX_GROUP_SHARE for x in shares(hi).values()):
                return None
            lo, hi = hi, hi * 4
        for _ in range(24):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if self._macs(self.keep_shares(shares(mid))) <= budget else (mid, hi)
        return shares(hi)

    def _macs(self, keep: dict[int, np.ndarray]) -> int:
        """MACs with `keep`, which depend only on how many channels each group keeps (the allocation's
        bisection asks for the same counts again and again)."""
        counts = tuple(sorted((root, len(kept)) for root, kept in keep.items()))
        if counts not in self._macs_seen:
            self._macs_seen[counts] = self.costs(remove_channels(self.work, self.cg, keep))["macs"]
        return self._macs_seen[counts]

    def each_group_alone(self, ratio: float) -> Iterator[tuple[Group, onnx.ModelProto]]:
        """For every group that loses channels at `ratio`: the model with only that group pruned, reconstructed
        (how much each group alone costs: the sensitivity behind a ratio that misses a floor), one at a time."""
        keep = self.keep(ratio)
        for done, g in enumerate((g for g in self.prunable if g.root in keep), 1):
            alone = {g.root: keep[g.root]}
            model = self._reconstruct(remove_channels(self.work, self.cg, alone), alone)[0]
            self.progress("sensitivity", done, len(keep))
            yield g, model

    def targets(self) -> Targets:
        """The unpruned model's outputs of every layer a reconstruction may re-fit, recorded on first use."""
        if self._targets is None:
            nodes = self.work.graph.node
            roots = {g.root for g in self.prunable}
            layers = [(c.node, c.kind) for c in self.cg.consumers
                      if any(self.cg.find(s) in roots for s, _ in c.layout.segments)
                      and not refittable(nodes[c.node], c.kind, self.work)]
            self._targets = record_targets(self.work, layers, self.calibration, self.batch)
        return self._targets

    def _reconstruct(self, pruned: onnx.ModelProto, keep: dict[int, np.ndarray]):
        layers, skipped = [], []
        for c in self.cg.consumers:
            if self.cg.positions(c.layout, keep) is None:
                continue
            node = pruned.graph.node[c.node]
            why = refittable(node, c.kind, pruned)
            if why:
                skipped.append({"layer": node.name, "reason": why})
            else:
                out = self.cg.layouts.get(node.output[0])
                layers.append((c.node, c.kind, self.cg.positions(out, keep) if out else None))
        fitted, rows = refit(pruned, layers, self.targets(),
                             progress=lambda done, total: self.progress("re-fit", done, total))
        return fitted, rows, skipped

    def costs(self, model: onnx.ModelProto) -> dict[str, int]:
        """MACs, parameter count and bytes (batch 1, default shapes)."""
        nodes = self.graph.with_model(model, []).node_costs()
        params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
        return {"macs": sum(c.macs for c in nodes), "params": params,
                "param_bytes": sum(c.param_bytes for c in nodes),
                "activation_bytes": sum(c.activation_bytes for c in nodes)}

    def default_evaluator(self) -> Evaluator:
        """The unpruned model's outputs on held-out inputs from the input spec."""
        import onnxruntime as ort

        feeds = sample_feeds(self.graph.inputs, list(range(HELD_OUT_SEED, HELD_OUT_SEED + HELD_OUT_COUNT)))
        session = ort.InferenceSession(self.work.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        expected = run_batched(lambda f: dict(zip(names, session.run(names, f))), self.graph.inputs, feeds)
        return Evaluator(self.graph.inputs, self.graph.outputs, feeds, expected)

    def result(self, ratio: float, reconstruct: bool, evaluator: Evaluator,
               allocate: bool = False) -> tuple[Graph, dict[str, Any]]:
        """The pruned graph at `ratio` (uniform, or sensitivity-allocated when that is better) and its report
        (quality with and without reconstruction)."""
        start = time.perf_counter()
        keep = self.keep(ratio)
        raw, _, _ = self.model(ratio, False)
        final, rows, skipped = self.model(ratio, True) if reconstruct else (raw, [], [])
        allocation: dict[str, Any] = {"used": False}
        shares = self.allocate(ratio, evaluator) if allocate and reconstruct else None
        if shares is not None:
            alt_keep = self.keep_shares(shares)
            alt_raw = remove_channels(self.work, self.cg, alt_keep)
            alt_final, alt_rows, alt_skipped = self._reconstruct(alt_raw, alt_keep)
            uniform_db, allocated_db = evaluator.quality(final)["psnr_db"], evaluator.quality(alt_final)["psnr_db"]
            allocation = {"used": allocated_db > uniform_db, "uniform_psnr_db": uniform_db,
                          "allocated_psnr_db": allocated_db, "uniform_macs": self.costs(final)["macs"]}
            if allocation["used"]:
                keep, raw, final, rows, skipped = alt_keep, alt_raw, alt_final, alt_rows, alt_skipped
        before, after = self.costs_before, self.costs(final)
        quality = {"without_reconstruction": evaluator.quality(raw)}
        if reconstruct:
            quality["with_reconstruction"] = evaluator.quality(final)
        # a re-fit that scores lower on the held-out inputs than the plain pruned graph (a ridge fitted on few
        # samples) is not shipped
        refit_kept = reconstruct and quality["with_reconstruction"]["psnr_db"] >= quality["without_reconstruction"][
            "psnr_db"]
        final = final if refit_kept else raw
        quality["result"] = quality["with_reconstruction" if refit_kept else "without_reconstruction"]
        selection = ("the MACs of floor(ratio x channels) in every group, re-allocated across groups by measured "
                     "sensitivity" if allocation["used"] else "floor(ratio x channels) of every prunable group")
        report = {
            "ratio": ratio,
            "selection": f"{selection}, least important first; groups of {4 * CHANNEL_MULTIPLE}+ channels keep a "
                         f"multiple of {CHANNEL_MULTIPLE}",
            "allocation": allocation,
            "importance": IMPORTANCE,
            "calibration": self.calibration.report(),
            **{key: {"before": before[key], "after": after[key]} for key in before},
            "groups": [self._group_row(g, keep) for g in self.prunable],
            "excluded": [{"layers": g.producers, "consumers": [self.work.graph.node[i].name for i in g.consumers],
                          "channels": g.size, "reasons": g.reasons} for g in self.excluded],
            "reconstruction": {"enabled": reconstruct, "kept": refit_kept, "layers": rows, "not_refit": skipped,
                               "calibration": refit_samples(self.calibration, self.batch).report()},
            "quality": quality,
            "seconds": round(time.perf_counter() - start, 2),
        }
        removed = sum(g.size - len(keep.get(g.root, range(g.size))) for g in self.prunable)
        how = "allocated by sensitivity" if allocation["used"] else "per group"
        note = (f"pruned {removed} channels ({ratio:.0%} {how}, {len(keep)} groups): MACs {before['macs']:,} -> "
                f"{after['macs']:,}" + (f", {len(rows)} layers re-fitted by least squares" if refit_kept else
                                        ", the least-squares re-fit not kept (it scored lower)" if reconstruct else ""))
        log.info(note)
        return self.graph.with_model(final, [note]), report

    def _group_row(self, g: Group, keep: dict[int, np.ndarray]) -> dict[str, Any]:
        kept = keep.get(g.root, np.arange(g.size))
        score = self.importance[g.root]
        nodes = self.work.graph.node
        members = set(g.spaces)
        entries = list(self.cg.params) + list(self.cg.shape_entries)
        touched = {nodes[e.node].name for e in entries if members & {s for s, _ in e.layout.segments}}
        adjusted = sorted(touched - set(g.producers) - {nodes[i].name for i in g.consumers})
        return {"layers": g.producers, "consumers": [nodes[i].name for i in g.consumers], "adjusted": adjusted,
                "channels": [g.size, int(len(kept))],
                "importance_removed": round(float(1 - score[kept].sum() / (score.sum() or 1.0)), 4)}


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise RequestError(f"pruning ratio must be a number strictly between 0 and 1 (the share of channels "
                           f"removed per group), got {ratio!r}")


def _check_calibration(graph: Graph, calibration: Calibration) -> None:
    for spec in graph.inputs:
        array = calibration.feeds.get(spec.name)
        if array is None:
            raise RequestError(f"calibration data has no array for input {spec.name!r} (has "
                               f"{sorted(calibration.feeds)})")
        fixed = list(spec.shape[1:])
        if array.dtype != np.dtype(spec.dtype) or array.ndim != len(spec.shape) or any(
                d is not None and d != s for d, s in zip(fixed, array.shape[1:])):
            raise RequestError(f"calibration array {spec.name!r} is {array.dtype} {list(array.shape)}; input "
                               f"{spec.name!r} takes {spec.dtype} [N, {', '.join(str(d or '?') for d in fixed)}]")


def _why_none(excluded: list[Group], groups: list[Group]) -> str:
    reasons = list(dict.fromkeys(r for g in excluded for r in g.reasons))
    if not any(g.producers for g in groups):
        return "the model has no Conv, ConvTranspose, Gemm or MatMul layer whose output channels could be removed"
    single = [g for g in groups if not g.reasons and g.size == 1]
    tail = f"; {len(single)} group(s) have a single channel" if single else ""
    return ("every layer's output channels are tied to something that must not change: " +
            "; ".join(reasons[:4]) + (f" (and {len(reasons) - 4} more)" if len(reasons) > 4 else "") + tail)
