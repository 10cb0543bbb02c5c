"""Place activation buffers in ACT, check every memory against the target's sizes, and encode the
program's memory images. A model that does not fit is an error naming the layer and the bytes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import BuildError
from .emit import Program
from .isa import DESC_WORDS, Images, KIND_END, Layer
from .tensors import Buffer


class FitError(BuildError):
    """The model needs more on-chip memory than the target's NPU has."""


def allocate(program: Program, buffers: list[Buffer], target: str) -> dict[str, Any]:
    """First-fit placement of buffers by live range, within each buffer's ACT bank (one bank unless
    act_banks is 2); returns ACT usage (peak words, and per bank)."""
    config = program.config
    size = config.act_words // config.act_banks
    peaks = []
    for bank in range(config.act_banks):
        members = [b for b in buffers if config.act_banks == 1 or b.bank == bank]
        peaks.append(_place(program, members, bank * size, size, target,
                            f" (bank {bank} of {config.act_banks}: {size * config.lanes} bytes)"
                            if config.act_banks > 1 else ""))
    program.resolve()
    report = {"act_bytes": (max(bank * size + peak for bank, peak in enumerate(peaks) if peak)
                            if any(peaks) else 0) * config.lanes, "act_capacity": config.act_bytes}
    if config.act_banks > 1:
        report["act_bank_bytes"] = [peak * config.lanes for peak in peaks]
    return report


def _place(program: Program, buffers: list[Buffer], offset: int, size: int, target: str, where: str) -> int:
    """Place buffers into ACT words [offset, offset + size); returns the peak (words). Two greedy orders
    are tried, largest buffer first (the order of TFLite's greedy-by-size planner, which fragments
    least) and first written first; the placement with the lower peak is kept."""
    orders = [sorted(buffers, key=lambda b: (-b.words, b.first)), sorted(buffers, key=lambda b: (b.first, -b.words))]
    peak, placement, top = min((_first_fit(order) for order in orders), key=lambda attempt: attempt[0])
    if peak <= size:
        for buf, base in placement:
            buf.base = offset + base
        return peak
    config = program.config

    def live_at(step: int) -> list[Buffer]:
        return [b for b in buffers if b.first <= step <= b.last]

    busiest = max({b.first for b in buffers}, key=lambda step: sum(b.words for b in live_at(step)))
    moment = busiest if sum(b.words for b in live_at(busiest)) > size else top.first  # too much at once, or gaps
    live_now = live_at(moment)
    need = sum(b.words for b in live_now) * config.lanes
    writer = "the host (a model input)" if moment < 0 else _describe(program.layers[moment])
    tensors = ", ".join(f"{b.name} {b.words * config.lanes} B" for b in live_now)
    capacity = size * config.lanes
    why = f"needs {need} bytes of activation RAM at once{where} (live tensors: {tensors}), " + (
        f"but the NPU has {capacity} bytes" if need > capacity else
        f"which the NPU's {capacity} bytes hold, but no placement of the model's buffers over time leaves "
        f"{top.name} a free block of {top.words * config.lanes} bytes")
    raise FitError(f"target {target}: {writer} {why} (backend_options.act_kb).{_padding(live_now, config.lanes)} "
                   "Use a target with more on-chip RAM, a smaller input size (--input-shape), or prune the model.")


