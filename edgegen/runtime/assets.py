"""Precomputed assets: images rendered at build time, shipped in the bundle as one pack file plus an
index that the device maps instead of loading, so opening a pack of millions of assets costs no
more than opening one of ten.

- `assets/pack.bin`: the images' bytes, each entry aligned to 64 bytes.
- `assets/table.bin`: an open-addressing hash table of fixed-size slots (key, offset, length, sha256 of
  the bytes, layout, position in the pack), twice as many slots as entries. Keys are sha256 digests,
  so their first 8 bytes, scaled to the slot count, pick the slot; a lookup reads one or two slots.
- `assets/index.json`: format, version, content hash, where the assets were rendered, the entry count,
  the pack's size in bytes and the few (dtype, shape) layouts the entries use.
- `assets/requests.jsonl`: each entry's request, in pack order; read only to merge packs, never to serve.

The device maps pack and table read-only with mmap; a hit copies the bytes out and never touches the
backend. The copy is checked against the entry's sha256 on every read (8 us for a 64x64 image, about
what the rest of a hit costs; checking only an entry's first read served the bytes of a pack changed
in place afterwards); a damaged entry is reported as a miss (and recomputed by the generator), so a
corrupt pack never yields corrupt pixels; a pack cut short (a partial copy) opens with a warning, and
the entries past its end are misses too.
Version 1 packs (a JSON index of every entry) are still read, into memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import BundleError, DamagedBundle
from .cache import CacheStats

log = logging.getLogger(__name__)

DIR = "assets"
INDEX = f"{DIR}/index.json"
TABLE = f"{DIR}/table.bin"
REQUESTS = f"{DIR}/requests.jsonl"
PACK = f"{DIR}/pack.bin"
FORMAT = "edgegen-assets"
VERSION = 2
ALIGN = 64
SLOT = struct.Struct("<32sQQ32sII")  # key, offset, length, sha256, layout, order
RECORD = np.dtype([("key", "V32"), ("offset", "<u8"), ("length", "<u8"), ("sha256", "V32"), ("layout", "<u4"),
                   ("order", "<u4")])
EMPTY = 0xFFFFFFFF  # the order of an empty slot


class AssetPack:
    """Read-only view of a bundle's precomputed assets."""

    def __init__(self, bundle_dir: Path, content_hash: str):
        self._dir = Path(bundle_dir)
        index_path = self._dir / INDEX
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise DamagedBundle(f"{index_path}: unreadable asset index ({exc}); rerun `edgegen precompute` "
                                "or rebuild the bundle") from None
        if not isinstance(index, dict):
            raise DamagedBundle(f"{index_path}: malformed asset index (a JSON {type(index).__name__}, not an "
                                "object); rerun `edgegen precompute` or rebuild the bundle")
        if index.get("format") != FORMAT or index.get("content_hash") != content_hash:
            raise DamagedBundle(f"{index_path}: these assets were rendered for another model artifact; rerun "
                                "`edgegen precompute BUNDLE REQUESTS` to render them for this one")
        self._maps: list[tuple[Any, mmap.mmap]] = []
        self._pack = self._open(PACK)
        self._size = len(self._pack) if self._pack is not None else 0
        self._request_list: list[dict[str, Any]] | None = None
        try:
            if index.get("version") == 1:
                self._count, self._table, self._layouts, self._request_list = _from_v1(index["entries"])
            else:
                self._count = int(index["count"])
                self._table = (self._open(TABLE) if self._count else None) or b""
                self._layouts = [(np.dtype(d), tuple(s)) for d, s in index["layouts"]]
            self._check(index.get("pack_bytes"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.close()
            raise DamagedBundle(f"{index_path}: malformed asset index ({exc}); rerun `edgegen precompute` or "
                                "rebuild the bundle") from None
        except BundleError:
            self.close()
            raise
        self._slots = len(self._table) // SLOT.size
        self._lock = threading.Lock()
        self.stats = CacheStats(entries=self._count, bytes=len(self._pack) if self._pack is not None else 0)

    @staticmethod
    def present(bundle_dir: Path) -> bool:
        return (Path(bundle_dir) / INDEX).is_file()

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: str) -> bool:
        return self._find(key) is not None

    def get(self, key: str, count_miss: bool = True) -> np.ndarray | None:
        """The asset for a key (a private copy), or None when absent or damaged."""
        found = self._find(key) if self._files_intact() else None
        array = self._read(found) if found is not None else None
        with self._lock:
            if array is None:
                self.stats.misses += int(count_miss)
            else:
                self.stats.hits += 1
        return array

    def items(self) -> Iterator[tuple[str, dict[str, Any], np.ndarray | None]]:
        """(key, request, array or None when damaged) for every entry, in pack order."""
        requests = self._requests()
        orders = _records(self._table)["order"].copy()  # a copy: no view of the mapping outlives this line
        occupied = np.flatnonzero(orders != EMPTY)
        for slot in occupied[np.argsort(orders[occupied])]:
            if not self._files_intact():
                raise DamagedBundle(f"{self._dir / PACK}: the asset files were cut short while being read; copy "
                                    "the bundle again, then rerun `edgegen precompute`")
            fields = SLOT.unpack_from(self._table, int(slot) * SLOT.size)
            yield fields[0].hex(), requests[fields[5]], self._read(fields)

    def close(self) -> None:
        """Unmap the files; the pack then serves nothing."""
        self._count, self._table, self._pack, self._slots = 0, b"", None, 0
        for file, mapping in self._maps:
            mapping.close()
            file.close()
        self._maps = []

    # -- reading ------------------------------------------------------------------------------------
    def _files_intact(self) -> bool:
        """Whether the mapped files still hold every byte mapped: a read past the end of a file cut short in
        place (a copy or rsync --inplace over a served bundle) is a SIGBUS that kills the process. Once one
        is cut short, the pack serves nothing (its requests are computed) and says so once."""
        for file, mapping in self._maps:
            if os.fstat(file.fileno()).st_size < len(mapping):
                with self._lock:
                    if self._slots:
                        log.warning("%s was cut short while the bundle was open; its precomputed assets are "
                                    "computed on request until the bundle is opened again", file.name)
                    self._slots = 0
                return False
        return True

    def _find(self, key: str) -> tuple | None:
        """The fields of a key's slot: linear probing from the slot its first 8 bytes name."""
        if not self._slots:
            return None
        try:
            wanted = bytes.fromhex(key)
        except ValueError:
            return None
        slot = _home(wanted, self._slots)
        while True:
            fields = SLOT.unpack_from(self._table, slot * SLOT.size)
            if fields[5] == EMPTY:
                return None
            if fields[0] == wanted:
                return fields
            slot = slot + 1 if slot + 1 < self._slots else 0

    def _read(self, fields: tuple) -> np.ndarray | None:
        key, start, length, sha, layout, _ = fields
        if start + length > self._size:  # past the end of a pack cut short (warned about at open)
            with self._lock:
                self.stats.corrupt += 1
            return None
        data = bytearray(self._pack[start:start + length] if length else b"")
        if hashlib.sha256(data).digest() != sha:
            with self._lock:
                self.stats.corrupt += 1
            log.warning("asset %s in the pack does not match its sha256; recomputing it", key.hex()[:12])
            return None
        dtype, shape = self._layouts[layout]
        return np.frombuffer(data, dtype=dtype).reshape(shape)

    def _requests(self) -> list[dict[str, Any]]:
        if self._request_list is None:
            path = self._dir / REQUESTS
            try:
                self._request_list = [json.loads(line) for line in path.read_text().splitlines()]
            except (OSError, ValueError) as exc:
                raise DamagedBundle(f"{path}: unreadable asset requests ({exc}); rerun `edgegen precompute`") \
                    from None
            if len(self._request_list) != self._count:
                raise DamagedBundle(f"{path}: {len(self._request_list)} requests for {self._count} assets; rerun "
                                    "`edgegen precompute`")
        return self._request_list

    # -- opening --------------------------------------------------------------------------------------
    def _open(self, name: str) -> mmap.mmap | None:
        path = self._dir / name
        try:
            file = open(path, "rb")
        except OSError as exc:
            raise DamagedBundle(f"{path}: cannot open ({exc.strerror or exc}); rerun `edgegen precompute` or "
                                "rebuild the bundle") from None
        if path.stat().st_size == 0:
            file.close()
            return None
        mapping = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps.append((file, mapping))
        return mapping

    def _check(self, pack_bytes: int | None) -> None:
        """Refuse a table of the wrong size, or whose entries fall outside the pack the index describes or
        their layout; warn when pack.bin is shorter than its entries need."""
        if pack_bytes is not None and (type(pack_bytes) is not int or pack_bytes < 0):
            raise ValueError(f"pack_bytes is {pack_bytes!r}, not a byte count")
        why = _table_problem(self._table, self._count, pack_bytes, self._layouts)
        if why:  # raised here, where no view of the mapping is alive (close() could not unmap it)
            raise ValueError(why)
        needed = int(pack_bytes) if pack_bytes is not None else _pack_end(self._table)
        if self._size < needed:
            log.warning("%s is cut short: expected %d bytes, found %d; the assets past its end are computed on "
                        "request instead of served. Rerun `edgegen precompute BUNDLE REQUESTS` or rebuild (or "
                        "re-copy) the bundle to restore them", self._dir / PACK, needed, self._size)


def write_pack(bundle_dir: Path, content_hash: str, entries: Iterable[tuple[str, dict[str, Any], np.ndarray]],
               rendered_on: str) -> int:
    """Write the asset files into a (staging) bundle directory, entries in the order given; return the count."""
    directory = Path(bundle_dir) / DIR
    directory.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[bytes, int, int, bytes, int, int]] = []
    layouts: dict[tuple[str, tuple[int, ...]], int] = {}
    with open(Path(bundle_dir) / PACK, "wb") as pack, open(Path(bundle_dir) / REQUESTS, "w") as requests:
        for key, request, array in entries:
            payload = np.ascontiguousarray(array).tobytes()
            pack.write(b"\0" * (-pack.tell() % ALIGN))
            layout = layouts.setdefault((array.dtype.str, tuple(array.shape)), len(layouts))
            rows.append((bytes.fromhex(key), pack.tell(), len(payload), hashlib.sha256(payload).digest(), layout,
                         len(rows)))
            pack.write(payload)
            requests.write(json.dumps(request) + "\n")
        pack_bytes = pack.tell()
    (Path(bundle_dir) / TABLE).write_bytes(_hash_table(rows))
    (Path(bundle_dir) / INDEX).write_text(json.dumps(
        {"format": FORMAT, "version": VERSION, "content_hash": content_hash, "rendered_on": rendered_on,
         "count": len(rows), "pack_bytes": pack_bytes, "layouts": [[dtype, list(shape)] for dtype, shape in layouts]},
        indent=1) + "\n")
    return len(rows)


