"""Micro-batching: concurrent requests share backend calls, with the same pixels as one by one."""

import threading

import numpy as np
import onnx
import pytest

from edgegen import bench
from edgegen.build import build
from edgegen.errors import BuildError, BundleError, RequestError
from edgegen.runtime import Generator
from edgegen.runtime.batcher import MicroBatcher, OverloadedError
from runtime_models import glyph_like

FAMILIES = "tests/data/families"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "glyph.onnx"
    onnx.save(glyph_like(), str(path))
    out = tmp_path_factory.mktemp("bundles") / "glyph"
    build(path, "x86-onnxruntime", out, split=["auto"])
    return out


def concurrently(batcher: MicroBatcher, requests: list[dict]) -> list:
    results = [None] * len(requests)
    barrier = threading.Barrier(len(requests))

    def client(i):
        barrier.wait()
        try:
            results[i] = batcher.generate(requests[i], timeout=30).pixels
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_are_merged_and_pixels_do_not_change(bundle):
    batcher = MicroBatcher(Generator.open(bundle), max_batch=8, max_delay_us=50_000)
    requests = [{"seed": i, "label": i % 10} for i in range(16)] + [{"seed": 0, "label": 0}] * 4
    results = concurrently(batcher, requests)
    stats = batcher.stats()
    batcher.close()
    alone = Generator.open(bundle, cache_bytes=0, feature_cache_bytes=0)
    for request, pixels in zip(requests, results):
        np.testing.assert_array_equal(pixels, alone.generate(**request))
    assert stats["largest_batch"] > 1 and stats["batches"] < 16
    assert stats["merged_duplicates"] + stats["hits"] >= 3  # the four equal requests were computed once


def test_a_bad_request_fails_alone(bundle):
    batcher = MicroBatcher(Generator.open(bundle), max_batch=4, max_delay_us=50_000)
    with pytest.raises(RequestError, match="label 11 is out of range"):
        batcher.submit({"seed": 1, "label": 11})
    requests = [{"seed": 1, "label": 1}, {"latent": np.zeros(15, np.float32), "label": 2}, {"seed": 2, "label": 2}]
    results = concurrently(batcher, requests)
    batcher.close()
    assert isinstance(results[1], RequestError) and "must have shape 16" in str(results[1])
    assert results[0].shape == results[2].shape == (32, 32, 3)


def test_queue_limit_rejects_with_overloaded(bundle):
    batcher = MicroBatcher(Generator.open(bundle), max_batch=100, max_delay_us=5_000_000, max_pending=3)
    futures = [batcher.submit({"seed": s, "label": 1}) for s in range(3)]
    with pytest.raises(OverloadedError, match="limit 3"):
        batcher.submit({"seed": 9, "label": 1})
    batcher.close()  # serves what waits
    assert all(f.result().pixels.shape == (32, 32, 3) for f in futures)
    assert batcher.stats()["rejected"] == 1


def test_every_batch_n_artifact_is_checked_at_build(tmp_path, monkeypatch):
    """The check ran the held-out inputs in chunks of the largest batch: with 8 of them and sizes 1, 4, 8 only
    the batch-8 artifact ever ran, and the report said all three were checked."""
    from edgegen.runtime.parts import Parts

    ran, real = [], Parts.run
    monkeypatch.setattr(Parts, "run", lambda self, name, feeds: ran.append(name) or real(self, name, feeds))
    build(f"{FAMILIES}/cgan_dcgan__legacy_b1.onnx", "x86-onnxruntime", tmp_path / "b", batch_sizes=[1, 4, 8])
    assert {"main", "batch4", "batch8"} <= set(ran)


def test_fixed_batch_model_uses_batch_n_artifacts(tmp_path):
    # exported at batch 1 with Reshape targets that hard-code it: the batch-4 artifact rewrites them
    build(f"{FAMILIES}/cgan_dcgan__legacy_b1.onnx", "x86-onnxruntime", tmp_path / "b", batch_sizes=[1, 4])
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    assert gen.batch_parts == {1: "main", 4: "batch4"}
    assert gen.manifest["serving_report"]["batch_sizes"]["max_abs"] == 0.0
    calls = []
    session = gen.parts.session("batch4")
    gen.parts._sessions["batch4"] = type("Spy", (), {"run": lambda self, f: calls.append(
        len(next(iter(f.values())))) or session.run(f)})()
    requests = [{"seed": s, "label": s % 10} for s in range(7)]
    batch = gen.generate_batch(requests)
    assert calls == [4, 4]  # 4, then 3 padded to 4
    for request, image in zip(requests, batch):
        np.testing.assert_array_equal(image, gen.generate(**request))
    calls.clear()  # run() too (`edgegen bench --batch 4` measures it)
    feeds = gen.feeds(requests)
    whole = gen.run(feeds)
    assert calls == [4, 4]
    for name, array in whole.items():
        one_by_one = [gen.run({k: v[i:i + 1] for k, v in feeds.items()})[name] for i in range(7)]
        np.testing.assert_array_equal(array, np.concatenate(one_by_one))
    rows = bench.run(tmp_path / "b", [1], batch=4, runs=2, warmup=0, baseline=True)["rows"]
    assert [r["batch"] for r in rows] == [4, 4]  # the source runs in chunks of its own batch
    with pytest.raises(BundleError, match="fixed batch of 1; bench it at --batch 1 or one of the batch sizes it "
                                          r"was built with \(1, 4\)"):
        bench.run(tmp_path / "b", [1], batch=2)
    with pytest.raises(BuildError, match="batch axis is dynamic"):
        build(f"{FAMILIES}/dcgan__legacy_dyn.onnx", "x86-onnxruntime", tmp_path / "c", batch_sizes=[4])


