"""Runtime caches: LRU byte budget and counters; the disk cache survives crashes, damage and full disks."""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgegen.errors import RequestError
from edgegen.runtime import Generator
from edgegen.runtime.cache import DiskCache, LRUCache


def block(value: int, size: int = 1000) -> np.ndarray:
    return np.full(size, value % 256, np.uint8)


def test_lru_keeps_within_budget_and_counts():
    cache = LRUCache(3500)
    for i in range(5):
        cache.put(f"k{i}", block(i))
    stats = cache.stats
    assert stats.bytes == 3000 <= stats.budget_bytes and stats.entries == 3 and stats.evictions == 2
    assert cache.get("k0") is None and cache.get("k4") is not None
    cache.get("k2")  # k2 becomes the most recent, so k3 goes next
    cache.put("k5", block(5))
    assert cache.get("k3") is None and cache.get("k2") is not None
    assert (stats.hits, stats.misses) == (3, 2)
    cache.put("huge", block(0, 10_000))  # larger than the budget: not stored, nothing evicted for it
    assert cache.get("huge") is None and stats.bytes <= stats.budget_bytes


def test_disk_cache_round_trip_budget_and_eviction(tmp_path):
    cache = DiskCache(tmp_path, 3 * 1200)
    arrays = {f"{i:064x}": np.arange(i, i + 250, dtype=np.float32) for i in range(6)}
    for key, array in arrays.items():
        cache.put(key, array)
        assert cache.stats.bytes <= cache.stats.budget_bytes
    files = list(tmp_path.glob("*.egc"))
    assert len(files) == cache.stats.entries == 3 and cache.stats.evictions == 3
    last = list(arrays)[-1]
    np.testing.assert_array_equal(cache.get(last), arrays[last])
    reopened = DiskCache(tmp_path, 3 * 1200)
    assert reopened.stats.entries == 3 and reopened.stats.bytes == cache.stats.bytes


def _entries(directory) -> tuple[int, list[str]]:
    files = sorted(directory.glob("*.egc"))
    return sum(f.stat().st_size for f in files), [f.stem for f in files]


def test_caches_sharing_a_directory_hold_its_budget_together(tmp_path):
    """Each counted only what it wrote (read back every 32 writes): the directory went over the budget,
    and entries the other had evicted stayed counted, so one write emptied the whole directory."""
    DiskCache(tmp_path / "probe", 10 ** 6).put("0" * 64, np.zeros(250, np.float32))
    entry = next((tmp_path / "probe").glob("*.egc")).stat().st_size
    caches = DiskCache(tmp_path, 5 * entry), DiskCache(tmp_path, 5 * entry)
    for i in range(40):
        cache = caches[i % 3 == 0]
        cache.put(f"{i:064x}", np.full(250, i, np.float32))
        total, keys = _entries(tmp_path)
        assert total <= 5 * entry and cache.stats.bytes == total, f"write {i}: {total} bytes on disk"
        assert len(keys) == min(i + 1, 5), f"write {i} evicted more than it needed: {len(keys)} entries left"
    assert all(caches[0].get(f"{i:064x}") is not None for i in range(35, 40))


def test_a_removed_directory_is_made_again_and_a_smaller_budget_evicts_on_open(tmp_path):
    directory = tmp_path / "cache"
    cache = DiskCache(directory, 1 << 20)
    for i in range(4):
        cache.put(f"{i:064x}", np.full(250, i, np.float32))
    entry = directory.joinpath(f"{0:064x}.egc").stat().st_size
    smaller = DiskCache(directory, 2 * entry)  # was kept at 4 entries until a write, never if all requests hit
    assert smaller.stats.bytes == _entries(directory)[0] == 2 * entry
    assert _entries(directory)[1] == [f"{i:064x}" for i in (2, 3)], "the least recently used went first"
    shutil.rmtree(directory)  # was never made again: every later write failed until a restart
    cache.put("f" * 64, np.ones(250, np.float32))
    assert cache.stats.write_errors == 0 and cache.stats.entries == 1
    np.testing.assert_array_equal(cache.get("f" * 64), np.ones(250, np.float32))


