"""The asset pack's files: a mapped hash table (no index loaded into memory), lookups of any key
(colliding ones included), pack order kept for merging, version 1 packs still read, and a damaged
table refused."""

import hashlib
import json
import logging

import numpy as np
import pytest

from edgegen.errors import BundleError
from edgegen.runtime.assets import EMPTY, INDEX, PACK, RECORD, TABLE, AssetPack, write_pack

CONTENT = "c" * 64


def entries(count: int):
    rng = np.random.default_rng(0)
    keys = ["00" * 32, "00" * 8 + "11" * 24, "00" * 8 + "22" * 24, "ff" * 32]  # three share their slot
    keys += [hashlib.sha256(str(i).encode()).hexdigest() for i in range(count - len(keys))]
    for i, key in enumerate(keys):
        shape = (4, 4, 3) if i % 2 else (2, 8)
        yield key, {"seed": i}, rng.integers(0, 255, shape, dtype=np.uint8)


def test_lookups_by_binary_search_and_items_in_pack_order(tmp_path):
    written = list(entries(40))
    assert write_pack(tmp_path, CONTENT, written, "here") == 40
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["version"] == 2 and index["count"] == 40 and len(index["layouts"]) == 2
    assert "entries" not in index, "the index names layouts, not entries"
    pack = AssetPack(tmp_path, CONTENT)
    assert len(pack) == 40
    for key, _, array in written:
        assert key in pack
        np.testing.assert_array_equal(pack.get(key), array)
    assert "ab" * 32 not in pack and pack.get("01" * 32) is None and pack.get("not hex") is None
    assert pack.get("ab") is None, "a short key is not a prefix match"
    assert [(k, r) for k, r, _ in pack.items()] == [(k, r) for k, r, _ in written]
    assert pack.stats.hits == 40 and pack.stats.misses == 3
    pack.close()


def test_version_1_index_still_reads(tmp_path):
    written = list(entries(6))
    write_pack(tmp_path, CONTENT, written, "here")
    pack = AssetPack(tmp_path, CONTENT)
    v1 = {}
    for key, request, array in written:
        data = array.tobytes()
        offset = bytes((tmp_path / PACK).read_bytes()).find(data)
        v1[key] = {"offset": offset, "length": len(data), "dtype": array.dtype.str, "shape": list(array.shape),
                   "sha256": hashlib.sha256(data).hexdigest(), "request": request}
    pack.close()
    (tmp_path / TABLE).unlink()
    (tmp_path / INDEX).write_text(json.dumps({"format": "edgegen-assets", "version": 1, "content_hash": CONTENT,
                                              "rendered_on": "here", "entries": v1}))
    old = AssetPack(tmp_path, CONTENT)
    assert [(k, r) for k, r, _ in old.items()] == [(k, r) for k, r, _ in written]
    for key, _, array in written:
        np.testing.assert_array_equal(old.get(key), array)


def damage_slot(table: bytes, field: str, value: int) -> bytes:
    slots = np.frombuffer(table, RECORD).copy()
    slots[np.flatnonzero(slots["order"] != EMPTY)[-1]][field] = value
    return slots.tobytes()


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[:-1], "holds"),
    (lambda t: damage_slot(t, "order", 7), "not those of the pack"),
    (lambda t: damage_slot(t, "offset", 10 ** 9), "outside the pack"),
    (lambda t: damage_slot(t, "offset", 2 ** 64 - 8), "outside the pack"),  # offset + length wrapped: passed
    (lambda t: damage_slot(t, "layout", 5), "outside the pack"),
])
def test_damaged_table_is_refused_with_the_file_named(tmp_path, damage, message):
    write_pack(tmp_path, CONTENT, entries(5), "here")
    (tmp_path / TABLE).write_bytes(damage((tmp_path / TABLE).read_bytes()))
    with pytest.raises(BundleError, match=f"assets/index.json: malformed asset index .*{message}"):
        AssetPack(tmp_path, CONTENT)


def test_damaged_entry_is_a_miss_and_counted(tmp_path):
    written = list(entries(5))
    write_pack(tmp_path, CONTENT, written, "here")
    key, _, array = written[3]
    pack_bytes = bytearray((tmp_path / PACK).read_bytes())
    pack_bytes[pack_bytes.find(array.tobytes())] ^= 1
    (tmp_path / PACK).write_bytes(bytes(pack_bytes))
    pack = AssetPack(tmp_path, CONTENT)
    assert pack.get(key) is None and pack.stats.corrupt == 1 and pack.stats.misses == 1
    assert [a is None for k, _, a in pack.items()] == [k == key for k, _, _ in written]


