"""Device targets: YAML files in `targets/`, validated on load.

A target names a device, the backend that serves it, its default and allowed precisions,
thread count, memory ceiling and backend options. Errors name the file and the key.
"""

from __future__ import annotations

import difflib
import logging
import os
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import TargetError

log = logging.getLogger(__name__)

TARGETS_DIR = Path(os.environ.get("EDGEGEN_TARGETS_DIR", Path(__file__).resolve().parent.parent / "targets"))
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
ARCHES = ("x86_64", "aarch64")

# key -> (type, required)
_SCHEMA: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, True),
    "description": (str, True),
    "device": (str, True),
    "arch": (str, True),
    "backend": (str, True),
    "precision": (str, True),
    "precisions": (list, False),
    "threads": (int, True),
    "memory_mb": (int, True),
    "backend_options": (dict, False),
    "roofline": (dict, False),
}
ROOFLINE_KEYS = ("peak_gops", "bandwidth_gbs", "source")  # peak_gops: {precision: 1e9 ops/s}; 1 MAC = 2 ops


@dataclass
class Target:
    """One validated device target."""

    name: str
    description: str
    device: str
    arch: str
    backend: str
    precision: str
    threads: int
    memory_mb: int
    precisions: list[str] = field(default_factory=list)
    backend_options: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    roofline: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (*_SCHEMA, "path")}


def recorded(data: dict[str, Any]) -> Target:
    """The target a bundle was built for, as its manifest records it (a custom .yaml included)."""
    known = {f.name for f in fields(Target)}
    return Target(**{k: v for k, v in data.items() if k in known})


def target_files() -> list[Path]:
    """Every target YAML in the targets directory; TargetError when it holds none (a copy of the package
    without the checkout's targets/ beside it)."""
    files = sorted(TARGETS_DIR.glob("*.yaml"))
    if not files:
        raise TargetError(f"{TARGETS_DIR}: no target files (*.yaml) there; edgegen reads its targets from the "
                          "checkout's targets/ directory: install it from the checkout (pip install -e '.[build]'), "
                          "or set EDGEGEN_TARGETS_DIR to a directory of target files")
    return files


def load_all() -> list[Target]:
    """Every shipped target, validated."""
    return [load_file(p) for p in target_files()]