def _table_problem(table, count: int, pack_bytes: int | None, layouts: list) -> str | None:
    """What is wrong with a table of `count` entries over a pack of `pack_bytes` bytes (as the index gives
    it; unchecked for packs written before the index recorded it), or None."""
    slots = _table_slots(count)
    if len(table) != slots * SLOT.size:
        return f"{TABLE} holds {len(table)} bytes, not the {slots} slots of {count} entries"
    records = _records(table)
    occupied = records["order"] != EMPTY
    if not np.array_equal(np.sort(records["order"][occupied]), np.arange(count)):
        return "the table's entries are not those of the pack"
    sizes = np.array([dtype.itemsize * int(np.prod(shape)) for dtype, shape in layouts] or [0], np.uint64)
    layout, offset, length = (records[field][occupied] for field in ("layout", "offset", "length"))
    huge = np.any(offset >= 1 << 62) or np.any(length >= 1 << 62)  # offset + length would wrap past 2**64
    past = pack_bytes is not None and np.any(offset + length > int(pack_bytes))
    if huge or past or np.any(layout >= len(layouts)) \
            or np.any(sizes[np.minimum(layout, len(sizes) - 1)] != length):
        return "an entry lies outside the pack or does not match its layout"
    return None


def _pack_end(table) -> int:
    """Where the table's last entry ends in the pack: the size of a whole pack."""
    records = _records(table)
    occupied = records[records["order"] != EMPTY]
    return int((occupied["offset"] + occupied["length"]).max()) if len(occupied) else 0


