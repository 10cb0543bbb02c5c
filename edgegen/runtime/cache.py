"""Runtime caches with byte budgets: an in-memory LRU and an optional on-disk cache.

Both map a key (hex sha256 of bundle content hash + canonical request) to a numpy array and never
hold more than their budget. The disk cache writes each entry to a temporary file and renames it
into place, and checks the sha256 stored in the entry (over its key, dtype, shape and data) on every
read: an entry cut short by a crash or damaged on disk is dropped and recomputed, never served. A
full disk stops writes, not serving. Processes sharing a directory hold its budget together: each
change to the entries is made holding an flock on the directory's `.egc.lock`, where each change
leaves a random token, and a cache that finds another token than its own last one reads the entries
back first. The cache touches only names it makes: `<key>.egc` entries, `.egc.lock` and
`.<key>.<random>.egc.tmp` temporary files (a process killed mid-write leaves one; the next open
removes it), so it can live in a directory that holds other files; a directory removed while in
use is made again at the next write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import RequestError
from ..fileio import alive, owner, owner_pattern

log = logging.getLogger(__name__)

MAGIC = b"EGC2"  # EGC1 entries (a digest of the data only) read as damaged: dropped and recomputed
ENTRY = re.compile(r"[0-9a-f]{64}\.egc")
LOCK = ".egc.lock"  # the flock processes sharing the directory take turns at; holds the last change's token
TOKEN_BYTES = 16
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


class DiskCache:
    """Arrays in files under `directory`, one per key, within a byte budget (least recently used
    entries go first). Entries: magic, header length, JSON header (key, dtype, shape, sha256 of those three
    and the data), data."""

    def __init__(self, directory: str | Path, budget_bytes: int):
        self.directory = Path(directory).expanduser()
        self._lock = threading.Lock()
        self.stats = CacheStats(budget_bytes=_budget(budget_bytes, "a disk cache budget (disk_cache_bytes)"))
        self._sizes: dict[str, int] = {}
        self._last_change = b""  # the token this cache wrote into the lock file with its last change
        try:
            with self._turn():  # a cache reopened with a smaller budget evicts down to it now (0: it is off)
                if self.stats.budget_bytes:
                    self._make_room(0)
        except OSError as exc:  # an unusable directory: writes count as failed; what it holds is still read
            log.warning("disk cache %s cannot be written (%s); serving without storing", self.directory, exc)
            self._rescan()
        for temporary in self._files(TEMPORARY):  # left by a process killed mid-write (not one still writing)
            if not alive(int(TEMPORARY.fullmatch(temporary.name).group(1))):
                temporary.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This cache's turn at changing the directory's entries: the lock file held (the directory made
        again if it was removed), the entries read back if another cache changed them since this one
        last did (the lock file holds another token than this cache last wrote), and a new random token
        written on the way out (a count could come back to the same value: a directory removed and made
        again starts from zero)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.pread(fd, TOKEN_BYTES, 0) != self._last_change or not self._last_change:
                self._rescan()
            try:
                yield
            finally:
                self._last_change = os.urandom(TOKEN_BYTES)
                os.pwrite(fd, self._last_change, 0)
        finally:
            os.close(fd)  # which releases the flock

    def _rescan(self) -> None:
        """Read the entries' sizes from the directory: what this process wrote and what others sharing it did."""
        self._sizes = {}
        for path in self._files(ENTRY):
            try:
                self._sizes[path.stem] = path.stat().st_size
            except OSError:  # removed meanwhile by another process
                pass
        self._count()

    def _count(self) -> None:
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
            data = _bounded_read(path, self.stats.budget_bytes)
        except OSError:
            with self._lock:
                self.stats.misses += int(count_miss)
            return None
        array = _decode(data, key) if data is not None else None
        with self._lock:
            if array is None:
                self.stats.corrupt += 1
                self.stats.misses += 1
                log.warning("disk cache entry %s is damaged; dropped, will recompute", path)
                with contextlib.suppress(OSError), self._turn():
                    path.unlink(missing_ok=True)
                    self._sizes.pop(key, None)
                    self._count()
                return None
            self.stats.hits += 1
        with contextlib.suppress(OSError):
            _touch(path)
        return array

    def put(self, key: str, array: np.ndarray) -> None:
        data = _encode(key, array)
        if len(data) > self.stats.budget_bytes:
            return
        with self._lock:
            try:
                with self._turn():
                    self._sizes.pop(key, None)
                    self._count()
                    self._make_room(len(data))
                    try:
                        _write_atomically(self.directory, self._path(key), data)
                        _touch(self._path(key))
                        self._sizes[key] = len(data)
                    except OSError:  # the previous entry for this key may still be there
                        with contextlib.suppress(OSError):
                            self._sizes[key] = self._path(key).stat().st_size
                        raise
                    finally:
                        self._count()
            except OSError as exc:  # full disk, read-only medium, quota: keep serving without storing
                self.stats.write_errors += 1
                log.warning("disk cache %s: cannot store an entry (%s); serving continues", self.directory, exc)

    def _make_room(self, incoming: int) -> None:
        """Remove the least recently used entries until `incoming` more bytes fit the budget."""
        for path in sorted(self._files(ENTRY), key=_mtime):
            if self.stats.bytes + incoming <= self.stats.budget_bytes:
                break
            path.unlink(missing_ok=True)
            self._sizes.pop(path.stem, None)
            self._count()
            self.stats.evictions += 1


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


def _touch(path: Path) -> None:
    """Stamp the entry as used now, to the nanosecond (a file system's own clock ticks every few
    milliseconds, which left entries written in one tick in no order for eviction)."""
    now = time.time_ns()
    os.utime(path, ns=(now, now))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


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


def _bounded_read(path: Path, most: int) -> bytes | None:
    """An entry's bytes; None for one that cannot be an entry: no regular file (a FIFO would block the read, a
    link to /dev/zero never end) or over the cache's budget. OSError where there is none."""
    if not path.is_file():
        if path.is_symlink() or path.exists():
            return None
        raise FileNotFoundError(errno.ENOENT, "no entry", str(path))
    with open(path, "rb") as file:
        data = file.read(most + 1)
    return data if len(data) <= most else None
