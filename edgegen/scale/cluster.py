"""Connecting to Ray: import it with an install hint, check a cluster address before Ray would
wait minutes on it, and turn Ray's failures into messages that say what to do (a worker's too: what its
node lacks is said to be missing there, not "here", which reads as the driver's machine)."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import signal
import socket
import threading
from typing import Any, Iterator

from ..errors import BackendUnavailableError, EdgegenError, install_hint
from ..toolchains import ToolNotFoundError
from . import ClusterError

INSTALL = install_hint("ray", "ray")
CONNECT_TIMEOUT_S = 5
# A Ray head's GCS port serves gRPC, i.e. HTTP/2: after the client's connection preface, an HTTP/2
# server's first frame is SETTINGS (RFC 9113, section 3.4). Anything else there is not a Ray head.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
_HTTP2_SETTINGS = 4
TOKEN_AUTH_DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"
# errors that say what this host lacks (a backend's package, a tool) as missing "here"
_HOST_ERRORS = (BackendUnavailableError, ToolNotFoundError)
# Ray retries for ~14 minutes on an address where something that is not a Ray head listens; these
# bound its retries while it joins a cluster (set for ray.init only, where the user has not set them).
_JOIN_TIMEOUTS = {"RAY_gcs_server_port_wait_time_s": "1", "RAY_py_gcs_connect_timeout_s": "5",
                  "RAY_gcs_rpc_server_connect_timeout_s": "5"}


def import_ray() -> Any:
    """The ray module, or ClusterError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--executor ray needs Ray, which is not installed here; install it with {INSTALL}, "
                           "or use --executor local") from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within `timeout` seconds when nothing listens at a HOST:PORT (or ray://HOST:PORT) address."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray-address {address!r}: give HOST:PORT of the cluster's head (e.g. 10.0.0.5:6379, "
                           "as `ray start --head` prints it) or 'auto' for a cluster started on this machine")
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start its head with "
                           "`ray start --head` on that machine, check the address and port it printed, or leave "
                           "out --ray-address to run on a Ray instance started here") from None
    with conn:
        if not _speaks_http2(conn):
            raise ClusterError(f"something answers at {address}, but it is not a Ray head (no gRPC there); give the "
                               "address and port that `ray start --head` printed (the GCS port, 6379 by default)")


def _speaks_http2(conn: socket.socket) -> bool:
    """Whether the peer answers an HTTP/2 connection preface with a SETTINGS frame, as gRPC does."""
    try:
        conn.sendall(_HTTP2_PREFACE)
        header = b""
        while len(header) < 9:
            chunk = conn.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == _HTTP2_SETTINGS


@contextlib.contextmanager
def connect(address: str | None = None) -> Iterator[Any]:
    """Yield the ray module, connected: reuse an initialized Ray, else join `address` (or start a local
    instance when it is None) and disconnect afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_reachable(address)
    added = {k: v for k, v in _JOIN_TIMEOUTS.items() if k not in os.environ} if address else {}
    os.environ.update(added)
    own_handlers, auth_errors = _signal_handlers(), _auth_errors(ray)
    started = False
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        started = True
    except (ConnectionError, TimeoutError, RuntimeError, *auth_errors) as exc:
        raise _join_error(address, exc, auth_errors) from None
    except SystemExit as exc:  # Ray's own SIGTERM handler, while ray.init ran: sys.exit(15), without a word
        if exc.code != signal.SIGTERM or signal.SIGTERM not in own_handlers:
            raise
        _restore(own_handlers)
        signal.raise_signal(signal.SIGTERM)  # the signal, to the handler this process had
        raise
    finally:
        for name in added:
            del os.environ[name]
        _restore(own_handlers)  # ray.init takes SIGTERM and SIGINT: a stopped command then died with a crash dump
        if not started:  # stopped or failed half way: a local instance it started would outlive the command
            with contextlib.suppress(Exception):
                ray.shutdown()
    try:
        yield ray
    finally:
        ray.shutdown()


def _auth_errors(ray: Any) -> tuple[type[Exception], ...]:
    """Ray's AuthenticationError, where this Ray has one (token authentication came with Ray 2.5x)."""
    error = getattr(ray.exceptions, "AuthenticationError", None)
    return (error,) if error else ()


