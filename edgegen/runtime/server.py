"""`edgegen serve`: a small HTTP API on one Generator (standard library only).

    POST /v1/generate   JSON {seed, label, size, quality, roi: [x, y, w, h], output, image: base64 PNG/JPEG,
                        format: "png" | "json"; a model's other image inputs by name, base64 PNG/JPEG too} -> PNG (headers X-Edgegen-Served-By, X-Edgegen-Latency-Ms)
                        or JSON {width, height, served_by, latency_ms, key, png_base64}; served by: computed, lru,
                        asset, disk, or response-cache (a repeat answered from the server's encoded responses)
    GET  /v1/health     the bundle, its inputs and what it offers (sizes, preview, ROI)
    GET  /v1/stats      requests, latencies, caches, batcher
    GET  /              the playground page
    (HEAD wherever GET: the same headers, no body)

Requests are checked before they queue (body size, image size, fields, seed range, labels, ROI,
sizes); misses go through a micro-batcher. Errors are JSON {"error": message} with 400 (bad
request, including an input the network cannot run at), 404 (no such path), 405 (a method the path
does not take, with Allow), 411 (no Content-Length, or a Transfer-Encoding), 413 (too large), 501 (an
uploaded image where Pillow, which decodes it, is not installed: `pip install pillow`), 503 (overloaded) or
500 (a fault of the bundle or backend, logged; its message is short, never a traceback).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import io
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import numpy as np

from ..errors import EdgegenError, RequestError, first_line
from ..image_files import eight_bit
from .batcher import MicroBatcher, OverloadedError
from .cache import LRUCache
from .generator import Generator
from .images import PillowMissing, pillow_image
from .png import encode_png
from .requests import FIELDS

log = logging.getLogger(__name__)

PLAYGROUND = Path(__file__).with_name("playground.html")
MAX_BODY_BYTES = 8 << 20
MAX_IMAGE_PIXELS = 2048 * 2048
ENCODED_CACHE_BYTES = 16 << 20
LATENCY_WINDOW = 4096
DRAIN_FACTOR = 4
READ_TIMEOUT_S = 30.0
CLOSE_GRACE_S = 5.0  # how long close() waits for the requests it has taken to be answered
MAX_DIGITS = 100  # longer integer literals take no field (and Python refuses to convert past 4300 digits)
UPLOADS = "decoding uploaded images"  # what Pillow does for the server
ROUTES = {"/v1/generate": "POST", "/v1/health": "GET", "/v1/stats": "GET", "/": "GET", "/index.html": "GET"}


class TooLarge(RequestError):
    """A request body or image over the server's limits."""


class BindError(EdgegenError):
    """The address to serve on cannot be listened on (port taken or out of range, unknown host)."""


