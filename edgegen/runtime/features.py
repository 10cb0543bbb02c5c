"""Feature cache: the trunk's outputs, keyed by its inputs, so a variation request (same seed, another
label or style) runs only the head. Trunk and head are parts compiled at build time
(`serving.split` in the manifest); the runtime always serves through them, so a cached and a
freshly computed trunk give the same pixels."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..errors import BundleError
from .cache import LRUCache
from .parts import Parts
from .requests import digest

TRUNK = "trunk"


class FeatureCache:
    """Runs trunk + head, reusing trunk outputs from an LRU within a byte budget."""

    def __init__(self, parts: Parts, split: dict[str, Any], content_hash: str, budget_bytes: int):
        self.parts = parts
        self.split = split
        self.trunk_inputs = list(split["trunk_inputs"])
        self.cut = list(split["cut"])
        self._prefix = content_hash
        self.cache = LRUCache(budget_bytes, size=lambda d: sum(a.nbytes for a in d.values()))

    def _key(self, feeds: dict[str, np.ndarray], i: int) -> str:
        h = hashlib.sha256(self._prefix.encode())
        for name in self.trunk_inputs:
            h.update(digest(feeds[name][i]).encode())
        return h.hexdigest()

    def trunk(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Trunk outputs (batched) for batched feeds, from the cache where possible."""
        if self.cache.stats.budget_bytes <= 0:  # caching off: no keys, no copies
            ran = self.parts.run(TRUNK, feeds)
            return {n: ran[n] for n in self.cut}
        count = len(feeds[self.trunk_inputs[0]])
        keys = [self._key(feeds, i) for i in range(count)]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}  # one trunk run per distinct input
        found = {k: self.cache.get(k) for k in first}
        missing = [k for k, f in found.items() if f is None]
        if missing:
            ran = self.parts.run(TRUNK, {n: feeds[n][[first[k] for k in missing]] for n in self.trunk_inputs})
            flat = [n for n in self.cut if ran[n].ndim == 0 or len(ran[n]) != len(missing)]
            if flat:
                raise BundleError(f"trunk output(s) {flat} have no batch axis, so they cannot be cached per "
                                  "request; rebuild with --split naming per-sample tensors")
            for j, k in enumerate(missing):
                found[k] = {n: np.array(ran[n][j]) for n in self.cut}
                self.cache.put(k, found[k])
        if len(keys) == 1:  # a view, no copy
            return {n: found[keys[0]][n][None] for n in self.cut}
        return {n: np.stack([found[k][n] for k in keys]) for n in self.cut}

    def run(self, head: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A head part's outputs (and the trunk's): cached or fresh trunk features plus the other inputs."""
        features = self.trunk(feeds)
        return {**features, **self.parts.run(head, {**feeds, **features})}