def _join_error(address: str | None, exc: Exception, auth_errors: tuple[type[Exception], ...]) -> ClusterError:
    """What to say where ray.init failed with `exc` (Ray's first line, unless it is Ray's advice on its own flags
    or an authentication failure)."""
    where = address or "this machine"
    why = str(exc).strip().splitlines()[0]
    if address == "auto" and "Could not find any running Ray instance" in why:  # Ray's advice names its flags
        return ClusterError("--ray-address auto: no Ray cluster runs on this machine; start one with `ray start "
                            "--head`, give the address of a running one, or leave out --ray-address to start a "
                            "Ray instance for this command")
    auth = _auth_failure(exc, auth_errors)
    if auth:
        return ClusterError(f"cannot connect to the Ray cluster at {where}: {auth} `ray get-auth-token` on the "
                            f"cluster's head prints its token; see {TOKEN_AUTH_DOCS}")
    return ClusterError(f"cannot connect to the Ray cluster at {where}: {why}. Check that `ray status` works there.")


def _auth_failure(exc: Exception, auth_errors: tuple[type[Exception], ...]) -> str | None:
    """Why token authentication failed, and what to do, where it did: Ray raises its AuthenticationError as
    itself when RAY_AUTH_MODE=token finds no token here, and where the head refused this process (no token, or
    another) as the last connection error in the text of the error that its ConnectionError is raised from."""
    errors = [exc, exc.__cause__, exc.__context__]
    if not any(isinstance(err, auth_errors) or "AuthenticationError: " in str(err) for err in errors if err):
        return None
    put = ("put the cluster's token in ~/.ray/auth_token on this machine (or in a file RAY_AUTH_TOKEN_PATH names, "
           "or in RAY_AUTH_TOKEN)")
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (f"it uses token authentication, and Ray here sent no token (RAY_AUTH_MODE is not 'token'); set "
                f"RAY_AUTH_MODE=token and {put}.")
    if "no authentication token was found" in str(exc):
        return f"RAY_AUTH_MODE=token, but there is no token here; {put}."
    return f"the cluster refused the token found here (it is not the cluster's); {put}."


def _signal_handlers() -> dict[int, Any]:
    """This process's handlers of the signals that stop a command (main thread only: others cannot set them)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def cluster_cpus(ray: Any) -> int:
    """Logical CPUs of the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextlib.contextmanager
def user_errors(ray: Any, what: str) -> Iterator[None]:
    """Re-raise an edgegen error from a Ray worker as itself; a worker that died beyond its
    retries as ClusterError."""
    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EdgegenError):
            raise cause from None
        raise
    except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
        # an actor, or a task's worker process, that died past its restarts (an OOM kill), or its node
        raise ClusterError(f"{what}: a Ray worker died and could not be restarted ({str(exc).splitlines()[0]}); "
                           "check the nodes' memory and `ray status`, then rerun") from None


@contextlib.contextmanager
def on_worker_node() -> Iterator[None]:
    """Around a Ray worker's work: an error saying what this host lacks names the worker's node, and says it is
    missing on that node (its "here" read as the driver's machine, which may well have it)."""
    try:
        yield
    except _HOST_ERRORS as exc:
        raise _on_node(exc) from None


def _on_node(exc: EdgegenError) -> EdgegenError:
    """`exc` (same type and attributes) saying it happened on this Ray worker's node."""
    import ray

    said = re.sub(r"\bhere\b", "on that node", str(exc))
    error = copy.copy(exc)
    error.args = (f"on the Ray worker at {ray.util.get_node_ip_address()} (host {socket.gethostname()}): "
                  f"{said.rstrip('.')}; every node of the Ray cluster needs edgegen installed the same way",)
    return error