def test_stats_report_the_median_backend_call(bundle):
    batcher = MicroBatcher(Generator.open(bundle), max_batch=4, max_delay_us=50_000)
    assert batcher.stats()["batch_ms_p50"] is None
    concurrently(batcher, [{"seed": s, "label": 1} for s in range(8)])
    stats = batcher.stats()
    batcher.close()
    assert stats["batches"] >= 2 and stats["batch_ms_p50"] > 0


def test_a_request_the_batcher_computes_counts_one_miss(bundle):
    """The batcher looks a request up when it is submitted and again before running it (an earlier batch
    may have just computed it): each miss was counted twice."""
    gen = Generator.open(bundle)
    batcher = MicroBatcher(gen, max_batch=4, max_delay_us=1000)
    try:
        assert batcher.generate({"seed": 1, "label": 2}).served_by == "computed"
        assert batcher.generate({"seed": 1, "label": 2}).served_by == "lru"
    finally:
        batcher.close()
    assert (gen.cache.stats.misses, gen.cache.stats.hits) == (1, 1)


def test_equal_requests_merged_into_one_computation_are_each_counted_served(bundle):
    gen = Generator.open(bundle, cache_bytes=0)
    batcher = MicroBatcher(gen, max_batch=8, max_delay_us=200_000)
    try:
        futures = [batcher.submit({"seed": 5, "label": 3}) for _ in range(6)]
        results = [f.result() for f in futures]
    finally:
        batcher.close()
    assert {r.served_by for r in results} == {"computed"} and batcher.counters["merged_duplicates"] == 5
    assert gen.stats()["served"] == {"computed": 6}
    assert len({id(r.pixels) for r in results}) == 6  # each caller its own array


def test_an_artifact_whose_outputs_change_with_the_batch_is_computed_one_request_at_a_time(bundle):
    """OpenVINO's kernels for another batch size sum in another order (int8 at batch 3: pixels one level off),
    so merged requests gave traffic-dependent pixels. The build checks it; the runtime then runs each alone."""
    from edgegen.build import _batch_invariance

    gen = Generator.open(bundle, cache_bytes=0, feature_cache_bytes=0)
    assert gen.manifest["batching"] == {"invariant": True, "max_abs": 0.0}  # ONNX Runtime: any batch, one result
    feeds = gen.feeds([{"seed": s, "label": s % 10} for s in range(8)])
    drifting = type("Drifting", (), {"run": lambda self, f: {k: v + 1e-7 * len(f["latent"])
                                                             for k, v in gen.session.run(f).items()}})()
    checked = _batch_invariance(drifting, gen, feeds, drifting.run(feeds))  # gen: the specs of the source's I/O
    assert not checked["invariant"] and checked["max_abs"] > 0
    calls = []
    run = gen.parts.run
    gen.parts.run = lambda name, f: calls.append(len(next(iter(f.values())))) or run(name, f)
    requests = [{"seed": s, "label": 1} for s in range(4)]
    together = gen.generate_batch(requests)
    per_batch = len(calls)  # a part call each (the trunk and the head of a split bundle)
    assert calls == [4] * per_batch
    gen.batch_invariant, calls[:] = False, []
    np.testing.assert_array_equal(gen.generate_batch(requests), together)
    assert calls == [1] * 4 * per_batch


def test_the_batch_check_compares_every_held_out_input_with_its_row(bundle):
    """The check ran the first three inputs alone: an OpenVINO int8 U-Net whose full batch gave its fourth row
    0.08 off that input alone was marked invariant, and generate_batch served 4 of 8 images up to 6 levels off."""
    from edgegen.build import _batch_invariance

    gen = Generator.open(bundle, cache_bytes=0, feature_cache_bytes=0)
    feeds = gen.feeds([{"seed": s, "label": s % 10} for s in range(8)])
    batched = gen.session.run(feeds)
    batched = {k: v.copy() for k, v in batched.items()}
    for array in batched.values():
        array[3] += 0.08  # the fourth row of the full batch only
    checked = _batch_invariance(gen.session, gen, feeds, batched)
    assert not checked["invariant"] and checked["max_abs"] == pytest.approx(0.08, abs=1e-5)


def test_an_artifact_whose_outputs_change_with_the_batch_is_measured_as_it_serves_requests(tmp_path, monkeypatch):
    """Where the batch check finds the outputs change with the batch, the runtime computes each request alone, but
    the reported fidelity was the batched run's (an OpenVINO int8 build: 25.3 dB reported, 23.7 dB as served), and
    an fp32 artifact off the graph in batches only was refused though no request would see the difference."""
    from edgegen.backends.onnxruntime import session as ort_session

    run = ort_session.Session.run

    def batch_dependent(self, feeds):
        outputs = run(self, feeds)
        rows = len(next(iter(feeds.values())))
        return {k: v + 0.01 if rows > 1 and v.dtype.kind == "f" else v for k, v in outputs.items()}

    monkeypatch.setattr(ort_session.Session, "run", batch_dependent)
    onnx.save(glyph_like(), str(tmp_path / "glyph.onnx"))
    result = build(tmp_path / "glyph.onnx", "x86-onnxruntime", tmp_path / "b")
    assert result.manifest["batching"]["invariant"] is False
    assert result.manifest["batching"]["max_abs"] == pytest.approx(0.01, abs=1e-6)
    assert result.fidelity["max_abs"] < 1e-5  # each held-out input alone: the source's outputs
    floored = build(tmp_path / "glyph.onnx", "x86-onnxruntime", tmp_path / "f", precision="fp16", min_psnr=30)
    fresh = floored.fidelity["fresh"]  # the inputs no choice saw, also measured as served (32 dB batched)
    assert floored.manifest["batching"]["invariant"] is False and fresh["psnr_db"] > 60
