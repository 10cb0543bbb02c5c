"""Runtime caches with byte budgets: an in-memory LRU and an optional on-disk cache.

Both map a key (hex sha256 of bundle content hash + canonical request) to a numpy array and never
hold more than their budget. The disk cache writes each entry to a temporary file and renames it
into place, and checks the sha256 stored in the entry (over its key, dtype, shape and data) on every
read: an entry cut short by a crash or damaged on disk is dropped and recomputed, never served. A
full disk stops writes, not serving. The cache touches only names it makes: `<key>.egc` entries and
`.<key>.<random>.egc.tmp` temporary files (a process killed mid-write leaves one; the next open
removes it), so it can live in a directory that holds other files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import RequestError
from ..fileio import alive, owner, owner_pattern

log = logging.getLogger(__name__)

MAGIC = b"EGC2"  # EGC1 entries (a digest of the data only) read as damaged: dropped and recomputed
ENTRY = re.compile(r"[0-9a-f]{64}\.egc")
TEMPORARY = re.compile(rf"\.[0-9a-f]{{64}}\.{owner_pattern()}\.[A-Za-z0-9_]+\.egc\.tmp")  # of this host


@dataclass
class CacheStats:
    """Counters of one cache."""

    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0
    budget_bytes: int = 0
    evictions: int = 0
    corrupt: int = 0
    write_errors: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LRUCache:
    """Thread-safe least-recently-used map of key -> value within a byte budget.

    size: how many bytes a value counts for (default: numpy nbytes). A value larger than the whole
    budget is not stored."""

    def __init__(self, budget_bytes: int, size: Callable[[Any], int] = lambda v: int(v.nbytes)):
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self.stats = CacheStats(budget_bytes=_budget(budget_bytes, "an in-memory cache budget (cache_bytes, feature_cache_bytes)"))

    def get(self, key: str, count_miss: bool = True) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.stats.misses += int(count_miss)
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return item[0]

    def put(self, key: str, value: Any) -> None:
        nbytes = self._size(value)
        with self._lock:
            if key in self._items:
                self.stats.bytes -= self._items.pop(key)[1]
            if nbytes > self.stats.budget_bytes:
                self.stats.entries = len(self._items)
                return
            while self.stats.bytes + nbytes > self.stats.budget_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.stats.bytes -= dropped
                self.stats.evictions += 1
            self._items[key] = (value, nbytes)
            self.stats.bytes += nbytes
            self.stats.entries = len(self._items)

    def __len__(self) -> int:
        return len(self._items)


RESCAN_WRITES = 32  # every this many writes a disk cache reads its directory's true total back


class DiskCache:
    """Arrays in files under `directory`, one per key, within a byte budget (least recently used
    entries go first). Entries: magic, header length, JSON header (key, dtype, shape, sha256 of those three
    and the data), data."""

    def __init__(self, directory: str | Path, budget_bytes: int):
        self.directory = Path(directory).expanduser()
        self._lock = threading.Lock()
        self.stats = CacheStats(budget_bytes=_budget(budget_bytes, "a disk cache budget (disk_cache_bytes)"))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # an unusable directory: every read misses and every write counts as failed
            log.warning("disk cache %s cannot be created (%s); serving without it", self.directory, exc)
        self._sizes: dict[str, int] = {}
        self._writes = 0
        self._rescan()
        for temporary in self._files(TEMPORARY):  # left by a process killed mid-write (not one still writing)
            if not alive(int(TEMPORARY.fullmatch(temporary.name).group(1))):
                temporary.unlink(missing_ok=True)

    def _rescan(self) -> None:
        """Read the entries' sizes from the directory: what this process wrote and what others sharing it did."""
        self._sizes = {}
        for path in self._files(ENTRY):
            try:
                self._sizes[path.stem] = path.stat().st_size
            except OSError:  # removed meanwhile by another process
                pass
        self.stats.bytes, self.stats.entries = sum(self._sizes.values()), len(self._sizes)

    def _files(self, name: re.Pattern) -> list[Path]:
        """The regular files in the directory whose names match `name` (none when it cannot be listed)."""
        try:
            return [p for p in self.directory.iterdir() if name.fullmatch(p.name) and p.is_file()]
        except OSError:
            return []

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.egc"

    def get(self, key: str, count_miss: bool = True) -> np.ndarray | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:
            with self._lock:
                self.stats.misses += int(count_miss)
            return None
        array = _decode(data, key)
        with self._lock:
            if array is None:
                self.stats.corrupt += 1
                self.stats.misses += 1
                self._forget(key)
                path.unlink(missing_ok=True)
                log.warning("disk cache entry %s is damaged; dropped, will recompute", path)
                return None
            self.stats.hits += 1
        try:
            os.utime(path)  # recency for eviction
        except OSError:
            pass
        return array

    def put(self, key: str, array: np.ndarray) -> None:
        data = _encode(key, array)
        if len(data) > self.stats.budget_bytes:
            return
        with self._lock:
            self._writes += 1
            if self._writes % RESCAN_WRITES == 0:  # processes sharing the directory hold its budget together
                self._rescan()
            try:
                self._forget(key)
                self._make_room(len(data))
                _write_atomically(self.directory, self._path(key), data)
            except OSError as exc:  # full disk, read-only medium, quota: keep serving without storing
                self.stats.write_errors += 1
                if self._path(key).exists():  # the previous entry for this key is still there
                    self._sizes[key] = self._path(key).stat().st_size
                    self.stats.bytes += self._sizes[key]
                log.warning("disk cache %s: cannot store an entry (%s); serving continues", self.directory, exc)
                return
            self._sizes[key] = len(data)
            self.stats.bytes += len(data)
            self.stats.entries = len(self._sizes)

    def _make_room(self, incoming: int) -> None:
        if self.stats.bytes + incoming <= self.stats.budget_bytes:
            return
        by_age = sorted(self._files(ENTRY), key=_mtime)
        for path in by_age:
            if self.stats.bytes + incoming <= self.stats.budget_bytes:
                break
            path.unlink(missing_ok=True)
            self._forget(path.stem)
            self.stats.evictions += 1

    def _forget(self, key: str) -> None:
        self.stats.bytes -= self._sizes.pop(key, 0)
        self.stats.entries = len(self._sizes)


