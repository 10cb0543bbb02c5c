"""Precomputed assets: images rendered at build time, shipped in the bundle as one pack file plus an
index (`assets/index.json`: key -> offset, length, dtype, shape, sha256, request).

The device maps the pack read-only with mmap; a hit copies the bytes out and never touches the
backend. Each entry's bytes are checked against its sha256 the first time the entry is served
(hashing on every hit would cost more than the rest of a hit); a damaged entry is reported as a
miss (and recomputed by the generator), so a corrupt pack never yields corrupt pixels. Bundles
are replaced by rename, never rewritten in place, so a checked mapping stays what was checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import BundleError
from .cache import CacheStats

log = logging.getLogger(__name__)

DIR = "assets"
INDEX = f"{DIR}/index.json"
PACK = f"{DIR}/pack.bin"
FORMAT = "edgegen-assets"
ALIGN = 64


class AssetPack:
    """Read-only view of a bundle's precomputed assets."""

    def __init__(self, bundle_dir: Path, content_hash: str):
        index_path = Path(bundle_dir) / INDEX
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{index_path}: unreadable asset index ({exc}); rerun `edgegen precompute` "
                              "or rebuild the bundle") from None
        if index.get("format") != FORMAT or index.get("content_hash") != content_hash:
            raise BundleError(f"{index_path}: these assets were rendered for another model artifact; rerun "
                              "`edgegen precompute BUNDLE REQUESTS` to render them for this one")
        self.entries: dict[str, dict[str, Any]] = index["entries"]
        self.stats = CacheStats(entries=len(self.entries))
        self._lock = threading.Lock()
        self._file = None
        self._map = None
        self._checked: set[str] = set()
        pack = Path(bundle_dir) / PACK
        if self.entries and pack.stat().st_size:
            self._file = open(pack, "rb")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        self.stats.bytes = len(self._map) if self._map is not None else 0

    @staticmethod
    def present(bundle_dir: Path) -> bool:
        return (Path(bundle_dir) / INDEX).is_file()

    def get(self, key: str) -> np.ndarray | None:
        """The asset for a key (a private copy), or None when absent or damaged."""
        entry = self.entries.get(key)
        if entry is None or self._map is None:
            with self._lock:
                self.stats.misses += 1
            return None
        start, length = entry["offset"], entry["length"]
        data = bytearray(self._map[start:start + length])
        if key not in self._checked:
            if len(data) != length or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                with self._lock:
                    self.stats.corrupt += 1
                    self.stats.misses += 1
                log.warning("asset %s in the pack does not match its sha256; recomputing it", key[:12])
                return None
            self._checked.add(key)
        with self._lock:
            self.stats.hits += 1
        return np.frombuffer(data, dtype=np.dtype(entry["dtype"])).reshape(entry["shape"])

    def items(self) -> Iterable[tuple[str, dict[str, Any], np.ndarray | None]]:
        """(key, request, array or None when damaged) for every entry."""
        for key, entry in self.entries.items():
            yield key, entry["request"], self.get(key)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._file.close()
            self._map = None


def write_pack(bundle_dir: Path, content_hash: str, entries: Iterable[tuple[str, dict[str, Any], np.ndarray]],
               rendered_on: str) -> int:
    """Write assets/pack.bin and assets/index.json into a (staging) bundle directory; return the count."""
    directory = Path(bundle_dir) / DIR
    directory.mkdir(parents=True, exist_ok=True)
    index: dict[str, dict[str, Any]] = {}
    with open(Path(bundle_dir) / PACK, "wb") as pack:
        for key, request, array in entries:
            payload = np.ascontiguousarray(array).tobytes()
            pack.write(b"\0" * (-pack.tell() % ALIGN))
            index[key] = {"offset": pack.tell(), "length": len(payload), "dtype": array.dtype.str,
                          "shape": list(array.shape), "sha256": hashlib.sha256(payload).hexdigest(),
                          "request": request}
            pack.write(payload)
    (Path(bundle_dir) / INDEX).write_text(json.dumps(
        {"format": FORMAT, "version": 1, "content_hash": content_hash, "rendered_on": rendered_on,
         "entries": index}, indent=1) + "\n")
    return len(index)
