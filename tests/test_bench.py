"""Paired latency measurement (edgegen.bench.interleaved and helpers): logic only, no timing thresholds."""

import json
import threading
import time

import pytest

from edgegen import bench


def test_interleaved_measures_in_blocks_each_after_the_process_went_idle(monkeypatch):
    """Single runs alternating let one runtime's spinning workers (ONNX Runtime's, 40-60 ms after each call)
    take the cores of the other's next run: each subject runs in blocks, each block after `settle`."""
    calls = []
    monkeypatch.setattr(bench, "settle", lambda *a, **k: calls.append("settle") or True)
    a, b = bench.interleaved(lambda: calls.append("a"), lambda: calls.append("b"), runs=12, warmup=1, block=5)
    assert len(a) == len(b) == 12
    block = lambda who, n: ["settle"] + [who] * (bench.BLOCK_WARMUP + n)  # noqa: E731
    assert calls == ["a", "b"] + block("a", 5) + block("b", 5) + block("a", 5) + block("b", 5) \
        + block("a", 2) + block("b", 2)


def test_interleaved_with_fewer_runs_than_a_block_runs_one_block_each(monkeypatch):
    monkeypatch.setattr(bench, "settle", lambda *a, **k: True)
    a, b = bench.interleaved(lambda: None, lambda: None, runs=3, warmup=0)
    assert len(a) == len(b) == 3


def test_paired_speed_is_the_median_of_the_block_pairs_ratios():
    a = [1.0] * 5 + [2.0] * 5 + [1.0] * 5
    b = [2.0] * 5 + [2.0] * 5 + [3.0] * 5  # block ratios 2, 1, 3
    assert bench.paired_speed(a, b, block=5) == 2.0
    assert bench.paired_speed([1.0, 1.0], [4.0, 4.0], block=5) == 4.0


def test_settle_waits_until_a_spinning_thread_in_this_process_stops():
    stop = time.perf_counter() + 0.1

    def spin():
        while time.perf_counter() < stop:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        assert bench.settle(limit_s=5.0)
        assert not spinner.is_alive()
    finally:
        spinner.join()


def test_settle_gives_up_after_its_limit():
    done = threading.Event()

    def spin():
        while not done.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        assert not bench.settle(limit_s=0.05)
    finally:
        done.set()
        spinner.join()


def test_other_load_counts_the_host_less_this_process(monkeypatch):
    ticks = iter([(1000, 100), (1150, 150)])  # host +150 ticks, this process +50: 100 ticks of others
    monkeypatch.setattr(bench, "_cpu_ticks", lambda: next(ticks))
    clock = iter([10.0, 11.0])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(bench.os, "sysconf", lambda name: 100)
    with bench.OtherLoad() as load:
        pass
    assert load.cores == pytest.approx(1.0)
    assert bench.busy_host({"other_load_cores": load.cores, "host_cpus": 2}, threads=2)
    assert not bench.busy_host({"other_load_cores": 0.1, "host_cpus": 2}, threads=2)
    assert not bench.busy_host({"other_load_cores": None, "host_cpus": 2}, threads=2)
    assert not bench.busy_host({"other_load_cores": 1.0, "host_cpus": 2}, threads=1)  # one CPU left free for it
    assert not bench.busy_host({"other_load_cores": 1.0, "host_cpus": 16}, threads=2)


def test_bench_table_explains_the_ratio_and_marks_one_measured_on_a_busy_host():
    row = {"subject": "x", "threads": 2, "batch": 1, "p50_ms": 1.0, "p95_ms": 1.1, "images_per_s": 1000.0,
           "peak_rss_mb": 100.0}
    pair = {"bundle_p50_ms": 1.0, "source_p50_ms": 1.2, "speedup": 1.2, "block_runs": 5, "host_cpus": 2}
    quiet = {**row, "speedup_vs_baseline": 1.2, "interleaved": {**pair, "other_load_cores": 0.0}}
    text = bench.table({"rows": [quiet, row]})
    assert "| 1.20x |" in text and "alternating blocks" in text and "* measured while" not in text
    busy = {**row, "speedup_vs_baseline": 0.4, "interleaved": {**pair, "other_load_cores": 1.6}}
    text = bench.table({"rows": [busy, row]})
    assert "| 0.40x* |" in text
    assert "| 0.0031x |" in bench.table({"rows": [{**quiet, "speedup_vs_baseline": 0.0031}, row]})  # was 0.00x
    assert "* measured while other processes kept 1.6 (at 2 threads) of this host's 2 cores busy" in text


def test_the_paired_ratio_times_the_artifact_as_build_does(ort_bundle, monkeypatch):
    """The pair timed Generator.run, whose input checks cost a fixed time per call, against a bare source
    session: a 0.04 ms artifact read 0.55x where build (the bare artifact) said 0.96x."""
    from edgegen.runtime import Generator

    def checked_run(self, feeds):
        raise AssertionError("the paired ratio timed run(), checks included")

    monkeypatch.setattr(Generator, "run", checked_run)
    manifest = json.loads((ort_bundle / "manifest.json").read_text())
    pair = bench._worker({"kind": "pair", "bundle": str(ort_bundle), "source": manifest["model"]["source"],
                          "threads": 1, "batch": 1, "runs": 5, "warmup": 1, "host_fallback": False})
    assert pair["speedup"] > 0 and pair["bundle_p50_ms"] > 0