def test_damaged_and_foreign_entries_are_dropped_never_served(tmp_path):
    cache = DiskCache(tmp_path, 1 << 20)
    good = np.arange(100, dtype=np.int32)
    cache.put("a" * 64, good)
    cache.put("b" * 64, good)
    path = tmp_path / f"{'a' * 64}.egc"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x55
    path.write_bytes(bytes(data))
    (tmp_path / f"{'b' * 64}.egc").rename(tmp_path / f"{'c' * 64}.egc")  # an entry under the wrong name
    (tmp_path / f"{'d' * 64}.egc").write_bytes(b"EGC1\x10\x00")  # truncated
    deep = b"[" * 100_000  # a header nested beyond the JSON parser's recursion (was a RecursionError: a 500)
    (tmp_path / f"{'e' * 64}.egc").write_bytes(b"EGC1" + struct.pack("<I", len(deep)) + deep)
    (tmp_path / f"{'f' * 64}.egc").symlink_to("/dev/zero")  # was read until memory ran out (a MemoryError)
    os.mkfifo(tmp_path / f"{'9' * 64}.egc")  # would block the read
    (tmp_path / f"{'8' * 64}.egc").write_bytes(b"EGC1" + bytes(1 << 20))  # over the budget: no entry of this cache
    assert all(cache.get(k * 64) is None for k in "acdef98")
    assert cache.stats.corrupt == 7 and not list(tmp_path.glob("*.egc"))


def test_a_process_killed_mid_write_leaves_no_servable_damage(tmp_path):
    """A writer SIGKILLed while writing 1 MB entries in a loop: every entry left is whole or absent."""
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from edgegen.runtime.cache import DiskCache
        cache = DiskCache({str(tmp_path)!r}, 1 << 30)
        print("ready", flush=True)
        i = 0
        while True:
            cache.put(f"{{i:064x}}", np.full(1 << 20, i % 251, np.uint8))
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    while len(list(tmp_path.glob("*.egc"))) < 5:
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    cache = DiskCache(tmp_path, 1 << 30)
    assert not list(tmp_path.glob(".*.tmp")), "leftover temporary files are cleaned on open"
    keys = [p.stem for p in tmp_path.glob("*.egc")]
    for key in keys:
        array = cache.get(key)
        assert array is not None and np.all(array == int(key, 16) % 251)
    assert cache.stats.corrupt == 0 and len(keys) >= 5


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE")
def test_full_disk_stops_writes_not_serving(tmp_path):
    """With the file size limit below one entry (writes fail as on a full disk), puts are counted as
    write errors, reads of existing entries still work, and nothing partial is left behind."""
    DiskCache(tmp_path, 1 << 20).put("0" * 64, np.arange(10, dtype=np.uint8))
    script = textwrap.dedent(f"""
        import resource, signal, numpy as np
        from edgegen.runtime.cache import DiskCache
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        cache = DiskCache({str(tmp_path)!r}, 1 << 30)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        for i in range(1, 4):
            cache.put(f"{{i:064x}}", np.zeros(100_000, np.uint8))
        assert cache.get("0" * 64) is not None
        print(cache.stats.write_errors, cache.stats.entries)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["3", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".egc.lock", f"{'0' * 64}.egc"]


def test_unusable_directory_means_no_disk_cache_not_a_failure(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    cache = DiskCache(tmp_path / "file" / "cache", 1 << 20)
    cache.put("e" * 64, np.zeros(4))
    assert cache.get("e" * 64) is None and cache.stats.write_errors == 1


def test_open_removes_only_its_own_temporary_files_of_dead_processes(tmp_path):
    """A killed build's hidden staging folder, a user's `.draft.tmp` and the write in flight of another
    process sharing the directory stay; a leftover of a killed process goes."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (tmp_path / ".exist.vbhssedz.tmp").mkdir()
    (tmp_path / ".exist.vbhssedz.tmp" / "model.onnx").write_bytes(b"staged")
    (tmp_path / ".draft.tmp").write_text("my draft")
    (tmp_path / f".{'f' * 64}.tmp").write_text("not a name the cache makes")
    (tmp_path / f".{'e' * 64}.{host}-{dead.pid}.k3j_x9q2.egc.tmp").mkdir()  # its pattern, but a directory
    in_flight = tmp_path / f".{'c' * 64}.{host}-{os.getpid()}.p0q_r7s1.egc.tmp"  # a live process's write
    in_flight.write_bytes(b"EGC2 being written")
    leftover = tmp_path / f".{'a' * 64}.{host}-{dead.pid}.k3j_x9q2.egc.tmp"
    leftover.write_bytes(b"EGC2 cut short")
    cache = DiskCache(tmp_path, 1 << 20)
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".egc.lock", ".exist.vbhssedz.tmp", ".draft.tmp", f".{'f' * 64}.tmp",
         f".{'e' * 64}.{host}-{dead.pid}.k3j_x9q2.egc.tmp", in_flight.name])
    assert (tmp_path / ".exist.vbhssedz.tmp" / "model.onnx").read_bytes() == b"staged"
    cache.put("b" * 64, np.arange(5, dtype=np.uint8))
    np.testing.assert_array_equal(cache.get("b" * 64), np.arange(5, dtype=np.uint8))
    assert cache.stats.entries == 1 and cache.stats.write_errors == 0


def rewrite_header(path, **changes) -> None:
    """Edit an entry's JSON header (its digest and data untouched), keeping the file well-formed."""
    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[4:8])
    header = {**json.loads(data[8:8 + length]), **changes}
    text = json.dumps(header).encode()
    path.write_bytes(data[:4] + struct.pack("<I", len(text)) + text + data[8 + length:])