def _write_atomically(directory: Path, path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{owner()}.", suffix=".egc.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _budget(value: int, what: str) -> int:
    """A cache's byte budget, refused (RequestError saying which budget) when negative."""
    if value < 0:
        raise RequestError(f"{what} of {value} bytes: give a byte count >= 0 (0 turns the cache off)")
    return int(value)


def _digest(key: str, dtype: str, shape: list[int], payload: bytes) -> str:
    """sha256 of an entry's key, layout and data: a header edited to another shape or dtype no longer matches."""
    head = json.dumps([key, dtype, shape]).encode()
    return hashlib.sha256(struct.pack("<I", len(head)) + head + payload).hexdigest()


def _encode(key: str, array: np.ndarray) -> bytes:
    payload = np.ascontiguousarray(array).tobytes()
    dtype, shape = array.dtype.str, list(array.shape)
    header = json.dumps({"key": key, "dtype": dtype, "shape": shape,
                         "sha256": _digest(key, dtype, shape, payload)}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


def _decode(data: bytes, key: str) -> np.ndarray | None:
    """The entry's array, or None when it is truncated, damaged or belongs to another key."""
    try:
        if data[:4] != MAGIC:
            return None
        (length,) = struct.unpack("<I", data[4:8])
        header = json.loads(data[8:8 + length])
        payload = data[8 + length:]
        if header["key"] != key or _digest(key, header["dtype"], header["shape"], payload) != header["sha256"]:
            return None
        return np.frombuffer(payload, dtype=np.dtype(header["dtype"])).reshape(header["shape"]).copy()
    except (ValueError, KeyError, TypeError, struct.error, RecursionError):  # a garbled header, however deep
        return None
