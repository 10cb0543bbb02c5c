"""Atomic file writes: write a temporary file beside the destination, then rename it over."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputPathError

log = logging.getLogger(__name__)

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


def orphans(parent: Path, prefix: str, rest: str) -> list[Path]:
    """The directories `prefix<host>-<pid><rest>` in parent (rest: a regular expression) that a process of this
    host which is no longer running left behind (kill -9, a cancelled Ray task's worker, power loss)."""
    pattern = re.compile(rf"{re.escape(prefix)}{owner_pattern()}{rest}")
    found = []
    for candidate in parent.glob(f"{glob.escape(prefix)}*"):
        match = pattern.fullmatch(candidate.name)
        if match and candidate.is_dir() and not candidate.is_symlink() and not alive(int(match.group(1))):
            found.append(candidate)
    return found


def remove_orphans(parent: Path, prefix: str, rest: str) -> None:
    """Remove the orphans (see `orphans`) in parent."""
    for candidate in orphans(parent, prefix, rest):
        remove_tree(candidate)


def remove_tree(path: str | Path) -> None:
    """Remove a directory tree (gone already is fine), making its read-only directories writable on the way: an
    old bundle made read-only (chmod -R a-w) stayed beside --out for good once swapped out. What cannot be
    removed even so is warned about, naming it."""
    def writable_then_retry(func, failed, exc_info) -> None:
        if isinstance(exc_info[1], FileNotFoundError):
            return
        if not isinstance(exc_info[1], PermissionError):
            raise exc_info[1]
        os.chmod(os.path.dirname(failed), 0o700)
        func(failed)

    try:
        shutil.rmtree(path, onerror=writable_then_retry)
    except OSError as exc:
        log.warning("%s: cannot be removed (%s); remove it by hand", path, exc.strerror or exc)


SHORT_NAME = 96  # bytes of a name kept in its temporaries' names: the rest is a hash


def short_name(name: str) -> str:
    """A name for temporaries beside `name`: the name itself, or where it is long its first bytes and a hash
    of the whole, so a temporary's longer name stays within the file system's limit (255 bytes)."""
    raw = os.fsencode(name)
    if len(raw) <= SHORT_NAME:
        return name
    return f"{raw[:SHORT_NAME - 17].decode('utf-8', 'ignore')}~{hashlib.sha256(raw).hexdigest()[:16]}"


def name_max(path: Path) -> int:
    """The longest file name (bytes) the file system holding path (or its nearest existing ancestor) takes."""
    for place in (path, *path.absolute().parents):
        if place.is_dir():
            try:
                return os.pathconf(place, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def check_name_lengths(path: Path) -> None:
    """OutputPathError where a name on path is longer than its file system takes (found before any work)."""
    limit = name_max(path.parent)
    long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if long is not None:
        raise OutputPathError(f"{path}: the name {long[:40]}... is {len(os.fsencode(long))} bytes, longer than the "
                              f"{limit} its file system takes. Choose a shorter name.")


def followed(path: Path) -> Path:
    """path, or where it is a symbolic link (a `current -> v7` deployment link, `latest.png -> r001.png`), the
    path it points to: that is written, and the link kept (replacing the link itself lost it)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """Flush a file's (or a directory's entries') data to the disk, so a rename after it cannot reach the disk
    before the data it names (a power loss left zero-length files otherwise); a file system that cannot sync
    this kind of file (EINVAL) is let be."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def as_created(path: str | Path, directory: bool = False) -> None:
    """Give a file or directory made by tempfile (0600 / 0700) the mode open() or mkdir() would have
    given it under the user's umask, so bundles and images are as readable as any other file."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


@contextlib.contextmanager
def output_place(path: Path) -> Iterator[None]:
    """Create the directory `path` goes in, then run the block that creates its temporary beside it;
    OutputPathError where that place cannot hold a file (a directory on the path is a file; a file
    system such as /proc creates none). Errors of the medium (read-only, full) pass on as they are."""
    check_name_lengths(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
    except (FileExistsError, NotADirectoryError, FileNotFoundError) as exc:
        raise OutputPathError(f"{path}: cannot be written there ({exc.strerror}: {exc.filename}; a directory on "
                              "that path is a file, or its file system creates no files). Choose another path.") \
            from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path` (its data and the rename synced to the
    disk), on failure it is removed."""
    path = Path(path)
    with output_place(path):
        path = followed(path)
        if path.is_dir():  # found before the temporary is written (its rename failed with IsADirectoryError)
            raise OutputPathError(f"{path}: is a directory; give a file name (e.g. {path / ('out' + path.suffix)}) "
                                  "or another path")
        fd, tmp = tempfile.mkstemp(prefix=f".{short_name(path.name)}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            as_created(tmp)
            fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent, directory=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write text to path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
