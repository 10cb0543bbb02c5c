"""`edgegen serve`: the HTTP API, its request validation, 64 concurrent clients, and the playground page
in headless Chromium."""

import base64
import http.client
import io
import json
import logging
import re
import signal
import socket
import shutil
import struct
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import numpy as np
import onnx
import pytest
from PIL import Image

from edgegen.build import build
from edgegen.cli import main
from edgegen.runtime import Generator
from edgegen.runtime.server import BindError, Server
from runtime_models import glyph_like, unet_like, upscaler_like


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    onnx.save(glyph_like(), str(root / "glyph.onnx"))
    onnx.save(upscaler_like(), str(root / "up.onnx"))
    (root / "assets.yaml").write_text("grid: {seed: 7, label: '0..2'}\n")
    build(root / "glyph.onnx", "x86-onnxruntime", root / "glyph", split=["auto"], roi=True,
          preview_upscale="lanczos", precompute=str(root / "assets.yaml"))
    build(root / "up.onnx", "x86-onnxruntime", root / "up", roi=True)
    onnx.save(unet_like(), str(root / "unet.onnx"))
    build(root / "unet.onnx", "x86-onnxruntime", root / "unet")
    return root


@pytest.fixture(scope="module")
def unet_server(bundles):
    srv = Server(Generator.open(bundles / "unet")).start()
    yield srv
    srv.close()


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


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def call(srv, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None):
    """One request with exactly these headers (http.client adds no Content-Length of its own)."""
    url = urlparse(srv.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.putrequest(method, path)
    for name, value in (headers or {}).items():
        conn.putheader(name, value)
    conn.endheaders(body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def test_generate_png_and_json_with_cache_and_latency_headers(server, bundles):
    local = Generator.open(bundles / "glyph", cache_bytes=0)
    response, data = post(server, {"seed": 3, "label": 4})
    assert response.status == 200 and response.getheader("Content-Type") == "image/png"
    assert response.getheader("X-Edgegen-Served-By") == "computed"
    assert float(response.getheader("X-Edgegen-Latency-Ms")) > 0
    np.testing.assert_array_equal(png_pixels(data), local.generate(seed=3, label=4))
    response, data = post(server, {"seed": 3, "label": 4})
    assert response.getheader("X-Edgegen-Served-By") == "response-cache"
    response, data = post(server, {"seed": 7, "label": 1, "format": "json"})
    body = json.loads(data)
    assert body["served_by"] == "asset" and (body["width"], body["height"]) == (32, 32)
    np.testing.assert_array_equal(png_pixels(base64.b64decode(body["png_base64"])), local.generate(seed=7, label=1))
    _, data = post(server, {"seed": 3, "label": 4, "roi": [4, 8, 10, 6]})
    np.testing.assert_array_equal(png_pixels(data), local.generate(seed=3, label=4)[8:14, 4:14])
    _, data = post(server, {"seed": 3, "label": 4, "quality": "preview"})
    np.testing.assert_array_equal(png_pixels(data), local.generate(seed=3, label=4, quality="preview"))


def test_no_memory_cache_means_no_encoded_responses_either(bundles):
    """`--cache-mb 0`: the server kept 16 MiB of encoded responses anyway and answered repeats from them."""
    srv = Server(Generator.open(bundles / "glyph", cache_bytes=0, feature_cache_bytes=0, assets=False)).start()
    try:
        served = [post(srv, {"seed": 3, "label": 4})[0].getheader("X-Edgegen-Served-By") for _ in range(2)]
        assert served == ["computed", "computed"]
        assert json.loads(get(srv, "/v1/stats")[1])["encoded_cache"]["budget_bytes"] == 0
    finally:
        srv.close()


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
    ({"seed": 1, "label": 1, "image": [[1, 2, 3]]}, 400, "this model takes no image input"),
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
        assert response.status == 405 and response.getheader("Allow") == "POST"
        assert data == b"" if method == "HEAD" else "/v1/generate takes POST" in json.loads(data)["error"]
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
        # as a browser's data URL, as the base64 tool wraps it (76 columns), and URL-safe: the same image
        plain = base64.b64encode(buffer.getvalue()).decode()
        for text in ("data:image/png;base64," + plain, "\n".join(plain[i:i + 76] for i in range(0, len(plain), 76)),
                     base64.urlsafe_b64encode(buffer.getvalue()).decode()):
            response, other = post(up, {"image": text, "roi": [0, 0, 16, 16]})
            assert response.status == 200 and other == data
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
    assert again["served-by"] == "response-cache"
    preview = page("?seed=41&label=3&quality=preview")
    assert preview["size"] == "32x32" and preview["state"] == "done"
    bad = page("?seed=41&label=3&roi=30,30,8,8")
    assert bad["state"] == "error" and "reaches outside" in bad["text"]


def test_methods_paths_and_content_length_get_their_http_status(server):
    response, data = call(server, "GET", "/v1/generate")
    assert response.status == 405 and response.getheader("Allow") == "POST"
    assert "GET /v1/generate is not served; /v1/generate takes POST" in json.loads(data)["error"]
    for path in ("/v1/health", "/v1/stats"):
        response, data = call(server, "POST", path, {"Content-Length": "2"}, b"{}")
        assert response.status == 405 and response.getheader("Allow") == "GET"
        assert f"{path} takes GET" in json.loads(data)["error"]
    assert call(server, "POST", "/v1/nope", {"Content-Length": "2"}, b"{}")[0].status == 404
    assert call(server, "PUT", "/v1/nope", {"Content-Length": "2"}, b"{}")[0].status == 404
    for length in ("-5", "abc", "1e3"):
        response, data = call(server, "POST", "/v1/generate", {"Content-Length": length}, b"{}")
        assert response.status == 400
        assert f"the Content-Length header {length!r} is invalid" in json.loads(data)["error"]
    response, data = call(server, "POST", "/v1/generate", {}, None)
    assert response.status == 411 and "send a Content-Length header" in json.loads(data)["error"]
    url = urlparse(server.url)  # a request line that is not HTTP: JSON like every error, not http.server's HTML
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        head, _, body = sock.makefile("rb").read().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert "Bad request" in json.loads(body)["error"]


def test_a_body_the_server_does_not_read_is_never_taken_for_the_next_request(server):
    """A chunked POST got its 411 and then a 400 for its chunk; a GET carrying a POST in its body ran it."""
    url = urlparse(server.url)
    smuggled = b'POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 23\r\n\r\n{"seed": 1, "label": 2}'
    for request in (b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"17\r\n{\"seed\": 1, \"label\": 2}\r\n0\r\n\r\n",
                    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled):
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            sock.sendall(request)
            answers = sock.makefile("rb").read()  # the server closes the connection after one answer
        assert answers.count(b"HTTP/1.1 ") == 1, answers


def test_messages_name_the_field_not_python_internals(server, bundles):
    response, data = post(server, None, raw=b'{"seed": ' + b"7" * 5000 + b', "label": 1}')
    error = json.loads(data)["error"]
    assert response.status == 400 and error.startswith("seed: a 5000-digit number is out of range")
    assert "sys." not in error
    response, data = post(server, {"roi": [0, 0, int("9" * 200), 1], "seed": 1, "label": 1})
    assert response.status == 400 and json.loads(data)["error"].startswith("roi: a 200-digit number")
    response, data = post(server, {"seed": 1, "label": 1, "image": "aGVsbG8="})
    assert response.status == 400 and json.loads(data)["error"] == (
        "image: this model takes no image input (its inputs: latent (latent), label (label)); leave image out")
    up = Server(Generator.open(bundles / "up")).start()
    try:
        for image, message in (("aGVsbG8=", "image: its 5 decoded bytes are not a PNG, JPEG or other image file"),
                               ("", "image: its 0 decoded bytes are not"),
                               (png_base64(Image.effect_noise((64, 64), 64))[:400], "image is not a readable PNG/JPEG"),
                               ([[1, 2, 3]], "image must be a base64-encoded PNG or JPEG file")):
            response, data = post(up, {"image": image})
            error = json.loads(data)["error"]
            assert response.status == 400 and error.startswith(message) and "0x" not in error and "<" not in error
    finally:
        up.close()


def test_a_missing_image_is_told_how_to_send_one_over_http(unet_server):
    """The advice was the SDK's "pass image= an array", which the HTTP API refuses."""
    for body in ({}, {"image": None}):
        response, data = post(unet_server, body)
        error = json.loads(data)["error"]
        assert response.status == 400 and 'an "image" field (a base64 PNG or JPEG) over HTTP' in error


def test_a_decompression_bomb_is_413_not_500(unet_server):
    bomb = png_base64(Image.new("1", (20000, 20000)))
    assert len(bomb) < 100_000
    response, data = post(unet_server, {"image": bomb})
    assert response.status == 413 and "this server takes at most 4194304 pixels" in json.loads(data)["error"]


def test_a_float_tiff_is_400_naming_the_field(unet_server, caplog):
    """It was a 500 "internal error" with a traceback in the log: a client's picture is no fault of the server."""
    caplog.set_level(logging.WARNING)
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 3, 24 * 20, dtype=np.float32).reshape(20, 24)).save(buffer, format="TIFF")
    response, data = post(unet_server, {"image": base64.b64encode(buffer.getvalue()).decode()})
    assert response.status == 400 and json.loads(data)["error"].startswith("image: a 32-bit float image")
    assert "internal error" not in caplog.text