def _table_slots(count: int) -> int:
    """Slots of a table for `count` entries (half of them stay empty, so probes stay short)."""
    return 2 * count


def _home(key: bytes, slots: int) -> int:
    """The slot a key's probe starts from: its first 8 bytes scaled to the slot count."""
    return (int.from_bytes(key[:8], "big") * slots) >> 64


def _records(table) -> np.ndarray:
    """The table's slots as a numpy record array (a view of the mapping: drop it before closing)."""
    return np.frombuffer(table, RECORD) if len(table) else np.zeros(0, RECORD)


def _hash_table(rows: list[tuple[bytes, int, int, bytes, int, int]]) -> bytes:
    """The table's bytes: each row in the first free slot from the one its key's first 8 bytes name."""
    slots = _table_slots(len(rows))
    empty = np.zeros(slots, RECORD)
    empty["order"] = EMPTY
    table = bytearray(empty.tobytes())
    for row in rows:
        if len(row[0]) != 32:
            raise ValueError(f"asset key {row[0].hex()!r} is not a sha256 digest")
        slot = _home(row[0], slots)
        while SLOT.unpack_from(table, slot * SLOT.size)[5] != EMPTY:
            slot = slot + 1 if slot + 1 < slots else 0
        SLOT.pack_into(table, slot * SLOT.size, *row)
    return bytes(table)


def _from_v1(entries: dict[str, dict[str, Any]]) -> tuple[int, bytes, list, list]:
    """A version 1 index (every entry in JSON) as the table a version 2 pack maps, built in memory."""
    layouts: dict[tuple[str, tuple[int, ...]], int] = {}
    rows, requests = [], []
    for order, (key, entry) in enumerate(entries.items()):
        layout = layouts.setdefault((entry["dtype"], tuple(entry["shape"])), len(layouts))
        rows.append((bytes.fromhex(key), entry["offset"], entry["length"], bytes.fromhex(entry["sha256"]), layout,
                     order))
        requests.append(entry["request"])
    return len(rows), _hash_table(rows), [(np.dtype(d), s) for d, s in layouts], requests