@pytest.mark.parametrize("changes", [{"shape": [4, 16, 3]}, {"dtype": "<f4", "shape": [48]}])
def test_an_entry_with_an_edited_header_is_dropped_and_recomputed(tmp_path, ort_bundle, changes):
    first = Generator.open(ort_bundle, cache_bytes=0, disk_cache=tmp_path)
    expected = first.generate(seed=3, label=4)
    assert expected.shape == (8, 8, 3)
    (entry,) = tmp_path.glob("*.egc")
    rewrite_header(entry, **changes)
    gen = Generator.open(ort_bundle, cache_bytes=0, disk_cache=tmp_path)
    got = gen.render([{"seed": 3, "label": 4}])[0]
    assert got.served_by == "computed" and gen.stats()["disk"]["corrupt"] == 1
    np.testing.assert_array_equal(got.pixels, expected)
    again = gen.render([{"seed": 3, "label": 4}])[0]  # stored again, whole
    assert again.served_by == "disk" and again.pixels.shape == (8, 8, 3)


def test_negative_cache_budgets_are_refused(tmp_path, ort_bundle):
    with pytest.raises(RequestError, match=r"disk cache budget \(disk_cache_bytes\) of -5 bytes: give a byte count "
                                           r">= 0 \(0 turns the cache off\)"):
        Generator.open(ort_bundle, disk_cache=tmp_path, disk_cache_bytes=-5)
    with pytest.raises(RequestError, match=r"in-memory cache budget \(cache_bytes, feature_cache_bytes\) of -1"):
        Generator.open(ort_bundle, cache_bytes=-1)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", [123, b"/tmp/x", ""])
def test_a_disk_cache_that_is_not_a_path_is_refused_naming_it(ort_bundle, value):
    """123 and bytes were a TypeError from pathlib; "" turned the disk cache off without a word."""
    with pytest.raises(RequestError, match=r"disk_cache=.*: give a directory path"):
        Generator.open(ort_bundle, disk_cache=value)


def test_a_directory_made_again_by_another_cache_is_read_back(tmp_path):
    """The lock file counted changes: a directory removed and made again by another cache counted from zero
    back to the first cache's own count, which then kept a removed entry counted (and missed the other's)."""
    directory = tmp_path / "cache"
    first = DiskCache(directory, 1 << 20)
    first.put("a" * 64, np.zeros(500, np.float32))  # twice the others' size
    shutil.rmtree(directory)
    second = DiskCache(directory, 1 << 20)
    second.put("b" * 64, np.ones(250, np.float32))
    first.put("c" * 64, np.ones(250, np.float32))
    total, keys = _entries(directory)
    assert keys == ["b" * 64, "c" * 64] and (first.stats.entries, first.stats.bytes) == (2, total)


def test_a_cache_opened_with_no_budget_leaves_the_directory_alone(tmp_path):
    """Budget 0 turns the cache off: opened on a directory another process fills, it evicted every entry."""
    shared = DiskCache(tmp_path, 1 << 20)
    shared.put("a" * 64, np.zeros(250, np.float32))
    off = DiskCache(tmp_path, 0)
    off.put("b" * 64, np.zeros(250, np.float32))
    assert _entries(tmp_path)[1] == ["a" * 64]


def test_bundles_that_differ_only_in_their_session_settings_share_no_cache_entries(tmp_path):
    """OpenVINO's fp32 and bf16 bundles of one model hold the same files (bf16 is a session setting): with a
    content hash over the files alone, a disk cache both used served the fp32 pixels to the bf16 bundle."""
    import onnx

    from edgegen.build import build
    from runtime_models import glyph_like

    onnx.save(glyph_like(), str(tmp_path / "glyph.onnx"))
    for precision in ("fp32", "bf16"):
        build(tmp_path / "glyph.onnx", "x86-openvino", tmp_path / precision, precision=precision)
    fp32, bf16 = (json.loads((tmp_path / p / "manifest.json").read_text()) for p in ("fp32", "bf16"))
    assert {k: v for k, v in fp32["files"].items() if k != "reference.npz"} == \
        {k: v for k, v in bf16["files"].items() if k != "reference.npz"}  # the same model files
    shared = {"disk_cache": str(tmp_path / "cache"), "cache_bytes": 0}
    first, second = (Generator.open(tmp_path / p, **shared) for p in ("fp32", "bf16"))
    assert first.content_hash != second.content_hash
    first.generate(seed=1, label=2)
    assert second.render([{"seed": 1, "label": 2}])[0].served_by == "computed"