def test_an_answer_after_which_the_connection_closes_says_so(server):
    """RFC 9112 9.6: without `Connection: close` a keep-alive client sent its next request on the closed
    connection, and that valid request failed."""
    url = urlparse(server.url)
    for method, path, headers, body in (("GET", "/nope", {}, None),
                                        ("PUT", "/v1/generate", {"Content-Length": "2"}, b"{}"),
                                        ("POST", "/v1/generate", {"Content-Length": "x"}, b"{}")):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.putrequest(method, path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        response.read()
        assert response.status >= 400 and response.getheader("Connection") == "close", (method, path)
        conn.request("GET", "/v1/health")  # http.client reconnects, as it was told the connection closes
        assert conn.getresponse().status == 200
        conn.close()


def test_an_image_size_the_network_cannot_take_is_400(unet_server, bundles):
    for width, height in ((33, 31), (1, 1)):
        response, data = post(unet_server, {"image": png_base64(Image.new("RGB", (width, height)))})
        error = json.loads(data)["error"]
        assert response.status == 400 and f"cannot run at input shape 'image' 3x{height}x{width}" in error
    pixels = (np.arange(16 * 24 * 3).reshape(16, 24, 3) % 251).astype(np.uint8)
    response, data = post(unet_server, {"image": png_base64(Image.fromarray(pixels))})
    assert response.status == 200
    np.testing.assert_array_equal(png_pixels(data), Generator.open(bundles / "unet").generate(image=pixels))


def test_faults_of_the_bundle_or_backend_are_500_with_one_line(bundles, monkeypatch):
    srv = Server(Generator.open(bundles / "up", cache_bytes=0)).start()
    image = png_base64(Image.new("RGB", (32, 32)))
    try:
        parts, real = srv.generator.parts, srv.generator.parts.run
        monkeypatch.setattr(parts, "run", lambda name, feeds: {k: v[:0] for k, v in real(name, feeds).items()})
        response, data = post(srv, {"image": image})
        error = json.loads(data)["error"]
        assert response.status == 500 and "backend returned 0 image(s) for 1 request(s)" in error  # a BundleError

        def crash(name, feeds):
            raise RuntimeError("a fault\nwith a second line")
        monkeypatch.setattr(parts, "run", crash)
        response, data = post(srv, {"image": image})
        assert response.status == 500 and json.loads(data) == {"error": "internal error; see the server log"}
    finally:
        srv.close()


def test_a_16_bit_png_is_scaled_not_clipped(bundles):
    grey = (np.arange(12 * 16).reshape(12, 16) * 341).astype(np.uint16)  # 0..65131
    eight = np.repeat(np.round(grey / 257).astype(np.uint8)[:, :, None], 3, axis=2)
    image = Image.fromarray(grey)
    assert image.mode == "I;16"
    up = Server(Generator.open(bundles / "up")).start()
    try:
        response, data = post(up, {"image": png_base64(image)})
    finally:
        up.close()
    assert response.status == 200
    np.testing.assert_array_equal(png_pixels(data), Generator.open(bundles / "up").generate(image=eight))


def test_a_cut_short_pack_still_serves_by_computing(bundles, tmp_path, caplog):
    caplog.set_level(logging.WARNING)  # other test modules quiet the root logger when they are collected
    copy = tmp_path / "glyph"
    shutil.copytree(bundles / "glyph", copy)
    size = (copy / "assets/pack.bin").stat().st_size
    (copy / "assets/pack.bin").write_bytes(b"\0")
    gen = Generator.open(copy, cache_bytes=0)
    assert f"pack.bin is cut short: expected {size} bytes, found 1" in caplog.text
    got = gen.render([{"seed": 7, "label": 1}])[0]
    assert got.served_by == "computed"
    np.testing.assert_array_equal(got.pixels, Generator.open(bundles / "glyph").generate(seed=7, label=1))


@pytest.mark.parametrize("cut", ["assets/pack.bin", "assets/table.bin"])
def test_asset_files_cut_short_in_place_while_open_are_computed_not_a_sigbus(bundles, tmp_path, cut):
    """A copy over a served bundle truncates its mapped files in place: the next read past their new end was a
    SIGBUS that killed the server, with nothing logged. Run in a child process, so that a SIGBUS fails this test
    instead of ending the test run."""
    copy = tmp_path / "glyph"
    shutil.copytree(bundles / "glyph", copy)
    script = f"""
import os, numpy as np
from edgegen.runtime import Generator
gen = Generator.open({str(copy)!r}, cache_bytes=0)
assert gen.render([{{"seed": 7, "label": 1}}])[0].served_by == "asset"
os.truncate({str(copy / cut)!r}, 1)
got = gen.render([{{"seed": 7, "label": 1}}])[0]
expected = Generator.open({str(bundles / "glyph")!r}, cache_bytes=0, assets=False).generate(seed=7, label=1)
assert got.served_by == "computed" and np.array_equal(got.pixels, expected), got.served_by
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])
    assert f"{cut.split('/')[1]} was cut short while the bundle was open" in done.stderr


def test_bind_problems_are_bind_errors(server, bundles):
    gen = Generator.open(bundles / "glyph")
    port = urlparse(server.url).port
    with pytest.raises(BindError, match=f"cannot listen on 127.0.0.1:{port} .*another process is listening there"):
        Server(gen, port=port)
    with pytest.raises(BindError, match="port 99999 is out of range; use 0..65535"):
        Server(gen, port=99999)
    with pytest.raises(BindError, match="host '999.1.1.1' is not an address this machine can resolve"):
        Server(gen, host="999.1.1.1")


@pytest.mark.parametrize("flag, value, message", [
    ("--port", "99999", "argument --port: 99999 is out of range; use 0..65535"),
    ("--port", "-1", "argument --port: -1 is out of range; use 0..65535"),
    ("--max-batch", "0", "argument --max-batch: 0 is out of range; use >= 1"),
    ("--max-delay-us", "-100", "argument --max-delay-us: -100 is out of range; use 0..60000000"),
    ("--max-delay-us", "100000000000000000", "out of range; use 0..60000000"),  # the batcher's wait overflowed
    ("--threads", "0", "argument --threads: 0 is out of range; use >= 1"),
    ("--threads", "two", "argument --threads: 'two' is not an integer; use >= 1"),
    ("--cache-mb", "-1", "argument --cache-mb: '-1' is not a budget; give MiB >= 0"),
    ("--disk-cache-mb", "-5", "argument --disk-cache-mb: '-5' is not a budget; give MiB >= 0"),
    ("--disk-cache-mb", "nan", "argument --disk-cache-mb: 'nan' is not a budget"),
])
def test_serve_refuses_bad_options_as_usage_errors(bundles, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", str(bundles / "glyph"), f"{flag}={value}"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_serve_verb_on_a_taken_port_is_a_usage_error(server, bundles):
    port = str(urlparse(server.url).port)
    for args, message in ((["--port", port], f"cannot listen on 127.0.0.1:{port} (Address already in use)"),
                          (["--host", "999.1.1.1"], "host '999.1.1.1' is not an address")):
        done = subprocess.run([sys.executable, "-m", "edgegen.cli", "serve", str(bundles / "glyph"), *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_a_stalled_upload_is_closed_after_the_read_timeout_and_serving_goes_on(bundles):
    import socket
    import time

    srv = Server(Generator.open(bundles / "glyph"), read_timeout_s=0.5).start()
    try:
        host, port = srv.httpd.server_address[:2]
        stalled = socket.create_connection((host, port))
        stalled.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"seed\"")
        stalled.settimeout(10)
        start = time.monotonic()
        assert stalled.recv(1024) == b""  # closed by the server, nothing answered for half a body
        assert time.monotonic() - start < 5
        client = http.client.HTTPConnection(host, port, timeout=10)
        client.request("GET", "/v1/health")
        assert client.getresponse().status == 200
    finally:
        srv.close()


def test_repeats_answered_from_encoded_responses_are_counted_as_such(bundles):
    """They were counted and labelled as LRU hits, though the LRU was never asked: served.lru != lru.hits."""
    srv = Server(Generator.open(bundles / "glyph", assets=False)).start()
    try:
        served = [post(srv, {"seed": 5, "label": 5})[0].getheader("X-Edgegen-Served-By") for _ in range(4)]
        stats = json.loads(get(srv, "/v1/stats")[1])
    finally:
        srv.close()
    assert served == ["computed"] + ["response-cache"] * 3
    generator = stats["generator"]
    assert generator["served"] == {"computed": 1, "response-cache": 3}
    assert generator["lru"]["hits"] == 0 and stats["encoded_cache"]["hits"] == 3


def test_head_is_answered_wherever_get_is(server):
    """HEAD /v1/health answered 405, Allow: GET (RFC 9110 9.3.2: HEAD goes wherever GET does)."""
    url = urlparse(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    for path in ("/v1/health", "/v1/stats", "/", "/index.html"):
        conn.request("GET", path)
        got = conn.getresponse()
        body = got.read()
        conn.request("HEAD", path)  # on the same keep-alive connection
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b"" and head.getheader("Content-Type") == got.getheader(
            "Content-Type")
        if path != "/v1/stats":  # the stats change from one request to the next
            assert head.getheader("Content-Length") == got.getheader("Content-Length") == str(len(body))
    conn.close()
    assert call(server, "HEAD", "/nope")[0].status == 404


def test_a_request_line_without_a_version_gets_a_json_400(server, caplog):
    """HTTP/0.9's `GET /path`: no answer at all, and an AttributeError logged twice."""
    caplog.set_level(logging.WARNING)
    url = urlparse(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"GET /v1/health\r\n")  # an HTTP/0.9 client sends no headers and waits
        head, _, body = sock.makefile("rb").read().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert "GET /v1/health HTTP/1.1" in json.loads(body)["error"]
    assert "internal error" not in caplog.text


def test_transfer_encoding_and_short_bodies_are_refused_and_the_connection_closed(server):
    """A POST with Transfer-Encoding and Content-Length was framed by Content-Length and its chunk ran as a second
    request (request smuggling); a body cut short of its Content-Length was served as if complete."""
    url = urlparse(server.url)
    inner = b"GET /v1/stats HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    for head, body, status, message in (
            (b"Transfer-Encoding: chunked\r\nContent-Length: 4", chunked, 411, "Transfer-Encoding is not supported"),
            (b"Content-Length: 4\r\nTransfer-Encoding: chunked", chunked, 411, "Transfer-Encoding is not supported"),
            (b"Content-Length: 2\r\nContent-Length: 200", b"{}" + inner, 400, "'2, 200' is invalid"),
            (b"Content-Length: 500", b'{"seed": 1, "label": 1}', 400, "the body ended after 23 of its 500 bytes")):
        with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n" + body)
            sock.shutdown(socket.SHUT_WR)
            answers = sock.makefile("rb").read()  # to the end: the server closes the connection
        assert answers.count(b"HTTP/1.1 ") == 1 and answers.startswith(b"HTTP/1.1 %d " % status), answers
        assert message in json.loads(answers.partition(b"\r\n\r\n")[2])["error"]


