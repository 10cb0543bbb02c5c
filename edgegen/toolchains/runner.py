"""Find an external program and run it with its output kept in a log file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import OutputPathError
from ..fileio import atomic_path
from . import ToolFailedError, ToolNotFoundError

CACHE_ROOT = Path(os.environ.get("EDGEGEN_CACHE", Path.home() / ".cache" / "edgegen"))
LOGS = CACHE_ROOT / "logs"  # the logs of failed runs: a tool's working directory is often temporary
KEPT_LOGS = 100  # the newest failed runs' logs kept under LOGS; older ones are removed as new ones come


def find(*names: str) -> str | None:
    """The first of `names` found beside this Python (a venv's bin) or on PATH."""
    here = Path(sys.executable).parent
    for name in names:
        local = here / name
        if local.is_file() and os.access(local, os.X_OK):
            return str(local)
        found = shutil.which(name)
        if found:
            return found
    return None


def require(names: tuple[str, ...], purpose: str, install: str) -> str:
    """The program's path, or a ToolNotFoundError naming it, what it is for and how to get it."""
    path = find(*names)
    if path is None:
        raise ToolNotFoundError(f"{names[0]} is not installed (looked for {', '.join(names)} beside Python and on "
                                f"PATH); it is needed to {purpose}. {install}")
    return path


def run(cmd: list[str], log: Path, cwd: Path, timeout_s: float, stdin: Path | None = None,
        stdout: Path | None = None, outputs: tuple[str, ...] = ()) -> float:
    """Run cmd in cwd with its output appended to `log` (stdout to a file when given); returns seconds.
    Raises ToolFailedError quoting the log's tail when it fails, runs past timeout_s, or exits 0 without
    writing one of `outputs` (paths relative to cwd); the log is kept under LOGS first."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        src = open(stdin, "rb") if stdin else subprocess.DEVNULL
        dst = open(stdout, "wb") if stdout else out
        try:
            proc = subprocess.run(cmd, cwd=cwd, stdin=src, stdout=dst, stderr=out, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise _failed(cmd, f"did not finish within {timeout_s:.0f} s", log) from None
        finally:
            for f in (src, dst):
                if f not in (subprocess.DEVNULL, out):
                    f.close()
    if proc.returncode != 0:
        raise _failed(cmd, f"failed (exit {proc.returncode})", log)
    missing = [name for name in outputs if not (cwd / name).is_file()]
    if missing:
        raise _failed(cmd, f"exited 0 but did not write {', '.join(missing)}", log)
    return time.perf_counter() - start


def read_report(parse: Callable[[str], dict], report: Path, log: Path, tool: str) -> dict:
    """parse(report's text) for a report `tool` wrote, its output in `log`. A report that cannot be parsed
    fails as a failed run does: a ToolFailedError naming copies of the log and of the report kept under LOGS."""
    try:
        return parse(report.read_text(errors="replace"))
    except (ToolFailedError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:  # OSError: not there
        what = str(exc) if isinstance(exc, ToolFailedError) else f"{type(exc).__name__}: {exc}"
        kept = _keep(log, tool)
        copy = _keep(report, tool, beside=kept) if kept != log else report
        raise ToolFailedError(f"{tool} exited 0 but its report {report.name} cannot be read ({what}); report {copy}, "
                              f"log {kept}:\n{_tail(log)}") from None


def _failed(cmd: list[str], what: str, log: Path) -> ToolFailedError:
    """The error for a program that ran and failed: its name, what went wrong, its kept log and the log's tail."""
    name = Path(cmd[0]).name
    return ToolFailedError(f"{name} {what}; log {_keep(log, name)}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").strip().splitlines()[-12:])


def _keep(path: Path, name: str, beside: Path | None = None) -> Path:
    """A copy of a log under LOGS, new and named after the program and the time (the caller may remove
    the log's directory on the way out); the file itself where no copy can be written. beside: a log kept
    under LOGS; the copy, of another file of that run, is `<its stem>.<file name>` and goes when that log does."""
    kept = None
    try:
        LOGS.mkdir(parents=True, exist_ok=True)
        if beside:
            kept = LOGS / f"{beside.stem}.{path.name}"
        else:
            fd, kept = tempfile.mkstemp(prefix=f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-", suffix=".log", dir=LOGS)
            os.close(fd)
        with atomic_path(kept) as tmp:
            shutil.copyfile(path, tmp)
    except (OSError, OutputPathError):
        if kept and not beside:  # the name reserved for the copy
            Path(kept).unlink(missing_ok=True)
        return path
    if not beside:
        _drop_old_logs(Path(kept))
    return Path(kept)


def _drop_old_logs(newest: Path) -> None:
    """Remove all but the KEPT_LOGS newest logs under LOGS, with the files kept beside them (a log another
    process removes first is skipped)."""
    logs = []
    for path in LOGS.glob("*.log"):
        try:
            logs.append((path.stat().st_mtime, path))
        except OSError:
            continue
    logs.sort(reverse=True)
    for _, path in logs[KEPT_LOGS:]:
        if path != newest:
            for beside in LOGS.glob(f"{path.stem}.*"):  # the log and the files kept beside it
                beside.unlink(missing_ok=True)
