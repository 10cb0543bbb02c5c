"""The arm64 Debian userland that aarch64 targets are emulated in (QEMU user-mode).

Built once with `debootstrap --foreign` and its second stage under QEMU, then a venv with the
device runtimes (numpy, ai-edge-litert, onnxruntime; aarch64 wheels, at the host's versions) is
pip-installed inside. The build happens in a temporary directory beside the cache entry and is
renamed into place when complete, so an interrupted build never leaves a half userland in use.
Nothing is mounted into the userland: runs need no /proc, /sys or /dev binds (see qemu.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

from . import EmulationError, EmulatorUnavailableError
from . import binfmt

ROOT_ENV = "EDGEGEN_AARCH64_ROOT"  # the userland directory (default ~/.cache/edgegen/aarch64-bookworm)
MIRROR_ENV = "EDGEGEN_DEBIAN_MIRROR"
SUITE = "bookworm"
VENV = "/opt/edgegen-venv"
STAMP = ".edgegen-userland.json"
PACKAGES = ("numpy", "ai-edge-litert", "onnxruntime")  # the device runtimes, at the host's versions
BACKEND_PACKAGES = {"tflite": "ai-edge-litert", "onnxruntime": "onnxruntime"}  # the backends it runs
DEBIAN_PACKAGES = "python3,python3-venv"  # no ca-certificates: pip uses the host CA bundle (HOST_CA)
STEP_TIMEOUT_S = 1800
HOST_CA = "/etc/ssl/certs/edgegen-host-ca.crt"  # the host's CA bundle, copied in for pip
log = logging.getLogger(__name__)


def default_root() -> Path:
    """Where the userland lives: $EDGEGEN_AARCH64_ROOT, else ~/.cache/edgegen/aarch64-bookworm."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgegen" / f"aarch64-{SUITE}"


def info(root: Path | None = None) -> dict | None:
    """The stamp of a complete userland (versions, build seconds), or None when there is none."""
    try:
        return json.loads((Path(root or default_root()) / STAMP).read_text())
    except (OSError, ValueError):
        return None


def ensure(root: Path | None = None, rebuild: bool = False) -> dict:
    """The userland's stamp, building it first when absent (or when rebuild). Builds are serialized
    by a lock file; a stale temporary directory from an interrupted build is removed."""
    root = Path(root or default_root())
    binfmt.ensure()
    require_privileges()
    stamp = info(root)
    if stamp is not None and not rebuild:
        return stamp
    lock = root.parent / f".{root.name}.lock"
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        lock.touch()
    except OSError as exc:
        raise EmulatorUnavailableError(f"cannot make the arm64 userland {root} ({exc.strerror}: {exc.filename}); "
                                       f"point {ROOT_ENV} at a writable directory") from None
    with _locked(lock):
        stamp = info(root)
        if stamp is not None and not rebuild:  # another process built it while we waited
            return stamp
        _remove_stale(root)
        return _build(root)


def _build(root: Path) -> dict:
    _require_tools()
    log.warning("building the arm64 userland in %s (once; about 6 minutes)", root)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    start = time.perf_counter()
    try:
        steps = {}
        t = time.perf_counter()
        _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--include={DEBIAN_PACKAGES}",
              SUITE, str(staging), mirror()], "debootstrap (first stage)")
        steps["debootstrap_first_s"] = time.perf_counter() - t
        t = time.perf_counter()
        _run(["chroot", str(staging), "/debootstrap/debootstrap", "--second-stage"], "debootstrap (second stage, "
             "under QEMU)")
        _unmount_under(staging)  # the second stage mounts /proc and /sys itself
        steps["debootstrap_second_s"] = time.perf_counter() - t
        t = time.perf_counter()
        versions = _install_runtimes(staging)
        steps["pip_s"] = time.perf_counter() - t
        stamp = {"suite": SUITE, "arch": "arm64", "mirror": mirror(), "python": VENV + "/bin/python",
                 "packages": versions, "build_s": round(time.perf_counter() - start, 1),
                 "steps_s": {k: round(v, 1) for k, v in steps.items()}, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                               time.gmtime())}
        (staging / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        with _locked(root.parent / f".{root.name}.use"):
            _swap_in(staging, root)
        return stamp
    finally:
        if staging.exists():
            _remove_tree(staging)


def _install_runtimes(staging: Path) -> dict[str, str]:
    """A venv with the device runtimes inside the userland; pip reaches PyPI through the host's DNS
    and CA bundle (the host's own pip configuration is for x86 and is not used)."""
    shutil.copyfile("/etc/resolv.conf", staging / "etc" / "resolv.conf")
    shutil.copyfile(host_ca_bundle(), staging / HOST_CA.lstrip("/"))
    pins = [f"{name}=={host_version(name)}" if host_version(name) else name for name in PACKAGES]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "PIP_CONFIG_FILE": "/dev/null",
           "PIP_CERT": HOST_CA, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "QEMU_CPU": "cortex-a72", "LC_ALL": "C.UTF-8"}
    _run(["chroot", str(staging), "/usr/bin/python3", "-m", "venv", VENV], "python3 -m venv", env)
    _run(["chroot", str(staging), f"{VENV}/bin/pip", "install", "--quiet", "--only-binary=:all:", *pins],
         f"pip install {' '.join(pins)} (aarch64 wheels)", env)
    out = _run(["chroot", str(staging), f"{VENV}/bin/python", "-c",
                "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
                f"{list(PACKAGES)!r}}}))"], "listing the installed runtimes", env)
    shutil.rmtree(staging / "root" / ".cache", ignore_errors=True)
    return json.loads(out.strip().splitlines()[-1])