class Server:
    """A Generator behind HTTP; `start()` runs it in a background thread, `close()` stops it."""

    def __init__(self, generator: Generator, host: str = "127.0.0.1", port: int = 0, max_batch: int = 8,
                 max_delay_us: int = 2000, max_body_bytes: int = MAX_BODY_BYTES,
                 max_image_pixels: int = MAX_IMAGE_PIXELS, read_timeout_s: float = READ_TIMEOUT_S):
        self.generator = generator
        # a connection that sends nothing for read_timeout_s (a stalled upload, an idle keep-alive) is closed
        handler = type("Handler", (_Handler,), {"app": self, "timeout": read_timeout_s})
        self.httpd = _bind(host, port, handler)
        _warn_if_reachable(*self.httpd.server_address[:2])
        self.batcher = MicroBatcher(generator, max_batch, max_delay_us)
        self.max_body_bytes = max_body_bytes
        self.max_image_pixels = max_image_pixels
        # encoded responses of repeated requests, within the generator's LRU budget (0, off: none)
        self.encoded = LRUCache(min(ENCODED_CACHE_BYTES, generator.cache.stats.budget_bytes),
                                size=lambda entry: len(entry[0]))
        self.counts: Counter = Counter()
        self.latencies: deque = deque(maxlen=LATENCY_WINDOW)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if any(s.role == "image" for s in generator.inputs):
            try:
                pillow_image(UPLOADS)
            except PillowMissing as exc:  # said once here; each such request is answered 501 saying it again
                log.warning("%s; until then requests with an image are answered 501", exc)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="edgegen-http", daemon=True)
        self._thread.start()
        return self

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Stop taking connections, close the idle ones, compute what waits in the batcher and give the
        handlers up to grace_s to answer the requests they have taken."""
        if self._thread is not None:
            self.httpd.shutdown()  # the accept loop ends (serve() runs its own, which the interrupt ended)
        self.httpd.stop()
        deadline = time.monotonic() + grace_s  # one grace for both: a long backend call does not extend it
        self.batcher.close(grace_s)
        self.httpd.wait(max(0.0, deadline - time.monotonic()))

    # -- endpoints ------------------------------------------------------------------------------
    def generate(self, body: bytes, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        start = time.perf_counter()
        try:
            fields = json.loads(body or b"{}", parse_int=_int_literal, object_pairs_hook=_object)
        except ValueError as exc:
            raise RequestError(f"the body is not JSON ({exc}); send e.g. {{\"seed\": 3, \"label\": 7}}") from None
        except RecursionError:
            raise RequestError("the body nests JSON too deeply; a request is a flat object of fields") from None
        if not isinstance(fields, dict):
            raise RequestError("the body must be a JSON object of request fields")
        fmt = fields.pop("format", None) or query.get("format", ["png"])[0]
        if fmt not in ("png", "json"):
            raise RequestError(f"format {fmt!r}: use png or json")
        images = [s.name for s in self.generator.inputs if s.role == "image"]
        arrays = [s.name for s in self.generator.inputs if s.name in fields and s.name not in (*FIELDS, *images)]
        if arrays:
            raise RequestError(f"field(s) {arrays}: arrays are not accepted over HTTP; send seed, label or image")
        if fields.get("image") is not None and not images:
            raise RequestError("image: this model takes no image input (its inputs: "
                               f"{', '.join(f'{s.name} ({s.role})' for s in self.generator.inputs)}); "
                               "leave image out")
        for name in dict.fromkeys(("image", *images)):  # other image inputs (a mask) come as image files by name
            if fields.get(name) is not None:
                if not isinstance(fields[name], str):
                    raise RequestError(f"{name} must be a base64-encoded PNG or JPEG file (a JSON string)")
                fields[name] = _decode_image(fields[name], self.max_image_pixels, name)
        if fields.get("roi") is not None and not isinstance(fields["roi"], list):
            raise RequestError("roi must be a list [x, y, width, height]")
        job = self.generator.prepare(fields)
        key = job.key
        encoded = self.encoded.get(f"{key}:{fmt}")
        if encoded is not None:  # the generator's caches are not asked: counted under the server's own name
            served_by = "response-cache"
            self.generator.record(served_by)
            width, height = encoded[1]
            payload = encoded[0]
        else:
            result = self.batcher.generate(job)
            served_by = result.served_by
            height, width = result.pixels.shape[:2]
            png = encode_png(result.pixels)
            payload = png if fmt == "png" else json.dumps(
                {"width": width, "height": height, "key": key,
                 "png_base64": base64.b64encode(png).decode()}).encode()
            self.encoded.put(f"{key}:{fmt}", (payload, (width, height)))
        latency = (time.perf_counter() - start) * 1e3
        with self._lock:
            self.latencies.append(latency)
        headers = {"X-Edgegen-Served-By": served_by, "X-Edgegen-Latency-Ms": f"{latency:.3f}",
                   "X-Edgegen-Key": key, "X-Edgegen-Size": f"{width}x{height}"}
        if fmt == "json":
            data = json.loads(payload)
            data.update(served_by=served_by, latency_ms=round(latency, 3))
            return 200, {**headers, "Content-Type": "application/json"}, json.dumps(data).encode()
        return 200, {**headers, "Content-Type": "image/png"}, payload

    def health(self) -> dict[str, Any]:
        gen = self.generator
        manifest = gen.manifest
        return {"status": "ok", "bundle": gen.path.name, "model": manifest["model"]["name"],
                "target": manifest["target"]["name"], "backend": manifest["backend"],
                "precision": manifest["precision"],
                "inputs": [{"name": s.name, "role": s.role, "num_classes": s.num_classes,
                            "shape": s.default_shape} for s in gen.inputs],
                "image_outputs": gen.image_outputs, "sizes": gen.tiers.offered(),
                "preview": bool(gen.tiers.preview), "roi": sorted(gen.roi),
                "assets": len(gen.assets) if gen.assets else 0}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            times = sorted(self.latencies)
            counts = dict(self.counts)
        pct = (lambda q: round(times[min(len(times) - 1, int(q * len(times)))], 3)) if times else (lambda q: None)
        return {"http": {"responses": counts, "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "window": len(times)}},
                "generator": self.generator.stats(), "batcher": self.batcher.stats(),
                "encoded_cache": self.encoded.stats.to_json()}


class _HTTPServer(ThreadingHTTPServer):
    """Keeps its open connections, and which of them wait for a request, so that stop() closes those and
    wait() waits for the others' answers, for a bounded time (server_close() does not join handler threads;
    they are daemons, so that one stuck past the wait does not hold the process)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # many clients connecting at once must not be reset by a short listen backlog

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        self.connections: dict[socket.socket, bool] = {}  # open connection -> idle (waiting for a request)
        self.changed = threading.Condition()
        self.stopping = False
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self.changed:
            self.connections[request] = False  # taken: its request is on its way
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        with self.changed:
            self.connections.pop(request, None)
            self.changed.notify_all()

    def set_idle(self, connection: socket.socket, idle: bool) -> None:
        """Mark a connection as waiting for its next request or not (once stopping, it waits for none)."""
        with self.changed:
            self.connections[connection] = idle
            if idle and self.stopping:
                _end_reading(connection)

    def stop(self) -> None:
        """Take no more connections; the open ones close once they have answered what they were sent (those
        waiting for a request read their end)."""
        self.server_close()
        with self.changed:
            self.stopping = True
            for connection, idle in self.connections.items():
                if idle:
                    _end_reading(connection)

    def handle_error(self, request: socket.socket, client_address: Any) -> None:
        """A client that went away before its answer is no fault of the server: one line, not a traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.info("client %s closed the connection before its answer", client_address[0])
        else:
            super().handle_error(request, client_address)

    def wait(self, grace_s: float) -> None:
        """Wait up to grace_s for every connection to be answered and closed."""
        with self.changed:
            if not self.changed.wait_for(lambda: not self.connections, grace_s):
                log.warning("stopping with %d connection(s) still busy after %g s", len(self.connections), grace_s)


def _end_reading(connection: socket.socket) -> None:
    """Shut a connection for reading: what it was sent can still be read, then its end (a blocked read wakes)."""
    with contextlib.suppress(OSError):  # closed meanwhile
        connection.shutdown(socket.SHUT_RD)


class _Handler(BaseHTTPRequestHandler):
    app: Server
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "edgegen"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def setup(self) -> None:
        super().setup()
        # answers go out in one write, without waiting for the client's delayed ACK (Nagle)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        """Handle the next request; until it begins, the connection is marked idle, so that stopping the server
        ends the wait."""
        self.server.set_idle(self.connection, True)
        try:
            self.rfile.peek(1)  # the request's first byte, or the end (the client's, or the server's)
        except TimeoutError:  # as http.server: an idle connection is closed after its timeout
            self.close_connection = True
            return
        finally:
            self.server.set_idle(self.connection, False)
        super().handle_one_request()  # at the end, it reads nothing and closes the connection

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """One answer; to HEAD, the same headers without the body."""
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.server.stopping or self.close_connection:  # RFC 9112 9.6: a client must not reuse it
            self.send_header("Connection", "close")  # this connection takes no more requests
        self._headers_buffer.append(b"\r\n")
        try:
            self.wfile.write(b"".join(self._headers_buffer) + (b"" if self.command == "HEAD" else body))
        except ConnectionError:  # counted, so that the responses add up to what the generator served
            with self.app._lock:
                self.app.counts["client_gone"] += 1
            raise
        self._headers_buffer = []
        with self.app._lock:
            self.app.counts[str(status)] += 1

    def _json(self, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, {"Content-Type": "application/json", **(extra or {})}, json.dumps(data).encode())

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a request line that is not HTTP, an over-long header) as JSON like
        every other error, not its HTML page."""
        self.close_connection = True
        self.request_version = self.protocol_version  # an unparsed request line reads as HTTP/0.9: no headers
        short, long = self.responses.get(code, ("", ""))
        self._json(code, {"error": f"{message or short}: {explain or long}".rstrip(": ")})

    def parse_request(self) -> bool:
        """http.server's parsing, less HTTP/0.9 (a request line without a version), whose answer would have no
        status line or headers: refused before headers are read, as an HTTP/0.9 client sends none."""
        if len(self.raw_requestline.split()) == 2:
            self.command, self.requestline = None, str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")  # for the log
            self.send_error(400, "Bad request version", "send the HTTP version at the end of the request line, "
                                                        "e.g. GET /v1/health HTTP/1.1 (HTTP/0.9 is not served)")
            return False
        return super().parse_request()

    def _guard(self, action: Callable[[], None]) -> None:
        try:
            action()
        except ConnectionError:  # the client went away before its answer: nothing to answer, no fault
            raise
        except TooLarge as exc:
            self._json(413, {"error": _short(str(exc))})
        except OverloadedError as exc:
            self._json(503, {"error": str(exc)}, {"Retry-After": "1"})
        except PillowMissing as exc:  # the request is well formed; this server cannot take its image
            self._json(501, {"error": str(exc)})
        except RequestError as exc:
            self._json(400, {"error": _short(str(exc))})
        except EdgegenError as exc:  # the bundle or its backend failed, not the request: a fault, stated briefly
            log.error("serving %s: %s", self.path, exc)
            self._json(500, {"error": first_line(exc)})
        except Exception:  # a fault in edgegen: log it, answer without details
            log.exception("internal error serving %s", self.path)
            self._json(500, {"error": "internal error; see the server log"})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlparse(self.path).path
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # a body is not read: it must not be taken for the next request
        if ROUTES.get(path) != "GET":
            self._not_served(path)
        elif path == "/v1/health":
            self._guard(lambda: self._json(200, self.app.health()))
        elif path == "/v1/stats":
            self._guard(lambda: self._json(200, self.app.stats()))
        else:
            self._send(200, {"Content-Type": "text/html; charset=utf-8"}, PLAYGROUND.read_bytes())

    def _not_served(self, path: str) -> None:
        """404 for a path that does not exist, 405 (with Allow) for a method the path does not take."""
        self.close_connection = True  # a body the request may carry is not read
        allowed = ROUTES.get(path)
        if allowed is None:
            self._json(404, {"error": f"no such path {path}; see / for the playground, GET /v1/health, "
                                      "GET /v1/stats, POST /v1/generate"})
        else:
            self._json(405, {"error": f"{self.command} {path} is not served; {path} takes {allowed}"},
                       {"Allow": allowed})

    def _method_not_allowed(self) -> None:
        self._not_served(urlparse(self.path).path)

    def __getattr__(self, name: str) -> Any:
        """Any other method (TRACE, CONNECT, PROPFIND, ...): 405 with Allow, as PUT gets, not http.server's 501."""
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _method_not_allowed  # noqa: N815
    do_HEAD = do_GET  # noqa: N815 - RFC 9110 9.3.2: GET's answer, which _send gives without its body

    def do_POST(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path != "/v1/generate":
            self._not_served(url.path)
            return
        body = self._body()
        if body is not None:
            self._guard(lambda: self._send(*self.app.generate(body, parse_qs(url.query))))

    def _body(self) -> bytes | None:
        """The request body, framed by its one Content-Length; None when it is refused (answered, and the
        connection closed: where the body ends is unknown, or it was not read, and must not be taken for the
        next request)."""
        lengths = self.headers.get_all("Content-Length") or []
        length = ", ".join(lengths)  # several are invalid: another server could frame the body by any of them
        if not lengths or "Transfer-Encoding" in self.headers:  # RFC 9112 6.3: it overrides Content-Length
            status, error = 411, "send a Content-Length header with the JSON body; Transfer-Encoding is not supported"
        elif not (length.isascii() and length.isdigit()):
            status, error = 400, (f"the Content-Length header {length[:40]!r} is invalid; it must be the body's size "
                                  "in bytes (one integer >= 0)")
        elif (size := _content_length(length)) > self.app.max_body_bytes:
            if size <= DRAIN_FACTOR * self.app.max_body_bytes:  # read it away so the client sees the answer
                left = size
                while left > 0:
                    left -= len(self.rfile.read(min(1 << 16, left))) or left
            shown = length.lstrip("0") if size < 10 ** 20 else f"a {len(length.lstrip('0'))}-digit number of"
            status, error = 413, f"the body is {shown} bytes; this server takes at most {self.app.max_body_bytes}"
        else:
            body = self.rfile.read(size)
            if len(body) == size:
                return body
            status, error = 400, f"the body ended after {len(body)} of its {length} bytes; send the whole body"
        self.close_connection = True
        self._json(status, {"error": error})
        return None


def _short(message: str, most: int = 1000) -> str:
    """An error message as answered: one that quotes a huge field is cut (the answer is not the size of the
    refused request)."""
    return message if len(message) <= most else f"{message[:most]}... ({len(message)} characters in all)"


def _content_length(digits: str) -> int:
    """A Content-Length's value; any beyond 10**20 reads as 10**20 (more than any server takes, and Python refuses
    int() of over 4300 digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 20 else 10 ** 20


def _bind(host: str, port: int, handler: type) -> _HTTPServer:
    """The listening HTTP server; BindError saying why an address cannot be listened on."""
    if not 0 <= port <= 65535:
        raise BindError(f"port {port} is out of range; use 0..65535 (0: any free port)")
    try:
        return _HTTPServer((host, port), handler)
    except socket.gaierror as exc:
        raise BindError(f"host {host!r} is not an address this machine can resolve ({exc.strerror}); use an IP "
                        "address such as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    except OSError as exc:
        hint = {errno.EADDRINUSE: "another process is listening there; stop it or choose another port",
                errno.EACCES: "ports below 1024 need privileges; choose a port from 1024 up",
                errno.EADDRNOTAVAIL: "the address is not one of this machine's; use 127.0.0.1, 0.0.0.0 or one of "
                                     "its own addresses"}.get(exc.errno, "choose another host or port")
        raise BindError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); {hint}") from None


def _warn_if_reachable(address: str, port: int) -> None:
    """A warning when the server listens beyond this machine, as the API has no authentication."""
    ip = ipaddress.ip_address(address)
    if not ip.is_loopback:
        log.warning("listening on %s:%d, %s: this API has no authentication and other machines can reach it; "
                    "listen on 127.0.0.1 (the default) unless that is meant, or put an authenticating proxy in front",
                    address, port, "every interface" if ip.is_unspecified else "an address of this machine's network")


class _LongNumber:
    """An integer literal of more than MAX_DIGITS digits, kept as its length, never converted."""

    def __init__(self, digits: int):
        self.digits = digits


def _int_literal(text: str) -> int | _LongNumber:
    return int(text) if len(text) <= MAX_DIGITS else _LongNumber(len(text.lstrip("-")))


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of the body; RequestError naming a field that holds an integer too long for any field."""
    for name, value in pairs:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, _LongNumber):
                raise RequestError(f"{name}: a {item.digits}-digit number is out of range for every field (a seed is "
                                   f"0..{2 ** 63 - 1}, labels and ROI coordinates are small)")
    return dict(pairs)