def test_an_entry_changed_in_place_after_it_was_served_is_a_miss(tmp_path):
    """Checking only an entry's first read served the new bytes of a pack changed in place afterwards."""
    written = list(entries(5))
    write_pack(tmp_path, CONTENT, written, "here")
    key, _, array = written[3]
    pack = AssetPack(tmp_path, CONTENT)
    np.testing.assert_array_equal(pack.get(key), array)
    with open(tmp_path / PACK, "r+b") as file:  # the mapping sees the change
        offset = file.read().find(array.tobytes())
        file.seek(offset)
        file.write(bytes([array.tobytes()[0] ^ 1]))
    assert pack.get(key) is None and pack.stats.corrupt == 1


def test_empty_pack(tmp_path):
    assert write_pack(tmp_path, CONTENT, [], "here") == 0
    pack = AssetPack(tmp_path, CONTENT)
    assert len(pack) == 0 and pack.get("00" * 32) is None and list(pack.items()) == []


def test_missing_table_is_named(tmp_path):
    write_pack(tmp_path, CONTENT, entries(5), "here")
    (tmp_path / TABLE).unlink()
    with pytest.raises(BundleError, match="assets/table.bin: cannot open"):
        AssetPack(tmp_path, CONTENT)


@pytest.mark.parametrize("keep", [0.5, 1 / 1000, 0])
def test_a_pack_cut_short_opens_and_serves_only_what_is_whole(tmp_path, caplog, keep):
    """A partial copy of pack.bin: a warning names pack.bin (not the intact index) with the bytes expected
    and found; entries inside what is left are served, the rest are misses, never wrong bytes."""
    caplog.set_level(logging.WARNING)  # other test modules quiet the root logger when they are collected
    written = list(entries(40))
    write_pack(tmp_path, CONTENT, written, "here")
    whole = (tmp_path / PACK).read_bytes()
    cut = int(len(whole) * keep)
    (tmp_path / PACK).write_bytes(whole[:cut])
    pack = AssetPack(tmp_path, CONTENT)
    assert f"assets/pack.bin is cut short: expected {len(whole)} bytes, found {cut}" in caplog.text
    assert "edgegen precompute" in caplog.text and "index.json" not in caplog.text
    served = 0
    for key, _, array in written:
        got = pack.get(key)
        if got is not None:
            np.testing.assert_array_equal(got, array)
            served += 1
    assert served == sum(whole.find(a.tobytes()) + a.nbytes <= cut for _, _, a in written) < 40
    assert pack.stats.corrupt == 40 - served and pack.stats.hits == served
    assert [a is None for _, _, a in pack.items()] == [whole.find(a.tobytes()) + a.nbytes > cut for _, _, a in written]


def test_an_entry_past_the_pack_size_the_index_gives_is_refused(tmp_path):
    write_pack(tmp_path, CONTENT, entries(5), "here")
    index = json.loads((tmp_path / INDEX).read_text())
    (tmp_path / INDEX).write_text(json.dumps({**index, "pack_bytes": index["pack_bytes"] - 1}))
    with pytest.raises(BundleError, match="assets/index.json: malformed asset index .*outside the pack"):
        AssetPack(tmp_path, CONTENT)


@pytest.mark.parametrize("edit, said", [
    (lambda index: [index], "a JSON list, not an object"),  # was AttributeError: 'list' object has no attribute 'get'
    (lambda index: {**index, "pack_bytes": "x"}, "pack_bytes is 'x', not a byte count"),  # was a BufferError
    (lambda index: {**index, "version": 1, "entries": []}, "malformed asset index"),  # was an AttributeError
])
def test_a_malformed_index_is_named_not_a_traceback(tmp_path, edit, said):
    write_pack(tmp_path, CONTENT, entries(5), "here")
    (tmp_path / INDEX).write_text(json.dumps(edit(json.loads((tmp_path / INDEX).read_text()))))
    with pytest.raises(BundleError, match=f"assets/index.json: .*{said}"):
        AssetPack(tmp_path, CONTENT)
