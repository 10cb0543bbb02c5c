"""Run the emulation worker inside the arm64 userland (QEMU user-mode through binfmt_misc).

Each run gets its own directory in the userland's /tmp with a copy of the edgegen package (its
Python source only: the device runtime needs nothing else) and of the bundle. /proc, an arm64
/proc/cpuinfo over it (onnxruntime reads the CPU from it and crashes on the host's x86 one) and
/sys are mounted in a private mount namespace (unshare), so they vanish with the process and
nothing ever stays mounted inside the cached userland.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..fileio import owner, remove_orphans
from . import userland

CPU = "cortex-a72"  # QEMU's model: ~2x faster than its default "max" CPU (FIELD-NOTES)
_CPUINFO = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
            "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n"
            "CPU revision\t: 3\n\n")
PACKAGE = Path(__file__).resolve().parent.parent
RUN_PREFIX = "edgegen-run-"  # + owner() + "-" + random: a run's directory in the userland's /tmp


@contextlib.contextmanager
def staged(root: Path, bundle: Path, cores: int) -> Iterator[tuple[Path, str]]:
    """A run directory in the userland with the package, the bundle and a cpuinfo of `cores`
    Cortex-A72 cores: yields (its path on the host, its path inside the userland); removed after, and those
    of runs whose process is gone (killed with SIGKILL) are removed first. Named after this process."""
    remove_orphans(root / "tmp", RUN_PREFIX, r"-[^/]+")
    host = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{owner()}-", dir=root / "tmp"))
    try:
        shutil.copytree(PACKAGE, host / "src" / "edgegen",
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.calib", "*.html", "zoo"))
        shutil.copytree(bundle, host / "bundle")
        (host / "cpuinfo").write_text("".join(_CPUINFO.format(i=i) for i in range(cores)))
        yield host, "/" + host.relative_to(root).as_posix()
    finally:
        shutil.rmtree(host, ignore_errors=True)


def command(root: Path, run_dir: str, argv: list[str]) -> list[str]:
    """argv (a program inside the userland) run through chroot in a private mount namespace."""
    r = shlex.quote(str(root))
    script = (f"set -e; mount -t proc proc {r}/proc; mount --bind {r}{shlex.quote(run_dir)}/cpuinfo {r}/proc/cpuinfo; "
              f"mount --bind /sys {r}/sys; exec chroot {r} {shlex.join(argv)}")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def environment(run_dir: str, threads: int) -> dict[str, str]:
    """The worker's environment inside the userland (nothing of the host's leaks in)."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8", "QEMU_CPU": CPU,
            "PYTHONPATH": f"{run_dir}/src", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": str(threads)}


def python() -> str:
    """The interpreter of the userland's venv (with numpy, ai-edge-litert, onnxruntime)."""
    return userland.VENV + "/bin/python"
