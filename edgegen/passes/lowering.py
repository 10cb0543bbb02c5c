"""Exact rewrites run before int8 quantization, chosen per backend by name.

A backend lists the rewrites that let it run more of the graph in int8 (its compiler module's
``INT8_LOWERINGS``); each is exact in float, so the quality floor sees the same function. This is the
one place where the QDQ graph differs between backends: every tensor the graphs share is calibrated to
the same range (the float values are the same), and only a rewrite's own intermediates (the phase
outputs of a ConvTranspose) add quantization points.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import BuildError
from ..graph import Graph
from .activation_phases import activations_into_phases
from .latent_arithmetic import latent_arithmetic_as_products
from .lower_conv_transpose import lower_conv_transposes, lower_short_conv_transposes, merge_narrow_conv_transposes
from .lower_resize import lower_cubic_resizes
from .narrow_conv_strided import narrow_convs_strided
from .shuffle_dcr import depth_to_space_as_dcr

LOWERINGS: dict[str, Callable[[Graph], tuple[Graph, list[dict[str, Any]]]]] = {
    "cubic_resize": lower_cubic_resizes,      # integer-factor cubic Resize -> Pad + Conv + DepthToSpace
    "conv_transpose": lower_conv_transposes,  # strided ConvTranspose -> per-phase Conv + DepthToSpace
    "narrow_conv_transpose": merge_narrow_conv_transposes,  # 3-output one -> one Conv of all phases + DepthToSpace
    "short_conv_transpose": lower_short_conv_transposes,  # one with a 2n - 1 output -> per-phase Conv + DepthToSpace
    "activation_into_phases": activations_into_phases,  # Conv(s) -> DepthToSpace -> Relu: Relu on each Conv
    "shuffle_dcr": depth_to_space_as_dcr,     # Conv -> DepthToSpace CRD: the Conv's channels permuted to DCR
    "narrow_conv_strided": narrow_convs_strided,   # 3-output kxk Conv -> 12-output (k+1)x(k+1) stride-2 Conv + DepthToSpace
    "latent_arithmetic": latent_arithmetic_as_products,  # latent / c -> latent * (1/c), latent - c -> latent + (-c)
}

# rewrites that hold at the input size the graph was lowered at only (stride-2 blocks need an even output):
# not for a build whose tiers run the lowered graph at other sizes
SIZE_BOUND = ("narrow_conv_strided",)


def lower(graph: Graph, names: tuple[str, ...]) -> tuple[Graph, dict[str, list[dict[str, Any]]]]:
    """Apply the named rewrites in order; the report lists, per rewrite, the nodes it replaced."""
    report = {}
    for name in names:
        if name not in LOWERINGS:
            raise BuildError(f"unknown int8 lowering {name!r}; known: {', '.join(LOWERINGS)}")
        graph, replaced = LOWERINGS[name](graph)
        if replaced:
            report[name] = replaced
    return graph, report
