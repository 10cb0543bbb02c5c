"""ONNX op -> TFLite operator rules. Each rule has a check (why a node cannot be lowered, or
None) and a lower function writing the node through the Lowerer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import onnx

from ..prepare import Prepared

Check = Callable[[onnx.NodeProto, Prepared], "str | None"]


@dataclass
class Rule:
    check: Check
    lower: Callable


RULES: dict[str, Rule] = {}


def rule(*op_types: str, check: Check | None = None):
    """Register a lower function for these ONNX op types."""
    def register(fn):
        for op_type in op_types:
            RULES[op_type] = Rule(check or (lambda node, p: None), fn)
        return fn
    return register


def static_shapes(node: onnx.NodeProto, p: Prepared) -> str | None:
    """Every input and output of the node has a known shape at the default input shapes."""
    for name in [*node.input, *node.output]:
        if name and name not in p.shapes and name not in p.consts:
            return f"the shape of {name!r} is not static at the default input shapes"
    return None


from . import conv, elementwise, pool, resize, tensor  # noqa: E402,F401  (registers the rules)