def test_any_other_method_is_405_with_allow_and_a_huge_field_is_not_echoed_whole(server):
    """TRACE, CONNECT, PROPFIND got http.server's 501 without Allow; a 2 MB field came back in a 2 MB error."""
    for method in ("TRACE", "CONNECT", "PROPFIND", "get"):
        response, data = call(server, method, "/v1/generate")
        assert response.status == 405 and response.getheader("Allow") == "POST", method
    response, data = post(server, {"seed": "x" * 2_000_000, "label": 1})
    assert response.status == 400 and len(data) < 2000 and "characters in all)" in json.loads(data)["error"]


def test_a_content_length_of_thousands_of_digits_is_413(server):
    """Python's int() refuses over 4300 digits: the connection was dropped unanswered, with a traceback."""
    response, data = call(server, "POST", "/v1/generate", {"Content-Length": "9" * 5000}, b"{}")
    assert response.status == 413 and "5000-digit" in json.loads(data)["error"]
    response, data = call(server, "POST", "/v1/generate", {"Content-Length": "0" * 5000 + "2"}, b"{}")
    assert response.status == 400 and "needs a seed" in json.loads(data)["error"]  # leading zeros: 2 bytes, read


def test_a_client_gone_before_its_answer_is_one_log_line_not_a_fault(server, caplog, capfd):
    """A client reset before its answer was logged as an internal error, with two tracebacks."""
    caplog.set_level(logging.INFO, logger="edgegen.runtime.server")
    url = urlparse(server.url)
    for i in range(4):
        sock = socket.create_connection((url.hostname, url.port), timeout=30)
        body = json.dumps({"seed": 5000 + i, "label": i}).encode()
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, before the answer
    deadline = time.monotonic() + 20
    while caplog.text.count("closed the connection before its answer") < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert caplog.text.count("closed the connection before its answer") == 4, caplog.text
    assert "internal error" not in caplog.text and "Traceback" not in capfd.readouterr().err
    assert get(server, "/v1/health")[0].status == 200