def test_bundles_that_differ_only_in_their_output_range_share_no_cache_entries(tmp_path):
    """A rebuild with the right --output-range holds the same files as the wrong one: the disk cache served
    the wrong build's clipped pixels to the fixed bundle."""
    import onnx

    from edgegen.build import build
    from runtime_models import glyph_like

    onnx.save(glyph_like(), str(tmp_path / "glyph.onnx"))
    build(tmp_path / "glyph.onnx", "x86-onnxruntime", tmp_path / "narrow", graph_options={"output_range": [0.0, 1.0]})
    build(tmp_path / "glyph.onnx", "x86-onnxruntime", tmp_path / "right")
    narrow, right = (json.loads((tmp_path / p / "manifest.json").read_text()) for p in ("narrow", "right"))
    assert narrow["files"] == right["files"]  # the same files: only the output's range differs
    shared = {"disk_cache": str(tmp_path / "cache"), "cache_bytes": 0}
    first, second = (Generator.open(tmp_path / p, **shared) for p in ("narrow", "right"))
    first.generate(seed=1, label=2)
    served = second.render([{"seed": 1, "label": 2}])[0]
    assert served.served_by == "computed"
    assert np.array_equal(served.pixels, Generator.open(tmp_path / "right", cache_bytes=0).generate(seed=1, label=2))


@pytest.mark.parametrize("invariant", [True, False, None])  # None: not checked (verified on a host fallback)
def test_a_runtime_at_other_threads_shares_no_cache_entries_where_the_threads_change_the_pixels(
        tmp_path, ort_bundle, invariant):
    """OpenVINO's bf16 kernels round otherwise at 1 thread than at 2 (zoo:glyphgen: 25 of 40 requests a level
    off): a Generator at 1 thread sharing a disk cache with one at the target's served the other's pixels."""
    bundle = tmp_path / "bundle"
    shutil.copytree(ort_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["threading"] = {"invariant": invariant, "max_abs": 0.0 if invariant else 0.0015,
                             "checked": invariant is not None}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    shared = {"disk_cache": str(tmp_path / "cache"), "cache_bytes": 0, "verify": False}
    at_target = Generator.open(bundle, threads=manifest["target"]["threads"], **shared)
    at_one = Generator.open(bundle, threads=1, **shared)
    at_target.generate(seed=1, label=2)
    assert (at_one.key_of({"seed": 1, "label": 2}) == at_target.key_of({"seed": 1, "label": 2})) is bool(invariant)
    assert at_one.render([{"seed": 1, "label": 2}])[0].served_by == ("disk" if invariant else "computed")


def test_the_build_measures_whether_the_threads_change_the_outputs(tmp_path, ort_bundle):
    from edgegen import targets
    from edgegen.build import _thread_invariance

    gen = Generator.open(ort_bundle)
    feeds = gen.feeds([{"seed": s, "label": s % 10} for s in range(4)])

    class Rounding:  # a backend whose kernels sum in another order at each thread count
        def __init__(self, directory, config, threads, host_fallback=False):
            self.threads = threads

        def run(self, part):
            return {k: v + 1e-3 * self.threads for k, v in gen.session.run(part).items()}

    module = type("module", (), {"Session": Rounding})
    target = targets.load("x86-onnxruntime")
    checked = _thread_invariance(Rounding(None, None, target.threads), module, ort_bundle, {}, target, gen, feeds)
    assert not checked["invariant"] and checked["max_abs"] == pytest.approx(1e-3, rel=1e-2)
    # a 1-thread target is measured against 2 threads; an Edge TPU or GPU target is not measured: unknown
    from dataclasses import replace

    one_thread = _thread_invariance(Rounding(None, None, 1), module, ort_bundle, {}, replace(target, threads=1), gen,
                                    feeds)
    assert one_thread["checked"] and one_thread["invariant"] is False  # Rounding at 2 threads: not its 1's sums
    coral = targets.load("coral-edgetpu")
    assert _thread_invariance(gen.session, module, ort_bundle, {}, coral, gen, feeds) == \
        {"invariant": None, "max_abs": None, "checked": False}
    plain = type("module", (), {"Session": lambda *a, **k: gen.session})
    assert _thread_invariance(gen.session, plain, ort_bundle, {}, target, gen, feeds) == \
        {"invariant": True, "max_abs": 0.0, "checked": True}


def test_the_thread_and_batch_checks_run_a_fixed_batch_export_by_whole_batches(tmp_path):
    """The thread check cut 8 held-out inputs into parts of a fixed batch of 3 and ran the short last part:
    every native build of such an export failed inside onnxruntime (an internal error)."""
    import onnx

    from conftest import conditional_generator
    from edgegen.build import build

    onnx.save(conditional_generator(batch=3), str(tmp_path / "b3.onnx"))
    built = build(tmp_path / "b3.onnx", "x86-onnxruntime", tmp_path / "b")
    assert built.manifest["threading"]["checked"] and built.manifest["threading"]["invariant"] is True