def _padding(buffers: list[Buffer], lanes: int) -> str:
    """A note when most of the live bytes are lane padding: a pixel's channels are stored in whole groups
    of `lanes`, so a 3-channel image takes as much RAM as a `lanes`-channel one."""
    narrow = [b for b in buffers if b.channels and b.channels % lanes and b.channels < lanes]
    padded = sum(b.words * lanes * (1 - b.channels / (-(-b.channels // lanes) * lanes)) for b in narrow)
    if padded < 0.25 * sum(b.words for b in buffers) * lanes:
        return ""
    names = ", ".join(f"{b.name} ({b.channels} channel{'s' if b.channels > 1 else ''})" for b in narrow)
    return (f" {int(padded)} of those bytes are lane padding: the NPU stores each pixel's channels in groups of "
            f"{lanes} lanes, and {names} fill few of them; a target with fewer lanes wastes less.")


def _first_fit(order: list[Buffer]) -> tuple[int, list[tuple[Buffer, int]], Buffer | None]:
    """Each buffer in turn at the lowest word clear of the placed buffers live at the same time:
    (peak words, (buffer, base) pairs, the buffer that reaches the peak)."""
    placed: list[tuple[Buffer, int]] = []
    peak, top = 0, None
    for buf in order:
        live = sorted((base, b.words) for b, base in placed if b.first <= buf.last and b.last >= buf.first)
        base = 0
        for other_base, words in live:
            if base + buf.words <= other_base:
                break
            base = max(base, other_base + words)
        placed.append((buf, base))
        if base + buf.words > peak:
            peak, top = base + buf.words, buf
    return peak, placed, top


def check_static(program: Program, target: str) -> dict[str, Any]:
    """Weights, per-channel parameters, tables, taps and descriptors against the memories that hold them."""
    config = program.config
    prune = "Use a target with more on-chip RAM or prune the model (--prune or --prune-to-macs)."
    limits = [("wgt_end", config.wgt_words, config.lanes, "weight RAM", "wgt_kb", prune),
              ("par_end", config.par_entries, 12, "parameter RAM (bias, multiplier, shift per channel)", "par_entries",
               prune),
              ("tap_end", config.tap_entries, 8, "tap RAM", "tap_entries", prune),
              ("luts", config.lut_bytes // 256, 256, "activation-table RAM", "lut_tables", _table_advice(program))]
    for key, capacity, unit, memory, option, advice in limits:
        for index, layer in enumerate(program.layers):
            used = layer.notes.get(key, 0)
            if used > capacity:
                before = f"with the {index} layers before it" if index else "the first layer alone"
                raise FitError(f"target {target}: {_describe(layer)} needs {used * unit} bytes of {memory} "
                               f"({before}), but the NPU has {capacity * unit} bytes "
                               f"(backend_options.{option}). {advice}")
    words = (len(program.layers) + 1) * DESC_WORDS
    if words > config.prog_words:
        raise FitError(f"target {target}: the program has {len(program.layers)} layers ({words * 4} bytes of "
                       f"descriptors), but the NPU's program RAM holds {config.prog_words // DESC_WORDS - 1} "
                       "(backend_options.prog_layers).")
    return {"wgt_bytes": program.wgt_words * config.lanes, "wgt_capacity": config.wgt_bytes,
            "par_entries": program.par_rows, "tap_entries": len(program.tap), "lut_tables": len(program.luts),
            "layers": len(program.layers)}


def _table_advice(program: Program) -> str:
    """What the 256-byte tables hold, and what frees them."""
    total, regrids = len(program.luts), len(program.regrid_luts & set(program.luts))
    moving = "only move values onto another int8 grid (a Concat input or a copy whose scales differ from its " \
             "destination's)"
    activations = "apply fused non-linear activations (Sigmoid, Tanh, ...), one per activation and int8 scales"
    if regrids == total:
        held, fewer = f"All {total} of the model's tables {moving}", "Concats whose inputs share one range"
    elif regrids:
        held = f"Of the model's {total} tables, {regrids} {moving} and the rest {activations}"
        fewer = "fewer such activations, or Concats whose inputs share one range"
    else:
        held, fewer = f"The model's {total} tables {activations}", "fewer such activations"
    return (f"{held}; a table serves any number of channels, so pruning does not help: use a target with more "
            f"table RAM, or a model with {fewer}.")


def _describe(layer: Layer) -> str:
    return f"layer {layer.name!r} (op {layer.op})"


def encode(program: Program) -> Images:
    """The static memory images of a resolved program."""
    lanes = program.config.lanes
    wgt = np.concatenate(program.wgt) if program.wgt else np.zeros((0, lanes), np.int8)
    par = np.concatenate(program.par) if program.par else np.zeros((0, 3), np.int64)
    lut = np.zeros(len(program.luts) * 256, np.uint8)
    for table, base in program.luts.items():
        lut[base:base + 256] = np.frombuffer(table, np.uint8)
    end = Layer(KIND_END).encode()
    prog = np.concatenate([layer.encode() for layer in program.layers] + [end])
    return Images(wgt=wgt, par=par, lut=lut, tap=np.asarray(program.tap, np.uint64), prog=prog)
