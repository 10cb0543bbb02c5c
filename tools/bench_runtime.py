"""`make bench`: the on-device latency engine measured on the zoo models, each technique against full
generation measured in the same run (interleaved, 1 intra-op thread, one process).

Builds zoo:glyphgen (feature split, ROI, preview tier upscaled by zoo:upscale2x compiled for the same
target, precomputed assets) and zoo:upscale2x at 128x128 -> 256x256 (ROI) for x86-onnxruntime fp32,
then measures: precomputed / LRU hits in-process and over HTTP, feature-cache variations, ROI and
edits, the preview tier, the micro-batcher with 16 concurrent clients, and cache memory under a
10,000-request mixed workload. Writes OUT/runtime.json and OUT/runtime.md.

    .venv/bin/python tools/bench_runtime.py --out bench [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgegen import zoo
from edgegen.build import build
from edgegen.fileio import write_text
from edgegen.runtime import Generator
from edgegen.runtime.assets import AssetPack, write_pack
from edgegen.runtime.batcher import MicroBatcher
from edgegen.runtime.server import Server

TARGET = "x86-onnxruntime"
UPSCALER_INPUT = {"image": [1, 3, 128, 128]}
HIT_BURST = 10
RAMP = 2  # p99 leaves out the first RAMP x clients requests: the ramp while the client threads start
BATCH_ROUNDS = 3  # every batching setting runs this many times, in turn: a 0.2 s run alone swings +-10%
SERVE_MAX_BATCH = 8  # `edgegen serve --max-batch` default: the setting the batching claim is measured at
# (zoo model, target, precision) of the batching runs: the other rows' bundle first; glyphtiny: per-call
# overhead dominates it; OpenVINO int8: oneDNN runs a batch as one wider convolution, ONNX Runtime
# loops its convolutions over the batch
BATCHING = [("glyphgen", TARGET, "fp32"), ("glyphtiny", TARGET, "fp32"), ("glyphgen", "x86-openvino", "int8"),
            ("glyphtiny", "x86-openvino", "int8")]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def interleaved(full: Callable[[int], Any], fast: Callable[[int], Any], runs: int,
                burst: int = 1) -> tuple[list[float], list[float]]:
    """Times (ms) of two request kinds measured turn about: run i of each, with argument i; with
    burst > 1, `fast` runs that many times after each `full` and its time is the burst's median."""
    full(-1), fast(-1)  # warm both paths
    a, b = [], []
    for i in range(runs):
        a.append(timed(lambda: full(i)))
        b.append(statistics.median(timed(lambda: fast(i * burst + k)) for k in range(burst)))
    return a, b


def row(claim: str, fast: list[float], full: list[float], limit: float, how: str, unit: str = "ratio") -> dict[str, Any]:
    """A measured claim. Ratios are the median of the per-pair ratios (each technique run against the
    full generation right before it), which cancels load drifting on a shared machine."""
    fast_ms, full_ms = statistics.median(fast), statistics.median(full)
    value = statistics.median(f / g for f, g in zip(fast, full)) if unit == "ratio" else fast_ms
    return {"claim": claim, "p50_ms": round(fast_ms, 4), "full_p50_ms": round(full_ms, 4),
            "value": round(value, 4), "limit": round(limit, 4), "unit": unit, "pass": bool(value <= limit),
            "how": how}


