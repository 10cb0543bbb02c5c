"""Atomic file writes: write a temporary file beside the destination, then rename it over."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputPathError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import (setting it back and forth is not thread-safe)


def owner() -> str:
    """This process's tag in the names of its temporary files and directories: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def owner_pattern() -> str:
    """A regular expression matching the tag of any process of this host, its pid as group 1."""
    return rf"{re.escape(socket.gethostname())}-(\d+)"


def alive(pid: int) -> bool:
    """Whether a process of this host is running (a temporary named after a dead one is an orphan)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True


def remove_orphans(parent: Path, prefix: str, rest: str) -> None:
    """Remove the directories `prefix<host>-<pid><rest>` in parent (rest: a regular expression) that a process of
    this host which is no longer running left behind (kill -9, a cancelled Ray task's worker, power loss)."""
    pattern = re.compile(rf"{re.escape(prefix)}{owner_pattern()}{rest}")
    for candidate in parent.glob(f"{glob.escape(prefix)}*"):
        match = pattern.fullmatch(candidate.name)
        if match and candidate.is_dir() and not candidate.is_symlink() and not alive(int(match.group(1))):
            shutil.rmtree(candidate, ignore_errors=True)


def as_created(path: str | Path, directory: bool = False) -> None:
    """Give a file or directory made by tempfile (0600 / 0700) the mode open() or mkdir() would have
    given it under the user's umask, so bundles and images are as readable as any other file."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


@contextlib.contextmanager
def output_place(path: Path) -> Iterator[None]:
    """Create the directory `path` goes in, then run the block that creates its temporary beside it;
    OutputPathError where that place cannot hold a file (a directory on the path is a file; a file
    system such as /proc creates none). Errors of the medium (read-only, full) pass on as they are."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
    except (FileExistsError, NotADirectoryError, FileNotFoundError) as exc:
        raise OutputPathError(f"{path}: cannot be written there ({exc.strerror}: {exc.filename}; a directory on "
                              "that path is a file, or its file system creates no files). Choose another path.") \
            from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    with output_place(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            as_created(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write text to path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