def host_ca_bundle() -> str:
    """The CA bundle this host's TLS clients trust (a proxy's own CA included): $PIP_CERT,
    $SSL_CERT_FILE, else Debian's bundle."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    raise EmulationError("building the arm64 userland: no CA bundle found for pip (set PIP_CERT to one)")


def host_version(name: str) -> str | None:
    """The version of a package installed on this host, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def mirror() -> str:
    """The Debian mirror: $EDGEGEN_DEBIAN_MIRROR, else the one the host's apt uses, else deb.debian.org."""
    if os.environ.get(MIRROR_ENV):
        return os.environ[MIRROR_ENV]
    for source in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        for line in source.read_text().splitlines():
            if line.startswith("URIs:") and line.split()[1:] and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


CAPABILITIES = {21: "CAP_SYS_ADMIN (unshare --mount, mount)", 18: "CAP_SYS_CHROOT (chroot)"}  # bit: what needs it


def effective_capabilities() -> int:
    """This process's effective capability set (/proc/self/status CapEff); 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as status:
            return next((int(line.split()[1], 16) for line in status if line.startswith("CapEff:")), 0)
    except OSError:
        return 0


def require_privileges() -> None:
    """EmulatorUnavailableError unless this process may enter the userland: every run does so with unshare --mount,
    mount and chroot, which need root's CAP_SYS_ADMIN and CAP_SYS_CHROOT."""
    caps = effective_capabilities()
    missing = [what for bit, what in CAPABILITIES.items() if not caps >> bit & 1]
    if missing:
        raise EmulatorUnavailableError(f"this host cannot run the arm64 userland: each run enters it with unshare "
                                       f"--mount, mount and chroot, and this process lacks {' and '.join(missing)}; "
                                       "run edgegen as root (a container needs --privileged)")


def _require_tools() -> None:
    missing = [tool for tool in ("debootstrap", "chroot") if shutil.which(tool) is None]
    if missing:
        raise EmulatorUnavailableError(f"building the arm64 userland needs {', '.join(missing)}; install it with "
                                       "`apt-get install debootstrap qemu-user-static` (Debian/Ubuntu)")
    if os.geteuid() != 0:
        raise EmulatorUnavailableError("building the arm64 userland (debootstrap, chroot) needs root, and so does "
                                       "every run in it (unshare, mount, chroot): run `edgegen emulate` as root (a "
                                       "container needs --privileged)")


def _run(argv: list[str], what: str, env: dict[str, str] | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT_S,
                              env=env or {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                                          "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise EmulationError(f"building the arm64 userland: {what} did not finish in {STEP_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise EmulationError(f"building the arm64 userland: {what} failed (exit {proc.returncode}):\n{tail}\n"
                             "Check the network and the mirror (set EDGEGEN_DEBIAN_MIRROR), then "
                             "`edgegen emulate --rebuild`.")
    return proc.stdout


@contextlib.contextmanager
def in_use(root: Path) -> Iterator[None]:
    """Held while a run uses the userland: a rebuild swaps it in only when no run is using the old one."""
    with _locked(root.parent / f".{root.name}.use", fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def _locked(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, mode)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _swap_in(staging: Path, root: Path) -> None:
    """Rename the finished userland into place; an older one is moved aside first and then removed."""
    if root.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old", dir=root.parent))
        os.rmdir(retired)
        os.replace(root, retired)
        os.replace(staging, root)
        _remove_tree(retired)
    else:
        os.replace(staging, root)


def _remove_stale(root: Path) -> None:
    """Remove what an interrupted build left beside root (called under the build lock)."""
    for stale in root.parent.glob(f".{root.name}.*"):
        if stale.is_dir() and stale.suffix in (".tmp", ".old"):
            _remove_tree(stale)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def _unmount_under(path: Path) -> None:
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_tree(path: Path) -> None:
    """Delete a userland tree, but only once nothing is mounted below it (never delete through a mount)."""
    _unmount_under(path)
    left = _mounts_under(path)
    if left:
        raise EmulationError(f"{path}: cannot remove it, {left[0]} is still mounted; unmount it and retry")
    shutil.rmtree(path)