def rss_mb() -> float:
    """The process's resident memory now (Linux /proc), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def smooth_image(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 8 + 1, size // 8 + 1, 3))
    return (np.kron(coarse, np.ones((8, 8, 1)))[:size, :size] * 255).astype(np.uint8)


# -- measurements --------------------------------------------------------------------------------------
def cache_hits(bundle: Path, runs: int) -> list[dict[str, Any]]:
    cold = Generator.open(bundle, threads=1, cache_bytes=0, feature_cache_bytes=0, assets=False)
    warm = Generator.open(bundle, threads=1)
    assert warm.render([{"seed": 0, "label": 0}])[0].served_by == "asset"
    warm.generate(seed=123_456, label=3)
    full = lambda i: cold.generate(seed=10_000 + i, label=i % 10)  # noqa: E731 - a new request every time
    asset_hit = lambda i: warm.render([{"seed": i % 20, "label": (i // 20) % 10}])  # noqa: E731 - 200 assets
    lru_hit = lambda i: warm.generate(seed=123_456, label=3)  # noqa: E731
    rows = []
    for burst, when in [(1, "right after a generation (cold CPU caches)"),
                        (HIT_BURST, f"in a {HIT_BURST / (HIT_BURST + 1):.0%}-hit stream (bursts of {HIT_BURST} hits "
                                    "between generations; the burst's median)")]:
        full_a, asset = interleaved(full, asset_hit, runs, burst)
        full_b, lru = interleaved(full, lru_hit, runs, burst)
        rows += [row(f"precomputed hit, in-process, {when}", asset, full_a, 0.01,
                     "render() of a request in the asset pack"),
                 row(f"LRU hit, in-process, {when}", lru, full_b, 0.01, "generate() of a request served before")]
    server = Server(warm, max_batch=8, max_delay_us=2000).start()
    try:
        host, port = server.httpd.server_address[:2]
        conn = http.client.HTTPConnection(host, port)
        body = json.dumps({"seed": 123_456, "label": 3})

        def hit(_):
            conn.request("POST", "/v1/generate", body)
            response = conn.getresponse()
            response.read()
            assert response.getheader("X-Edgegen-Served-By") in ("lru", "response-cache")  # the first, then repeats

        full_c, over_http = interleaved(full, hit, runs)
    finally:
        server.close()
    rows.append(row("cache hit over HTTP (keep-alive, PNG)", over_http, full_c, 2.0,
                    "POST /v1/generate round trip from a client in the same process; a repeat is answered from "
                    "the server's encoded responses", unit="ms"))
    return rows


def feature_cache(bundle: Path, runs: int) -> dict[str, Any]:
    cold = Generator.open(bundle, threads=1, cache_bytes=0, feature_cache_bytes=0, assets=False)
    warm = Generator.open(bundle, threads=1, cache_bytes=0, assets=False)
    share = warm.manifest["serving"]["split"]["head_share"]
    warm.generate(seed=77, label=0)  # the trunk of seed 77 is cached from here on
    full, variation = interleaved(lambda i: cold.generate(seed=20_000 + i, label=i % 10),
                                  lambda i: warm.generate(seed=77, label=(i + 1) % 10), runs)
    result = row(f"feature-cache variation (same seed, new label); head holds {share:.1%} of the MACs",
                 variation, full, share + 0.1, "LRU off; the trunk's outputs cached for the seed")
    result["head_share"] = share
    return result


def roi_and_edits(bundle: Path, runs: int) -> list[dict[str, Any]]:
    gen = Generator.open(bundle, threads=1, cache_bytes=0)
    editor = Generator.open(bundle, threads=1, cache_bytes=256 << 20)
    frames = [smooth_image(128, s) for s in range(runs + 1)]
    full = lambda i: gen.generate(image=frames[i])  # noqa: E731
    rows = []
    for name, roi in [("corner", (0, 0, 128, 128)), ("centre", (64, 64, 128, 128))]:
        full_t, roi_t = interleaved(full, lambda i: gen.generate(image=frames[i], roi=roi), runs)
        rows.append(row(f"ROI of a quarter of the 256x256 frame ({name})", roi_t, full_t, 0.4,
                        f"roi={roi} on zoo:upscale2x, 128x128 input"))
    base = frames[0]
    editor.generate(image=base)
    rng = np.random.default_rng(0)
    for name, (y, x) in [("centre", (50, 50)), ("corner", (0, 99))]:
        def edit(i):
            changed = base.copy()
            changed[y:y + 29, x:x + 29] = rng.integers(0, 256, (29, 29, 3), dtype=np.uint8)  # 5.1% of the input
            return editor.edit(base, changed)

        full_t, edit_t = interleaved(full, edit, runs)
        rows.append(row(f"edit touching 5% of the input ({name})", edit_t, full_t, 0.25,
                        "29x29 input pixels changed; previous output cached; changes grouped in 8-pixel cells"))
    stats = editor.stats()["edits"]
    rows[-1]["computed_share"] = round(stats["computed_pixels"] / stats["frame_pixels"], 4)
    return rows


def tiers(bundles: dict[str, Path], runs: int) -> list[dict[str, Any]]:
    """The preview tier raw (32x32) and upscaled (by the zoo upscaler, by Lanczos-3) against the full tier,
    each right after a full generation; raw in a stream of previews (a user browsing candidates); raw
    after a cached trunk (browsing labels of one seed)."""
    rows = []
    stream = f"in a stream of previews: bursts of {HIT_BURST} between full generations, the burst's median"
    cases = [("32x32, not upscaled, right after a full generation", bundles["zoo:upscale2x"], {"output": "preview"},
              False, 1),
             (f"32x32, not upscaled, {stream}", bundles["zoo:upscale2x"], {"output": "preview"}, False, HIT_BURST),
             ("upscaled by zoo:upscale2x", bundles["zoo:upscale2x"], {"quality": "preview"}, False, 1),
             ("upscaled by Lanczos-3", bundles["lanczos"], {"quality": "preview"}, False, 1),
             ("32x32, trunk cached for the seed", bundles["zoo:upscale2x"], {"output": "preview"}, True, 1)]
    for label, bundle, request, warm, burst in cases:
        cold = Generator.open(bundle, threads=1, cache_bytes=0, feature_cache_bytes=0, assets=False)
        gen = Generator.open(bundle, threads=1, cache_bytes=0, assets=False) if warm else cold
        seed = (lambda i: 77) if warm else (lambda i: 30_000 + i)
        full_t, preview_t = interleaved(lambda i: cold.generate(seed=30_000 + i, label=i % 10),
                                        lambda i: gen.generate(seed=seed(i), label=i % 10, **request), runs, burst)
        report = {r["tier"]: r for r in gen.manifest["serving_report"]["tiers"]["rows"]}
        preview = report["preview"]
        tier = gen.manifest["serving"]["tiers"]["preview"]
        upscaler = gen.parts.macs("upscaler") if tier.get("upscale") == "upscaler" and "output" in request else 0
        macs = gen.parts.macs(tier["part"]) if warm else preview["macs"] - upscaler  # a raw preview: no upscaler
        result = row(f"preview tier ({label}) vs full tier; the preview path holds "
                     f"{macs / report['full']['macs']:.1%} of the MACs", preview_t, full_t, 0.35,
                     "caches off" if not warm else "LRU off; full generation cold")
        result["psnr_db"] = preview["psnr_upscaled_vs_full_db"] if "quality" in request else \
            preview["psnr_vs_full_downscaled_db"]
        rows.append(result)
    return rows


def batching(model: str, bundle: Path, requests: int, clients: int = 16, max_delay_us: int = 2000) -> dict[str, Any]:
    """Throughput and p99 of `clients` closed-loop clients through the micro-batcher at max_batch 1
    (unbatched) up to `clients`; the claim compares `edgegen serve`'s default (SERVE_MAX_BATCH) with
    unbatched. Also generate_batch's time per image at each batch size (what one merged call saves,
    apart from the per-request hand-offs between threads that batching also saves)."""
    gen = Generator.open(bundle, threads=1, cache_bytes=0, feature_cache_bytes=0, assets=False)
    sizes = [1, 2, 4, 8, clients]
    per_image = {}
    for size in sizes:
        batch = [{"seed": 40_000 + i, "label": i % 10} for i in range(size)]
        per_image[size] = statistics.median(timed(lambda: gen.generate_batch(batch)) for _ in range(7)) / size

    def load(max_batch: int) -> tuple[float, list[float], float]:
        batcher = MicroBatcher(gen, max_batch=max_batch, max_delay_us=max_delay_us)
        latencies: list[tuple[int, float]] = []  # (request number, ms)
        counter = iter(range(10 ** 9))
        lock = threading.Lock()

        def client():
            while True:
                with lock:
                    n = next(counter)
                if n >= requests:
                    return
                latencies.append((n, timed(lambda: batcher.generate({"seed": 50_000 + n, "label": n % 10}))))

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        batch_ms = batcher.stats()["batch_ms_p50"]
        batcher.close()
        steady = [ms for n, ms in latencies if n >= RAMP * clients]  # the clients are all running by then
        return requests / elapsed, steady, batch_ms

    rounds = [{size: load(size) for size in sizes} for _ in range(BATCH_ROUNDS)]  # the settings in turn
    sweep = {size: (statistics.median(r[size][0] for r in rounds),
                    float(np.percentile([ms for r in rounds for ms in r[size][1]], 99)),
                    statistics.median(r[size][2] for r in rounds)) for size in sizes}
    gain = statistics.median(r[SERVE_MAX_BATCH][0] / r[1][0] for r in rounds)
    base_rps, base_p99, _ = sweep[1]
    batched_rps, batched_p99, one_batch = sweep[SERVE_MAX_BATCH]  # the batcher's backend calls in those runs
    bound = max_delay_us / 1e3 + 2 * one_batch
    return {"claim": f"{clients} concurrent clients: throughput, micro-batched vs unbatched", "model": model,
            "backend_gain": round(per_image[1] / per_image[SERVE_MAX_BATCH], 3), "unbatched_rps": round(base_rps, 2),
            "batched_rps": round(batched_rps, 2), "round_gains": [round(r[SERVE_MAX_BATCH][0] / r[1][0], 3) for r in rounds],
            "value": round(gain, 3), "limit": 2.0, "unit": "x (at least)",
            "pass": gain >= 2.0, "unbatched_p99_ms": round(base_p99, 3),
            "batched_p99_ms": round(batched_p99, 3), "one_batch_ms": round(one_batch, 3),
            "one_batch_alone_ms": round(per_image[SERVE_MAX_BATCH] * SERVE_MAX_BATCH, 3),
            "p99_bound_ms": round(bound, 3), "p99_pass": batched_p99 <= bound,
            "sweep": {size: {"rps": round(rps, 2), "p99_ms": round(p99, 3), "batch_ms_p50": batch_ms,
                             "backend_ms_per_image": round(per_image[size], 3)}
                      for size, (rps, p99, batch_ms) in sweep.items()},
            "how": f"{requests} distinct requests per setting and round, {BATCH_ROUNDS} rounds of every setting in "
                   f"turn, caches off, max_delay {max_delay_us} us; requests/s: the rounds' median, the gain: the median "
                   f"of the rounds' gains; p99 of the rounds' requests after the first {RAMP * clients} of each (the ramp "
                   "while the client threads start)"}


def memory(bundle: Path, requests: int, workdir: Path) -> dict[str, Any]:
    budgets = {"lru": 4 << 20, "features": 2 << 20, "disk": 8 << 20}
    gen = Generator.open(bundle, threads=1, cache_bytes=budgets["lru"], feature_cache_bytes=budgets["features"],
                         disk_cache=workdir / "disk", disk_cache_bytes=budgets["disk"])
    rng = np.random.default_rng(1)
    seeds = rng.zipf(1.3, size=requests) % 5000
    peak = {"lru": 0, "features": 0, "disk": 0}
    rss_start = rss_peak = 0.0
    for n, seed in enumerate(seeds):
        kind = n % 10
        request: dict[str, Any] = {"seed": int(seed), "label": int(rng.integers(0, 10))}
        if kind == 7:
            request["quality"] = "preview"
        elif kind == 8:
            request["roi"] = [16, 16, 32, 32]
        gen.generate(**request)
        if n == 200:
            rss_start = rss_mb()
        if n >= 200:
            rss_peak = max(rss_peak, rss_mb())
        stats = gen.stats()
        for name in peak:
            peak[name] = max(peak[name], stats[name]["bytes"])
    stats = gen.stats()
    within = all(peak[k] <= budgets[k] for k in budgets)
    return {"claim": f"cache memory within budgets over a {requests}-request mixed workload",
            "budgets_bytes": budgets, "peak_bytes": peak, "pass": within, "value": within,
            "served": stats["served"], "evictions": {k: stats[k]["evictions"] for k in budgets},
            "rss_mb_after_200": round(rss_start, 1), "rss_mb_peak_after_200": round(rss_peak, 1),
            "how": "Zipf(1.3) seeds over 5000, random labels; 10% previews, 10% ROIs; LRU, feature and disk "
                   "caches; budgets checked after every request"}


def asset_pack_open(entries: int, workdir: Path) -> dict[str, Any]:
    """Opening a pack of many (tiny) assets and looking one up: the table is mapped, not loaded."""
    image = np.zeros((4, 4, 3), np.uint8)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(entries)]
    write_pack(workdir, "0" * 64, ((key, {"seed": i}, image) for i, key in enumerate(keys)), "bench")
    opens, hits, misses = [], [], []
    for n in range(5):
        start = time.perf_counter()
        pack = AssetPack(workdir, "0" * 64)
        opens.append(time.perf_counter() - start)
        hits += [timed(lambda: pack.get(keys[(n * 997 + i * 7919) % entries])) for i in range(200)]
        misses += [timed(lambda: pack.get(hashlib.sha256(f"absent {i}".encode()).hexdigest())) for i in range(200)]
        pack.close()
    sizes = {name: (workdir / "assets" / name).stat().st_size for name in ("table.bin", "pack.bin", "requests.jsonl")}
    return {"entries": entries, "open_ms": round(statistics.median(opens) * 1e3, 1),
            "hit_us": round(statistics.median(hits) * 1e3, 1), "miss_us": round(statistics.median(misses) * 1e3, 1),
            "bytes": sizes}


# -- report ----------------------------------------------------------------------------------------------
def render(meta: dict[str, Any], rows: list[dict[str, Any]], extra: list[dict[str, Any]]) -> str:
    lines = [f"Measured by `{meta['command']}` on {meta['date']} ({meta['host']}, {os.cpu_count()} cores shared; "
             f"load average {meta['load_average'][0]} at the end); target {TARGET} fp32, 1 intra-op thread, "
             f"{meta['runs']} interleaved pairs per row; full generation (caches off) measured right before each "
             "run of the technique, ratios are medians of the per-pair ratios. Models: " + ", ".join(meta["models"])
             + ".", "",
             "| technique | p50 ms | full generation p50 ms | measured | limit | meets it | how |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        measured = f"{r['value']:.4f}x" if r["unit"] == "ratio" else f"{r['value']:.3f} ms"
        limit = f"<= {r['limit']:.3f}x" if r["unit"] == "ratio" else f"<= {r['limit']:.1f} ms"
        lines.append(f"| {r['claim']} | {r['p50_ms']:.3f} | {r['full_p50_ms']:.3f} | {measured} | {limit} | "
                     f"{'yes' if r['pass'] else 'no'} | {r['how']} |")
    batches, mem, pack = extra
    for batch in batches:
        lines += ["", f"**Batching, {batch['model']}** ({batch['how']}): unbatched {batch['unbatched_rps']} req/s, "
                  f"micro-batched at max batch {SERVE_MAX_BATCH} (`edgegen serve`'s default) {batch['batched_rps']} req/s; "
                  f"gain {batch['value']}x (rounds {', '.join(f'{g}x' for g in batch['round_gains'])}; goal >= 2x: "
                  f"{'met' if batch['pass'] else 'not met'}; generate_batch's time per image at batch 1 over its time "
                  f"per image at batch {SERVE_MAX_BATCH}: {batch['backend_gain']}x); p99 "
                  f"{batch['batched_p99_ms']} ms vs max delay + 2 x one batch (the batcher's median backend call in "
                  f"that run, {batch['one_batch_ms']} ms; {batch['one_batch_alone_ms']} ms alone) = "
                  f"{batch['p99_bound_ms']} ms ({'met' if batch['p99_pass'] else 'not met'}); unbatched p99 "
                  f"{batch['unbatched_p99_ms']} ms.", "",
                  "| max batch | requests/s | p99 ms | batcher's median backend call ms | generate_batch ms per image "
                  "at that batch size, alone |",
                  "|---|---|---|---|---|"]
        lines += [f"| {size} | {r['rps']} | {r['p99_ms']} | {r['batch_ms_p50']} | {r['backend_ms_per_image']} |"
                  for size, r in batch["sweep"].items()]
    lines += ["", f"**Memory** ({mem['how']}): peak bytes {mem['peak_bytes']} within budgets {mem['budgets_bytes']}: "
              f"{'yes' if mem['pass'] else 'no'}; served {mem['served']}; evictions {mem['evictions']}; resident memory "
              f"{mem['rss_mb_after_200']} MB after 200 requests, at most {mem['rss_mb_peak_after_200']} MB after that.",
              "", f"**Asset pack of {pack['entries']:,} entries** (4x4x3 images; files {pack['bytes']} bytes): opened in "
              f"{pack['open_ms']} ms (the table is mapped, not loaded; median of 5); a hit {pack['hit_us']} us, a miss "
              f"{pack['miss_us']} us (medians, sha256 check included)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="fewer runs and requests (a smoke run)")
    args = parser.parse_args()
    runs = 8 if args.quick else args.runs
    missing = [m for m in ("glyphgen", "upscale2x") if m not in zoo.names()]
    if missing:
        print(f"bench_runtime: zoo model(s) {missing} are not in edgegen/zoo yet; nothing to measure", file=sys.stderr)
        return 1
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="edgegen-bench-runtime-") as tmp:
        work = Path(tmp)
        requests = work / "assets.yaml"
        requests.write_text("grid: {seed: '0..19', label: '0..9'}\n")
        glyph = work / "glyphgen"
        print("building zoo:glyphgen ...", flush=True)
        build("zoo:glyphgen", TARGET, glyph, split=["auto"], roi=True, preview_upscale="zoo:upscale2x",
              precompute=str(requests))
        variants = {"zoo:upscale2x": glyph, "lanczos": work / "glyphgen-lanczos"}
        build("zoo:glyphgen", TARGET, variants["lanczos"], preview_upscale="lanczos")
        upscaler = work / "upscale2x"
        print("building zoo:upscale2x ...", flush=True)
        build("zoo:upscale2x", TARGET, upscaler, roi=True, graph_options={"input_shapes": UPSCALER_INPUT})
        rows = cache_hits(glyph, runs * 5)
        rows.append(feature_cache(glyph, runs))
        rows += roi_and_edits(upscaler, runs)
        rows += tiers(variants, runs)
        print("batching ...", flush=True)
        batch = []
        for name, target, precision in BATCHING:
            if name not in zoo.names():
                continue
            bundle = glyph if (name, target, precision) == BATCHING[0] else work / f"{name}-{target}-{precision}"
            if not bundle.exists():
                build(f"zoo:{name}", target, bundle, precision=precision)
            batch.append(batching(f"zoo:{name}, {target} {precision}", bundle, 160 if args.quick else 640))
        print("memory workload ...", flush=True)
        mem = memory(glyph, 1000 if args.quick else 10_000, work)
        print("asset pack ...", flush=True)
        pack = asset_pack_open(30_000 if args.quick else 300_000, work / "pack")
    meta = {"command": "make bench" if not args.quick else "tools/bench_runtime.py --quick",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": f"{platform.machine()} {platform.processor() or ''}".strip(), "runs": runs,
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "models": ["zoo:glyphgen (64x64, preview 32x32)", "zoo:upscale2x (128x128 -> 256x256)"]
            + [f"{b['model']} (batching)" for b in batch[1:]]}
    write_text(out / "runtime.json", json.dumps({**meta, "rows": rows, "batching": batch, "memory": mem,
                                                 "asset_pack": pack},
                                                indent=2) + "\n")
    write_text(out / "runtime.md", render(meta, rows, [batch, mem, pack]))
    print((out / "runtime.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