def load(name_or_path: str) -> Target:
    """A target by name (from `targets/`) or by the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return load_file(path)
    candidate = TARGETS_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return load_file(candidate)
    if path.suffix in (".yaml", ".yml"):
        what = "is not a file" if path.exists() else "does not exist"
        raise TargetError(f"target file {name_or_path!r} {what} (resolved: {path.resolve()}); check the path, or "
                          "give a target by name (`edgegen targets` lists them)")
    known = [p.stem for p in target_files()]
    close = difflib.get_close_matches(name_or_path, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise TargetError(f"unknown target {name_or_path!r}.{hint} Known targets: {', '.join(known)} "
                      f"(in {TARGETS_DIR}); `edgegen targets` lists them, or pass the path of a target .yaml.")


def load_file(path: Path) -> Target:
    """Parse and validate one target file (PyYAML imported here: a device install, which reads no target
    files, has none)."""
    import yaml

    from .yaml_files import load_yaml

    try:
        data = load_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise TargetError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TargetError(f"{path}: a target file must be a mapping of keys (name, backend, precision, ...)")
    for key in data:
        if key not in _SCHEMA:
            close = difflib.get_close_matches(str(key), _SCHEMA, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TargetError(f"{path}: unknown key {key!r}{hint}; allowed keys: {', '.join(_SCHEMA)}")
    for key, (kind, required) in _SCHEMA.items():
        if key not in data:
            if required:
                raise TargetError(f"{path}: missing required key {key!r}")
            continue
        if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
            raise TargetError(f"{path}: key {key!r} must be a {kind.__name__}, got {data[key]!r}")
    _check_choice(path, "backend", data["backend"], backend_names())
    _check_choice(path, "arch", data["arch"], ARCHES)
    _check_choice(path, "precision", data["precision"], PRECISIONS)
    precisions = data.get("precisions", [data["precision"]])
    for value in precisions:
        _check_choice(path, "precisions", value, PRECISIONS)
    if data["precision"] not in precisions:
        raise TargetError(f"{path}: key 'precision' ({data['precision']}) must be one of 'precisions' {precisions}")
    _check_backend(path, data["backend"], precisions, data.get("backend_options") or {})
    for key, least in (("threads", 1), ("memory_mb", 16)):
        if data[key] < least:
            raise TargetError(f"{path}: key {key!r} is {data[key]}; give {least} or more")
    if "roofline" in data:
        _check_roofline(path, data["roofline"], precisions)
    if data["name"] != path.stem:
        raise TargetError(f"{path}: key 'name' is {data['name']!r} but the file is named {path.stem!r}; make them equal")
    return Target(**{**data, "precisions": list(precisions), "backend_options": data.get("backend_options") or {}},
                  path=str(path))


def _check_roofline(path: Path, roofline: dict[str, Any], precisions: list[str]) -> None:
    """roofline: peak_gops per precision the target allows, bandwidth_gbs, and the public source of both."""
    missing = [k for k in ROOFLINE_KEYS if k not in roofline]
    if missing or set(roofline) - set(ROOFLINE_KEYS):
        raise TargetError(f"{path}: key 'roofline' must have exactly {', '.join(ROOFLINE_KEYS)}; missing "
                          f"{missing}, unknown {sorted(set(roofline) - set(ROOFLINE_KEYS))}")
    peaks, bandwidth = roofline["peak_gops"], roofline["bandwidth_gbs"]
    if not isinstance(peaks, dict) or set(precisions) - set(peaks) or \
            not all(isinstance(v, (int, float)) and v > 0 for v in peaks.values()):
        raise TargetError(f"{path}: key 'roofline.peak_gops' must give a positive number for each of {precisions}")
    if not isinstance(bandwidth, (int, float)) or bandwidth <= 0 or not str(roofline["source"]).strip():
        raise TargetError(f"{path}: 'roofline.bandwidth_gbs' must be a positive number and 'roofline.source' "
                          "must cite where the numbers come from")


def _check_backend(path: Path, backend: str, precisions: list[str], options: dict[str, Any]) -> None:
    """Precisions the backend compiles, backend_options keys it reads, with values it accepts."""
    from .backends import PRECISIONS, option_problem

    wrong = [p for p in precisions if p not in PRECISIONS[backend]]
    if wrong:
        raise TargetError(f"{path}: precision(s) {wrong} are not ones the {backend} backend compiles "
                          f"({', '.join(PRECISIONS[backend])}); remove them from 'precision'/'precisions'")
    for key, value in options.items():
        problem = option_problem(backend, str(key), value)
        if problem:
            raise TargetError(f"{path}: backend_options: {problem}")
    if backend == "onnxruntime":
        _check_providers(path, options)


def _check_providers(path: Path, options: dict[str, Any]) -> None:
    try:
        import onnxruntime
    except ImportError:  # checked where the bundle runs
        return
    known = onnxruntime.get_all_providers()
    for key in ("providers", "required_providers"):
        unknown = [p for p in options.get(key, []) if p not in known]
        if unknown:
            raise TargetError(f"{path}: backend_options.{key}: {unknown} are not execution providers of "
                              f"onnxruntime {onnxruntime.__version__}; its providers: {', '.join(known)}")


def backend_names() -> tuple[str, ...]:
    """Backends a target may name."""
    from .backends import NAMES

    return NAMES


def _check_choice(path: Path, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise TargetError(f"{path}: key {key!r} is {value!r}; allowed: {', '.join(allowed)}")


_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    """This machine's architecture in target terms (x86_64, aarch64)."""
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def runnable_here() -> list[Target]:
    """The shipped targets this host can run; the others are logged with the reason."""
    runnable = []
    for target in load_all():
        ok, why = runs_here(target)
        if ok:
            runnable.append(target)
        else:
            log.info("target %s does not run here: %s", target.name, why)
    return runnable


def runs_here(target: Target, precision: str | None = None) -> tuple[bool, str]:
    """Whether this host can run a target (at a precision, default its own) natively, and if not, why."""
    from . import backends

    if target.arch != host_arch():
        return False, f"needs an {target.arch} device (this host is {host_arch()})"
    options = {**target.backend_options, "precision": precision or target.precision}
    return backends.session_module(target.backend).host_support(options)
