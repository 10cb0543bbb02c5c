"""ACT banks (`act_banks: 2`, the UP5K's single-port SPRAM): give every buffer a bank so that each layer
writes its output into the other bank than the one it reads its inputs from.

The NPU reads a layer's inputs and writes its output in the same cycle, and a single-port bank does
one of the two per cycle. Banks are assigned in program order: a buffer written by a layer goes into
the other bank than that layer's inputs; an input that sits in the output's bank (a concat segment
read by a layer writing another segment of the same buffer, an ADD of two tensors in different
banks, a residual around one conv) is first copied into the other bank by a depthwise copy layer
(exact: weight 1, multiplier 1.0, the same grid). Views share their buffer's bank.
"""

from __future__ import annotations

from dataclasses import replace

from .tensors import Buffer, Tensor
from .values import Lowered


def assign_banks(lowerer, lowered: Lowered) -> int:
    """Rewrite lowered.program with bank copies where needed and set every buffer's bank; returns
    the number of copy layers inserted."""
    program = lowerer.program
    layers, refs = program.layers, program.refs
    outputs = {id(tensor.buffer) for _, tensor, _, _ in lowered.outputs}
    program.layers, program.refs = [], []
    for buf in lowered.buffers:
        buf.bank = None
        buf.last = -1
        if buf.first != -1:
            buf.first = None
    copies: dict[tuple, Tensor] = {}
    inserted = 0
    for layer, ref in zip(layers, refs):
        out = ref["out"].buffer
        inputs = {role: t for role, t in ref.items() if role != "out"}
        if out.bank is not None:
            want = 1 - out.bank
        else:
            want = next((t.buffer.bank for t in inputs.values() if t.buffer.bank is not None), 0)
        new_ref = dict(ref)
        for role, tensor in inputs.items():
            buf = tensor.buffer
            if buf.bank is None:  # written by the host: any bank
                buf.bank = want
            if buf.bank != want or buf is out:
                key = (id(buf), tensor.goff, tensor.gs, tensor.groups, tensor.h, tensor.w, want)
                if key not in copies:
                    copies[key] = _copy(lowerer, lowered, tensor, want, layer.name)
                    inserted += 1
                new_ref[role] = copies[key]
        if out.bank is None:
            out.bank = 1 - want
        program._append(layer, new_ref)
    end = len(program.layers)
    for buf in lowered.buffers:
        if id(buf) in outputs:
            buf.last = end
        if buf.bank is None:  # a host input no layer reads
            buf.bank = 0
    return inserted


def _copy(lowerer, lowered: Lowered, tensor: Tensor, bank: int, reader: str) -> Tensor:
    """A depthwise copy of `tensor` into a new buffer in `bank`, with the same layout (pixel stride,
    group offset), so the reading layer's descriptor and taps stay valid."""
    buf = Buffer(f"{tensor.buffer.name}@bank{bank}", tensor.buffer.words, channels=tensor.buffer.channels)
    buf.bank = bank
    buf.tensors.append(tensor.name)
    lowered.buffers.append(buf)
    dst = replace(tensor, buffer=buf)
    lowerer.copy(tensor, dst, name=f"{reader}/bank{bank}_copy", op="Copy")
    return dst
