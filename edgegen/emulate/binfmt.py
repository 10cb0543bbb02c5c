"""The kernel's binfmt_misc registration that lets arm64 programs run on this host through QEMU.

With the `F` flag the kernel opens QEMU when the entry is registered, so a chroot into the arm64
userland runs its programs (and their children) without a copy of QEMU inside it. Registering is
a host-wide setting and needs root; when this host cannot do it the error says why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from . import EmulatorUnavailableError

BINFMT = Path("/proc/sys/fs/binfmt_misc")
ENTRY = "qemu-aarch64"
QEMU = "qemu-aarch64-static"
_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
INSTALL = "install it with `apt-get install qemu-user-static debootstrap` (Debian/Ubuntu)"


def registered() -> bool:
    """True when an enabled aarch64 entry is registered."""
    try:
        return (BINFMT / ENTRY).read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def ensure() -> None:
    """Register QEMU for aarch64 executables unless already done; EmulatorUnavailableError if impossible."""
    if registered():
        return
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise EmulatorUnavailableError(f"emulating an aarch64 target needs {QEMU}; {INSTALL}")
    if not (BINFMT / "register").exists():
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise EmulatorUnavailableError(
                f"this host cannot run arm64 programs: binfmt_misc is not mounted at {BINFMT} and mounting it "
                f"failed ({proc.stderr.strip() or 'exit ' + str(proc.returncode)}); a container needs "
                "--privileged (or the host must register qemu-aarch64 with the F flag) to emulate aarch64")
    if shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", ENTRY], capture_output=True)
    if not registered():
        try:
            (BINFMT / "register").write_text(f":{ENTRY}:M::{_MAGIC}:{_MASK}:{qemu}:F\n")
        except OSError as exc:
            raise EmulatorUnavailableError(f"this host cannot run arm64 programs: registering {qemu} in "
                                           f"{BINFMT}/register failed ({exc}); it needs root") from None
    if not registered():
        raise EmulatorUnavailableError(f"this host cannot run arm64 programs: {BINFMT}/{ENTRY} is not enabled "
                                       "after registering it")