def _decode_image(text: str, max_pixels: int, field: str = "image") -> np.ndarray:
    """RGB uint8 pixels of a base64 image file (request field `field`); RequestError (TooLarge past max_pixels)
    saying what is wrong, PillowMissing where Pillow is not installed."""
    Image = pillow_image(f"{field}: {UPLOADS}")  # image I/O only; lazily

    if text.startswith("data:"):  # a data URL, as a browser's FileReader gives it
        text = text.partition(",")[2]
    text = "".join(text.split())  # wrapped at 76 columns, as the base64 tool and MIME write it
    try:
        data = base64.b64decode(text, altchars=b"-_" if "-" in text or "_" in text else None, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{field} must be a base64-encoded PNG or JPEG file") from None
    limit = f"this server takes at most {max_pixels} pixels; send a smaller image"
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise TooLarge(f"the image is {image.width}x{image.height}; {limit}")
        return np.asarray(eight_bit(image).convert("RGB"))  # 16-bit grey scaled, not clipped
    except Image.DecompressionBombError:  # Pillow's own cap, far above the server's
        raise TooLarge(f"the image is over {2 * Image.MAX_IMAGE_PIXELS} pixels; {limit}") from None
    except Image.UnidentifiedImageError:
        raise RequestError(f"{field}: its {len(data)} decoded bytes are not a PNG, JPEG or other image file; send "
                           "a base64-encoded PNG or JPEG") from None
    except OSError as exc:
        raise RequestError(f"{field} is not a readable PNG/JPEG ({first_line(exc)}); send the whole file") from None
    except ValueError as exc:  # a picture whose pixels have no 8-bit reading (a float TIFF): eight_bit says why
        raise RequestError(f"{field}: {first_line(exc)}") from None


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8080, threads: int | None = None,
          host_fallback: bool = False, max_batch: int = 8, max_delay_us: int = 2000,
          announce: Callable[[str], None] = lambda url: None, **config: Any) -> None:
    """Open a bundle and serve it until interrupted."""
    generator = Generator.open(bundle, threads=threads, host_fallback=host_fallback, **config)
    server = Server(generator, host, port, max_batch, max_delay_us)
    announce(server.url)
    try:
        server.httpd.serve_forever()
    finally:
        server.close()