def test_closing_waits_no_longer_than_its_grace_for_a_running_backend_call(bundles, monkeypatch):
    """close() joined the batcher's worker without a bound: a SIGTERM waited 19.5 s for a long request."""
    srv = Server(Generator.open(bundles / "glyph", cache_bytes=0, assets=False)).start()
    real = srv.generator.parts.run
    started = threading.Event()

    def slow(name, feeds):
        started.set()
        time.sleep(8)
        return real(name, feeds)

    monkeypatch.setattr(srv.generator.parts, "run", slow)
    client = threading.Thread(target=lambda: post(srv, {"seed": 9, "label": 1}), daemon=True)
    client.start()
    assert started.wait(30)
    begin = time.monotonic()
    srv.close(grace_s=1.0)
    assert time.monotonic() - begin < 4


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_server_answers_the_requests_it_has_taken(bundles, stop, code):
    """Ctrl-C or SIGTERM with requests waiting in the batcher: the server exited without answering them
    (its handler threads died with it); an idle keep-alive connection must not hold the exit up."""
    proc = subprocess.Popen([sys.executable, "-m", "edgegen.cli", "serve", str(bundles / "glyph"), "--port", "0",
                             "--cache-mb", "0", "--max-delay-us", "5000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        srv = type("Remote", (), {"url": re.search(r"http://[\d.:]+", proc.stdout.readline()).group(0)})()
        idle = http.client.HTTPConnection(*urlparse(srv.url).netloc.split(":"), timeout=30)
        idle.request("GET", "/v1/health")
        assert idle.getresponse().read()  # the connection stays open, waiting for a next request
        results = {}
        clients = [threading.Thread(target=lambda i=i: results.update({i: post(srv, {"seed": 40 + i, "label": 1})}))
                   for i in range(6)]  # fewer than --max-batch, which would run them at once
        for client in clients:
            client.start()
        deadline = time.monotonic() + 60
        while json.loads(get(srv, "/v1/stats")[1])["batcher"]["pending"] < 6:  # all wait in the batcher
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(stop)
        start = time.monotonic()
        proc.wait(timeout=30)
        assert time.monotonic() - start < 3  # not the 5 s the batch would wait, nor the grace for idle connections
        for client in clients:
            client.join(timeout=30)
        assert proc.returncode == code
        assert sorted(results) == list(range(6))
        assert all(response.status == 200 and png_pixels(data).shape == (32, 32, 3)
                   for response, data in results.values())
        assert idle.sock.recv(1) == b""  # closed by the server
    finally:
        proc.kill()
        proc.communicate()


def test_listening_beyond_this_machine_warns_that_there_is_no_authentication(bundles, caplog):
    caplog.set_level(logging.WARNING)
    gen = Generator.open(bundles / "glyph")
    Server(gen).close()
    assert "authentication" not in caplog.text
    Server(gen, host="0.0.0.0").close()
    assert re.search(r"listening on 0\.0\.0\.0:\d+, every interface: this API has no authentication", caplog.text)
