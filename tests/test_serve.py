"""`edgegen serve`: the HTTP API, its request validation, 64 concurrent clients, and the playground page
in headless Chromium."""

import base64
import http.client
import io
import json
import re
import shutil
import subprocess
import sys
import threading
from urllib.parse import urlparse

import numpy as np
import onnx
import pytest
from PIL import Image

from edgegen.build import build
from edgegen.runtime import Generator
from edgegen.runtime.server import Server
from runtime_models import glyph_like, upscaler_like


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    onnx.save(glyph_like(), str(root / "glyph.onnx"))
    onnx.save(upscaler_like(), str(root / "up.onnx"))
    (root / "assets.yaml").write_text("grid: {seed: 7, label: '0..2'}\n")
    build(root / "glyph.onnx", "x86-onnxruntime", root / "glyph", split=["auto"], roi=True,
          preview_upscale="lanczos", precompute=str(root / "assets.yaml"))
    build(root / "up.onnx", "x86-onnxruntime", root / "up", roi=True)
    return root


@pytest.fixture(scope="module")
def server(bundles):
    srv = Server(Generator.open(bundles / "glyph"), max_batch=8, max_delay_us=3000).start()
    yield srv
    srv.close()


def post(srv, body, raw: bytes | None = None, headers=None):
    url = urlparse(srv.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", "/v1/generate", raw if raw is not None else json.dumps(body), headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def get(srv, path):
    url = urlparse(srv.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    return response, response.read()


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_generate_png_and_json_with_cache_and_latency_headers(server, bundles):
    local = Generator.open(bundles / "glyph", cache_bytes=0)
    response, data = post(server, {"seed": 3, "label": 4})
    assert response.status == 200 and response.getheader("Content-Type") == "image/png"
    assert response.getheader("X-Edgegen-Served-By") == "computed"
    assert float(response.getheader("X-Edgegen-Latency-Ms")) > 0
    np.testing.assert_array_equal(png_pixels(data), local.generate(seed=3, label=4))
    response, data = post(server, {"seed": 3, "label": 4})
    assert response.getheader("X-Edgegen-Served-By") == "lru"
    response, data = post(server, {"seed": 7, "label": 1, "format": "json"})
    body = json.loads(data)
    assert body["served_by"] == "asset" and (body["width"], body["height"]) == (32, 32)
    np.testing.assert_array_equal(png_pixels(base64.b64decode(body["png_base64"])), local.generate(seed=7, label=1))
    _, data = post(server, {"seed": 3, "label": 4, "roi": [4, 8, 10, 6]})
    np.testing.assert_array_equal(png_pixels(data), local.generate(seed=3, label=4)[8:14, 4:14])
    _, data = post(server, {"seed": 3, "label": 4, "quality": "preview"})
    np.testing.assert_array_equal(png_pixels(data), local.generate(seed=3, label=4, quality="preview"))


def test_health_and_stats(server):
    response, data = get(server, "/v1/health")
    health = json.loads(data)
    assert response.status == 200 and health["status"] == "ok" and health["sizes"] == [16, 32]
    assert health["preview"] and health["roi"] == ["image", "preview"] and health["assets"] == 3
    assert [i["num_classes"] for i in health["inputs"] if i["role"] == "label"] == [10]
    stats = json.loads(get(server, "/v1/stats")[1])
    assert {"http", "generator", "batcher", "encoded_cache"} <= set(stats)
    assert stats["generator"]["lru"]["bytes"] <= stats["generator"]["lru"]["budget_bytes"]


@pytest.mark.parametrize("body, status, message", [
    ({"seed": 1, "label": 1, "style": 2}, 400, "unknown key"),
    ({"seed": -5, "label": 1}, 400, "seed -5 is out of range"),
    ({"seed": 2 ** 64, "label": 1}, 400, "out of range"),
    ({"seed": "x", "label": 1}, 400, "seed must be an integer"),
    ({"seed": 1, "label": 10}, 400, "label 10 is out of range"),
    ({"seed": 1}, 400, "needs a label"),
    ({"seed": 1, "label": 1, "roi": [30, 0, 8, 8]}, 400, "reaches outside the 32x32 image"),
    ({"seed": 1, "label": 1, "roi": "0,0,4,4"}, 400, "roi must be a list"),
    ({"seed": 1, "label": 1, "size": 64}, 400, r"size 64 is not offered by this bundle; sizes: \[16, 32\]"),
    ({"seed": 1, "label": 1, "format": "gif"}, 400, "use png or json"),
    ({"latent": [0.0] * 16, "label": 1}, 400, "arrays are not accepted"),
    ({"seed": 1, "label": 1, "image": [[1, 2, 3]]}, 400, "image must be a base64-encoded PNG or JPEG file"),
])
def test_bad_requests_get_clear_errors(server, body, status, message):
    response, data = post(server, body)
    assert response.status == status and re.search(message, json.loads(data)["error"])


def test_malformed_and_oversized_bodies(server, bundles):
    response, data = post(server, None, raw=b"{not json")
    assert response.status == 400 and "not JSON" in json.loads(data)["error"]
    response, data = post(server, None, raw=b"[" * 100_000 + b"]" * 100_000)
    assert response.status == 400 and "nests JSON too deeply" in json.loads(data)["error"]
    response, data = post(server, None, raw=b"x" * (server.max_body_bytes + 1))
    assert response.status == 413
    assert get(server, "/nope")[0].status == 404
    url = urlparse(server.url)
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request(method, "/v1/generate", b"{}" if method in ("PUT", "PATCH") else None)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        assert response.status == 405 and response.getheader("Allow") == "GET, POST"
        assert data == b"" if method == "HEAD" else "use GET /v1/health" in json.loads(data)["error"]
    up = Server(Generator.open(bundles / "up"), max_image_pixels=40 * 40).start()
    try:
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(buffer, format="PNG")
        response, data = post(up, {"image": base64.b64encode(buffer.getvalue()).decode()})
        assert response.status == 413 and "at most 1600 pixels" in json.loads(data)["error"]
        response, data = post(up, {"image": "not base64!"})
        assert response.status == 400 and "base64" in json.loads(data)["error"]
        small = (np.arange(24 * 32 * 3).reshape(24, 32, 3) % 251).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).save(buffer, format="PNG")
        response, data = post(up, {"image": base64.b64encode(buffer.getvalue()).decode(), "roi": [0, 0, 16, 16]})
        assert response.status == 200
        np.testing.assert_array_equal(png_pixels(data), Generator.open(bundles / "up").generate(image=small)[:16, :16])
    finally:
        up.close()


def test_64_concurrent_clients_are_all_served_correctly(bundles):
    srv = Server(Generator.open(bundles / "glyph", cache_bytes=0), max_batch=16, max_delay_us=5000).start()
    local = Generator.open(bundles / "glyph", cache_bytes=0)
    results = {}
    barrier = threading.Barrier(64)

    def client(i):
        barrier.wait()
        response, data = post(srv, {"seed": 100 + i, "label": i % 10})
        results[i] = (response.status, data)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = srv.batcher.stats()
    srv.close()
    assert sorted(results) == list(range(64)) and all(status == 200 for status, _ in results.values())
    for i, (_, data) in results.items():
        np.testing.assert_array_equal(png_pixels(data), local.generate(seed=100 + i, label=i % 10))
    assert stats["largest_batch"] > 1 and stats["rejected"] == 0


def test_serve_verb_binds_localhost_and_answers(bundles):
    proc = subprocess.Popen([sys.executable, "-m", "edgegen.cli", "serve", str(bundles / "glyph"), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        srv = type("Remote", (), {"url": url})()
        assert json.loads(get(srv, "/v1/health")[1])["status"] == "ok"
        assert post(srv, {"seed": 1, "label": 1})[0].status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    code = subprocess.run([sys.executable, "-m", "edgegen.cli", "serve", str(bundles / "missing")],
                          capture_output=True, text=True)
    assert code.returncode == 2 and "no such bundle directory" in code.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_playground_in_headless_chromium(server):
    def page(query: str) -> dict:
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                              "--virtual-time-budget=15000", "--dump-dom", f"{server.url}/{query}"],
                             capture_output=True, text=True, timeout=120)
        status = re.search(r'<div id="status"([^>]*)>(.*?)</div>', out.stdout)
        assert status, out.stdout[-2000:] + out.stderr[-2000:]
        attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', status.group(1)))
        return {**attrs, "text": status.group(2)}

    first = page("?seed=41&label=3&roi=0,0,16,8")
    assert first["state"] == "done" and first["served-by"] == "computed" and first["size"] == "16x8"
    assert re.search(r"served by computed · [\d.]+ ms on the server", first["text"])
    again = page("?seed=41&label=3&roi=0,0,16,8")
    assert again["served-by"] == "lru"
    preview = page("?seed=41&label=3&quality=preview")
    assert preview["size"] == "32x32" and preview["state"] == "done"
    bad = page("?seed=41&label=3&roi=30,30,8,8")
    assert bad["state"] == "error" and "reaches outside" in bad["text"]
