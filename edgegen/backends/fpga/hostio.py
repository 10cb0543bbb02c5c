"""Move tensors between the host's arrays and the NPU's ACT words (numpy only).

A placement (written by the compiler into the session config) says where a tensor lives: base
word, words per pixel, channel groups, shape, channel map, and its int8 grid."""

from __future__ import annotations

import numpy as np

from .isa import region_address


def to_words(placement: dict, codes: np.ndarray, lanes: int) -> tuple[int, bytes]:
    """(host address, bytes) that store int8 codes [C, H, W] (or [C]) at a placement."""
    c, h, w, gs = placement["c"], placement["h"], placement["w"], placement["groups"]
    words = np.zeros((h * w, gs * lanes), np.int8)
    words[:, np.asarray(placement["cmap"])] = np.asarray(codes, np.int8).reshape(c, h * w).T
    if placement["gs"] != gs:
        raise ValueError("a model input must own its ACT words (its placement has other tensors interleaved)")
    return region_address("act", placement["base"] * lanes), words.tobytes()


def span(placement: dict, lanes: int) -> tuple[int, int]:
    """(host address, byte count) covering a tensor's pixels."""
    count = ((placement["h"] * placement["w"] - 1) * placement["gs"] + placement["groups"]) * lanes
    return region_address("act", placement["base"] * lanes), count


def from_words(placement: dict, data: bytes, lanes: int) -> np.ndarray:
    """int8 codes [C, H, W] of a tensor read as the bytes of `span`."""
    c, h, w, gs = placement["c"], placement["h"], placement["w"], placement["gs"]
    raw = np.frombuffer(data, np.int8)
    raw = np.concatenate([raw, np.zeros(h * w * gs * lanes - raw.size, np.int8)]).reshape(h * w, gs * lanes)
    return raw[:, np.asarray(placement["cmap"])].T.reshape(c, h, w)
