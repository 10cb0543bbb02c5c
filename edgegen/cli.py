"""The `edgegen` command line: build, inspect, targets, generate, bench, zoo, precompute, serve."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from .errors import DamagedBundle, EdgegenError, RequestError, first_line
from .targets import PRECISIONS
from .fileio import atomic_path, write_text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error, 1 internal fault, 3 a failed check)."""
    parser = _parser()
    args = parser.parse_args(_ranges_joined(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # --verbose: edgegen's own steps; the libraries it calls stay at warnings (onnxscript's notes per node)
    logging.getLogger("edgegen").setLevel(logging.INFO if args.verbose else logging.NOTSET)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)  # unwind like Ctrl-C, so temporary files are removed
    try:
        return args.func(args) or 0
    except EdgegenError as exc:
        print(f"edgegen: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Terminated) as exc:
        return _stopped(exc)
    except SystemError as exc:  # a stop raised while a C extension waited (Ray's wait) arrives wrapped in this
        return _stopped(exc.__cause__) if isinstance(exc.__cause__, (KeyboardInterrupt, _Terminated)) \
            else _internal_error()
    except ModuleNotFoundError as exc:
        if exc.name not in BUILD_PACKAGES:
            return _internal_error()
        verb = f"{args.verb} --baseline" if getattr(args, "baseline", False) else args.verb  # bench runs without
        print(f"edgegen: error: {_not_installed(verb, exc.name)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0
    except OSError as exc:
        if exc.errno not in _MEDIUM_ADVICE:
            return _internal_error()
        written = getattr(args, getattr(args, "writes", ""), None)  # a file object's write names no file
        where = f"{exc.filename}: " if exc.filename else f"writing {written}: " if written else ""
        print(f"edgegen: error: {where}{exc.strerror}. {_MEDIUM_ADVICE[exc.errno]} and run the command again; "
              "edgegen moves what it writes into place only when it is complete, so nothing half-written was left.",
              file=sys.stderr)
        return 2
    except Exception:
        return _internal_error()


# the `build` extra's packages by import name: the build host has them, a device install (numpy and one
# backend: `pip install '.[ort]'`) does not
BUILD_PACKAGES = {"onnx": "onnx", "onnxscript": "onnxscript", "yaml": "pyyaml", "PIL": "pillow"}


def _not_installed(verb: str, name: str) -> str:
    """What a verb that imported a build package (by import name) absent here tells the user: Pillow alone
    for a picture's file, the whole build extra for anything else."""
    how = "`pip install pillow`" if name == "PIL" else ("install the build host's packages in the checkout: "
                                                         "`pip install -e '.[build]'` (a build host runs from the "
                                                         "checkout, which holds targets/ and hw/)")
    return (f"`edgegen {verb}` needs {BUILD_PACKAGES[name]}, which is not installed here (a device install has "
            f"numpy and one backend); {how}")


def _stopped(exc: BaseException) -> int:
    """The exit of a command stopped by Ctrl-C (130) or SIGTERM (143)."""
    if isinstance(exc, KeyboardInterrupt):
        print("edgegen: interrupted", file=sys.stderr)
        return 130
    print("edgegen: terminated", file=sys.stderr)
    return 128 + signal.SIGTERM


# a write failed because of the medium, not a fault of edgegen: read-only, full, over quota, not permitted;
# what the user can do about each
_MEDIUM_ADVICE = {errno.ENOSPC: "Free space (or choose another path)", errno.EDQUOT: "Free space within your quota "
                  "(or choose another path)", errno.EFBIG: "Choose a path on a file system that takes larger files",
                  errno.EROFS: "Choose a path on a writable file system",
                  errno.EACCES: "Fix the permissions (or choose another path)",
                  errno.EPERM: "Fix the permissions (or choose another path)"}


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks clean up."""


_TERMINATED = threading.Event()  # set by SIGTERM; the progress callback raises again where the first was lost


def _on_sigterm(signum: int, frame) -> None:
    _TERMINATED.set()
    raise _Terminated()


def _default_sigterm_in_child() -> None:
    """A process forked from this one (OpenVINO's telemetry posts from a forked child) gets SIGTERM's default
    action back: a child blocked in C never runs the Python handler, so its parent's terminate() could not end
    it, and a build, its bundle written, waited for it at exit forever."""
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_sigterm_in_child)


def _internal_error() -> int:
    """Print an internal fault in full so it can be reported; exit status 1."""
    traceback.print_exc()
    print("edgegen: internal error (a bug in edgegen); please report it with the traceback above", file=sys.stderr)
    return 1


class _Once(argparse.Action):
    """argparse's store, but an option given twice with two values is a usage error (the last won silently:
    `--precision int8 --precision fp32` built fp32)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = vars(namespace).setdefault("_given", {})
        if self.dest in given and given[self.dest] != values:
            parser.error(f"{option_string} is given twice ({given[self.dest]} and {values}); give it once")
        given[self.dest] = values
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """The parser of edgegen and of each verb: a single-valued option takes one value (`_Once`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)
        self.register("action", "store", _Once)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgegen", description="Compile image generators for edge devices.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each step does")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("build", help="compile a model for one or more targets into bundles")
    p.add_argument("model", help="an .onnx file or zoo:NAME")
    p.add_argument("--target", "-t", action="append", required=True, help="target name or .yaml (repeatable)")
    p.add_argument("--out", "-o", required=True, help="bundle directory (with several targets: a parent directory)")
    p.add_argument("--precision", choices=list(PRECISIONS), help="default: the target's precision")
    p.add_argument("--samples", type=_integer(1), default=8,
                   help="held-out inputs for verification and floors (default 8)")
    p.add_argument("--min-psnr", type=float, metavar="DB", help="quality floor: PSNR vs the fp32 source")
    p.add_argument("--min-ssim", type=float, metavar="S", help="quality floor: SSIM vs the fp32 source")
    p.add_argument("--calibration", metavar="SOURCE",
                   help="int8 calibration data: spec (default: seeded inputs), zoo, an image folder, an .npy/.npz")
    p.add_argument("--calibration-count", type=_integer(1), default=32, metavar="N",
                   help="calibration samples (default 32)")
    p.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--prune", type=float, metavar="RATIO",
                   help="structured channel pruning to the MACs of removing this share of channels in every "
                        "group, in (0, 1), re-allocated across groups by measured sensitivity where that is better; "
                        "with --min-psnr/--min-ssim, the largest uniform ratio up to RATIO that meets the floor")
    p.add_argument("--prune-to-macs", type=_count, metavar="N", help="prune until the model needs at most N MACs "
                                                                     "(e.g. 50M)")
    p.add_argument("--no-bitstream", dest="bitstream", action="store_false",
                   help="FPGA board targets: compile the NPU program and memory images only, skip the toolchain")
    _serving_args(p)
    _graph_args(p)
    _executor_args(p, "with several --target: build them here one by one, or one Ray task per target")
    p.set_defaults(func=_build, writes="out")  # what a failed write without a file name is told

    p = verbs.add_parser("inspect", help="show a model's inputs, ops, costs and support per target")
    p.add_argument("model")
    p.add_argument("--nodes", action="store_true", help="list every node with MACs and bytes")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _graph_args(p)
    p.set_defaults(func=_inspect)

    p = verbs.add_parser("targets", help="list device targets and whether each can run on this host")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_targets)

    p = verbs.add_parser("generate", help="generate one image from a bundle")
    p.add_argument("bundle")
    p.add_argument("--seed", type=int)
    p.add_argument("--label", type=int)
    p.add_argument("--image", help="input image file for image-to-image models")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE",
                   help="an image file for another image input by name (a mask, a style image), or a .npy array for a "
                        "tensor input (a float map); repeatable")
    p.add_argument("--output-name", help="which image output to save (default: the first)")
    p.add_argument("--size", type=int, help="a resolution tier the bundle offers")
    p.add_argument("--quality", choices=["full", "preview"])
    p.add_argument("--roi", metavar="X,Y,W,H", help="compute only this region (bundles built with --roi)")
    p.add_argument("-o", "--out", required=True, help="image file to write (.png, .jpg, ...)")
    p.add_argument("--threads", type=_integer(1))
    p.add_argument("--host-fallback", action="store_true", help="run a bundle for absent hardware on this CPU")
    p.set_defaults(func=_generate, writes="out")

    p = verbs.add_parser("bench", help="latency, throughput and peak memory of a bundle")
    p.add_argument("bundle")
    p.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    p.add_argument("--batch", type=_integer(1), help="images per call (default 1; a fixed-batch export: its batch)")
    p.add_argument("--runs", type=_integer(1), default=50)
    p.add_argument("--warmup", type=_integer(0), default=5)
    p.add_argument("--baseline", action="store_true", help="also run the fp32 source in plain ONNX Runtime")
    p.add_argument("--source", help="the fp32 source model (default: the path recorded at build time)")
    p.add_argument("--json", type=_file_to_write, help="also write the result as JSON to this file")
    p.add_argument("--host-fallback", action="store_true")
    p.set_defaults(func=_bench, writes="json")

    p = verbs.add_parser("zoo", help="list the models that ship with edgegen")
    p.set_defaults(func=_zoo)

    p = verbs.add_parser("precompute", help="render a request file into a bundle's precomputed assets")
    p.add_argument("bundle")
    p.add_argument("requests", help="YAML/JSON: a list of requests, or requests:/grid:/log: + top: (see README)")
    _executor_args(p, "render here, or in shards on Ray actors (same assets, byte for byte)")
    p.add_argument("--workers", type=_integer(1), metavar="N",
                   help="Ray actors rendering shards (default: the cluster's CPUs over the target's threads)")
    p.set_defaults(func=_precompute, writes="bundle")

    p = verbs.add_parser("serve", help="serve a bundle over HTTP (POST /v1/generate, GET /v1/health, /v1/stats, /)")
    p.add_argument("bundle")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_integer(0, 65535), default=8080, help="TCP port (default 8080; 0: any free port)")
    p.add_argument("--threads", type=_integer(1), help="intra-op threads (default: the target's)")
    p.add_argument("--max-batch", type=_integer(1), default=8, help="micro-batcher: most requests per backend call")
    p.add_argument("--max-delay-us", type=_max_delay_us, default=2000,
                   help="micro-batcher: longest wait for a batch to fill")
    p.add_argument("--cache-mb", type=_mebibytes, default=64, help="in-memory LRU budget (MiB; 0: off)")
    p.add_argument("--disk-cache", help="directory of an on-disk cache (off by default)")
    p.add_argument("--disk-cache-mb", type=_mebibytes, default=256, help="on-disk cache budget (MiB, default 256)")
    p.add_argument("--host-fallback", action="store_true")
    p.set_defaults(func=_serve)

    p = verbs.add_parser("emulate", help="run a bundle as its target device would (threads, memory ceiling, "
                                         "op support, self-test; aarch64 under QEMU, FPGA on its RTL); "
                                         "exit 3 if a check fails or the bundle is damaged")
    p.add_argument("bundle")
    p.add_argument("--target", "-t", help="the target to emulate (default: the one the bundle was built for)")
    p.add_argument("--runs", type=_integer(1), default=20, help="timed runs on this host (default 20)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached arm64 userland first")
    p.add_argument("--no-aarch64", action="store_true", help="skip the QEMU run of an aarch64 target")
    p.add_argument("--no-rtl", action="store_true", help="skip the RTL simulation of an FPGA target")
    p.add_argument("--json", type=_file_to_write, help="also write the report as JSON to this file")
    p.set_defaults(func=_emulate, writes="json")

    p = verbs.add_parser("verify", help="on the device: check an installed bundle's files and run its self-test; "
                                        "exit 3 if either fails")
    p.add_argument("bundle")
    p.add_argument("--threads", type=_integer(1))
    p.add_argument("--runs", type=_integer(1), default=10, help="timed runs (default 10)")
    p.set_defaults(func=_verify)
    return parser


def _serving_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precompute", metavar="REQUESTS", help="render these requests into the bundle's assets")
    p.add_argument("--split", metavar="auto|TENSOR[,TENSOR]",
                   help="compile trunk and head for the feature cache: at the automatic split point or these tensors")
    p.add_argument("--roi", action="store_true", help="compile what region requests, edits and tiles need")
    p.add_argument("--tiers", metavar="SIZE[,SIZE]", help="output sizes to compile a fully-convolutional model for")
    p.add_argument("--preview-upscale", metavar="lanczos|MODEL",
                   help="upscale the preview tier to full size: Lanczos-3, or an upscaler model compiled for the target")
    p.add_argument("--batch-sizes", metavar="N[,N]", help="batch-N artifacts of a model exported with a fixed batch")


def _executor_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--executor", choices=["local", "ray"], default="local", help=f"{what} (default local)")
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="the Ray cluster's head (as `ray start --head` prints it; default: a Ray instance started here)")


def _serving_options(args) -> dict:
    def integers(text: str | None, flag: str) -> list[int] | None:
        if not text:
            return None
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise RequestError(f"{flag} {text!r}: give comma-separated integers, e.g. 1,4,8") from None
        if min(values) < 1:
            raise RequestError(f"{flag} {text!r}: values must be >= 1")
        return values

    return {"precompute": args.precompute, "split": args.split.split(",") if args.split else None, "roi": args.roi,
            "tiers": integers(args.tiers, "--tiers"), "preview_upscale": args.preview_upscale,
            "batch_sizes": integers(args.batch_sizes, "--batch-sizes")}


def _count(text: str) -> int:
    """'50M' / '1.5G' / '120000' -> an integer count."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1)
    try:
        return int(float(text[:-1] if scale != 1 else text) * scale)
    except (ValueError, OverflowError):  # not a number; inf
        raise argparse.ArgumentTypeError(f"{text!r} is not a count like 50M or 120000") from None


def _file_to_write(text: str) -> str:
    """An argparse type: a file path the command writes at its end, checked before the run (an existing
    directory there failed after a whole emulation or benchmark)."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name (e.g. "
                                         f"{text.rstrip('/')}/report.json)")
    return text


def _max_delay_us(text: str) -> int:
    """An argparse type: the micro-batcher's delay, 0..MAX_DELAY_US (imported only when the option is given)."""
    from .runtime.batcher import MAX_DELAY_US

    return _integer(0, MAX_DELAY_US)(text)


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from low to high (no upper bound when high is None)."""
    allowed = f"{low}..{high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use {allowed}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {allowed}")
        return value

    return parse


def _mebibytes(text: str) -> float:
    """An argparse type: a cache budget in MiB, a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a budget; give MiB >= 0 (0 turns the cache off)")
    return value


RANGE_OPTIONS = ("--input-range", "--output-range")
_NEGATIVE_RANGE = re.compile(r"-[0-9.]+(?:[eE][-+]?[0-9]+)?,.*")


def _ranges_joined(argv: list[str]) -> list[str]:
    """`--output-range -1,1` as `--output-range=-1,1`: argparse takes a value that starts with "-" and is
    not a plain number for an option of its own, and most real ranges start below zero."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] in RANGE_OPTIONS and _NEGATIVE_RANGE.fullmatch(token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def _graph_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3xHxW",
                   help="concrete shape for an input with dynamic dims (repeatable)")
    p.add_argument("--role", action="append", default=[], metavar="NAME=ROLE",
                   help="override an input/output role: latent, label, image, condition, tensor")
    p.add_argument("--input-range", metavar="LO,HI", help="value range of image inputs (default: from the model)")
    p.add_argument("--output-range", metavar="LO,HI", help="value range of image outputs (default: from the model)")


def _graph_options(args) -> dict:
    from .graph import parse_shape
    from .roles import parse_overrides, parse_range
    from .specs import ROLES

    shapes = {k: parse_shape(v) for k, v in parse_overrides(",".join(args.input_shape), "--input-shape").items()}
    roles = parse_overrides(",".join(args.role), "--role")
    for name, role in roles.items():
        if role not in ROLES:
            raise RequestError(f"--role {name}={role}: unknown role; use one of {', '.join(ROLES)}")
    return {"input_shapes": shapes, "roles": roles,
            "input_range": parse_range(args.input_range, "--input-range") if args.input_range else None,
            "output_range": parse_range(args.output_range, "--output-range") if args.output_range else None}


_STAGE: dict[str, Any] = {"name": None, "since": 0.0}  # the stage under way, for --verbose


def _progress(stage: str, done: int, total: int) -> None:
    """The progress bar on a terminal, and with --verbose a line per stage with the time the last one took;
    also where a SIGTERM whose exception Python discarded (raised while a __del__ or a callback ran,
    "Exception ignored in ...") stops the work after all."""
    if _TERMINATED.is_set():
        raise _Terminated()
    if stage != _STAGE["name"]:
        now = time.perf_counter()
        took = f" ({_STAGE['name']} took {now - _STAGE['since']:.2f} s)" if _STAGE["name"] else ""
        logging.getLogger("edgegen").info("%s%s", stage if stage == "done" else f"{stage} ...", took)
        _STAGE.update(name=stage, since=now)
    if sys.stderr.isatty():
        width = 20
        filled = int(width * done / max(total, 1))
        print(f"\r  {stage:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr)
        if stage == "done" or (done == total > 1):  # a finished bar keeps its line
            print(file=sys.stderr)


def _build(args) -> int:
    from .build import BuildOptions
    from .report import render_build_report
    from .scale.fleet import build_fleet

    options = BuildOptions(precision=args.precision, samples=args.samples, min_psnr=args.min_psnr,
                           min_ssim=args.min_ssim, calibration=args.calibration,
                           calibration_count=args.calibration_count, calibration_method=args.calibration_method,
                           prune=args.prune, prune_to_macs=args.prune_to_macs, bitstream=args.bitstream,
                           graph_options=_graph_options(args), **_serving_options(args))
    for result in build_fleet(args.model, args.target, args.out, options, args.executor, args.ray_address,
                              progress=_progress):
        print(render_build_report(result.manifest, result.out))
    return 0


def _inspect(args) -> int:
    from .inspect import inspect_model, render

    report = inspect_model(args.model, **_graph_options(args))
    print(json.dumps(report, indent=2) if args.json else render(report, nodes=args.nodes))
    return 0


def _targets(args) -> int:
    from .inspect import target_rows

    rows = target_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'target':<26} {'backend':<12} {'precisions':<20} {'runs here':<9} device / why not")
    for r in rows:
        note = f"{r['device']} (runs on: {r['why']})" if r["runs_here"] else r["why"]
        note += "".join(f"; not {p}: {why}" for p, why in r["precisions_not_here"].items())
        print(f"{r['name']:<26} {r['backend']:<12} {','.join(r['precisions']):<20} "
              f"{'yes' if r['runs_here'] else 'no':<9} {note}")
    return 0


def _read_array(path: str):
    """A .npy array for an input given by name (a float map, a latent)."""
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RequestError(f"{path}: cannot read the array ({first_line(exc)}); give a .npy file written by "
                           "numpy.save") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under an .npy name
        raise RequestError(f"{path}: an .npz archive of {len(array.files)} array(s), not one array; give a .npy "
                           "file written by numpy.save")
    return array


def _generate(args) -> int:
    from .image_files import read_image
    from .runtime import Generator
    from .runtime.requests import FIELDS as REQUEST_FIELDS

    gen = Generator.open(args.bundle, threads=args.threads, host_fallback=args.host_fallback)
    channels = {s.name: s.default_shape[1] for s in gen.inputs if s.role == "image"}  # 4: its alpha kept
    image = read_image(args.image, next(iter(channels.values()), 3)) if args.image else None
    named, pictures = {}, set()  # inputs given as image files, by name
    for item in args.input:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise RequestError(f"--input {item!r}: give NAME=FILE, e.g. --input mask=mask.png")
        if name in REQUEST_FIELDS:
            raise RequestError(f"--input {item!r}: {name} is a request field; use --{name}")
        if name in named:
            raise RequestError(f"--input {item!r}: {name} is given twice; give each input once")
        if path.endswith(".npy"):
            named[name] = _read_array(path)
        else:
            named[name] = read_image(path, channels.get(name, 3))
            pictures.add(name)
    for spec in gen.inputs:
        if spec.name in pictures and spec.role != "image":  # a .npy goes to the runtime's own checks
            raise RequestError(f"--input {spec.name}=...: {spec.name!r} is a {spec.role} input ({spec.dtype} "
                               f"{'x'.join(map(str, spec.default_shape[1:]))}), not an image: give it as a .npy array "
                               f"of that shape and dtype" + (", or leave it out to draw it from --seed"
                                                             if spec.role == "latent" else ""))
    roi = None
    if args.roi:
        try:
            roi = tuple(int(v) for v in args.roi.split(","))
        except ValueError:
            raise RequestError(f"--roi {args.roi!r}: give X,Y,WIDTH,HEIGHT in pixels, e.g. 0,0,32,32") from None
    pixels = gen.generate(seed=args.seed, label=args.label, image=image, output=args.output_name, size=args.size,
                          quality=args.quality, roi=roi, **named)
    _save_image(pixels, Path(args.out))
    print(f"wrote {args.out} ({pixels.shape[1]}x{pixels.shape[0]})")
    return 0


def _save_image(pixels: Any, out: Path) -> None:
    """Write HxWxC uint8 pixels in the format out's extension names, with Pillow; without it (a device
    install) a .png by the runtime's own PNG writer, any other format refused naming Pillow."""
    from .runtime.images import PillowMissing, pillow_image, to_pil
    from .runtime.png import encode_png

    suffix = out.suffix.lower()
    try:
        pil = pillow_image(f"writing a {suffix or 'file without an extension'} image")
    except PillowMissing as exc:
        if suffix != ".png":
            raise RequestError(f"{out}: {exc}, or write a .png") from None
        pil = None
    fmt = pil.registered_extensions().get(suffix) if pil else "PNG"
    if fmt is None:
        raise RequestError(f"{out}: unknown image file extension; use .png or .jpg")
    if fmt == "JPEG" and pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        raise RequestError(f"{out}: JPEG holds no alpha channel, and the image has one ({pixels.shape[2]} "
                           "channels); write a .png")
    with atomic_path(out) as tmp:
        if pil is None:
            tmp.write_bytes(encode_png(pixels, level=6))
        else:
            to_pil(pixels).save(tmp, format=fmt)


def _bench(args) -> int:
    from . import bench

    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise RequestError(f"--threads {args.threads!r}: give comma-separated integers, e.g. 1,2") from None
    if min(threads) < 1 or len(set(threads)) < len(threads):  # 0 failed in the worker; a repeat ran twice
        raise RequestError(f"--threads {args.threads!r}: give distinct thread counts >= 1, e.g. 1,2")
    result = bench.run(args.bundle, threads, batch=args.batch, runs=args.runs, warmup=args.warmup,
                       baseline=args.baseline, source=args.source, host_fallback=args.host_fallback)
    print(bench.table(result))
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def _zoo(args) -> int:
    from . import zoo

    for name in zoo.names():
        print(f"zoo:{name:<14} {zoo.card(name)}")
    return 0


def _precompute(args) -> int:
    from .precompute import add_assets

    summary = add_assets(args.bundle, args.requests, progress=_progress, executor=args.executor,
                         address=args.ray_address, workers=args.workers)
    print(f"{args.bundle}: {summary['count']} precomputed asset(s), rendered on {summary['rendered_on']}")
    return 0


def _serve(args) -> int:
    from .runtime.server import serve

    serve(args.bundle, host=args.host, port=args.port, threads=args.threads, host_fallback=args.host_fallback,
          max_batch=args.max_batch, max_delay_us=args.max_delay_us, cache_bytes=int(args.cache_mb * 2 ** 20),
          disk_cache=args.disk_cache, disk_cache_bytes=int(args.disk_cache_mb * 2 ** 20),
          announce=lambda url: print(f"serving {args.bundle} at {url} (Ctrl-C stops)", flush=True))
    return 0


def _emulate(args) -> int:
    from .emulate import SCHEMA  # light: the first report is written before the emulator's modules load

    def stopped_early(check: str, detail: str) -> dict[str, Any]:
        """The report of a run that stopped before its checks: a CI step reads its verdict there, never an
        earlier run's."""
        return {"schema": SCHEMA, "bundle": args.bundle, "target": _emulated_target(args),
                "checks": [{"name": check, "pass": False, "detail": detail}], "pass": False}

    written = False
    try:
        if args.json:  # replaced at the end; what stays where this run is killed (SIGKILL, out of memory) or crashes
            write_text(args.json, _strict_json(stopped_early(
                "emulation finished", "it did not: the run writing this report was still going, or ended without "
                "writing its verdict (killed, or an internal error: see its stderr)")))
        from .emulate.device import emulate
        from .emulate.render import emulation

        try:
            report = emulate(args.bundle, target=args.target, runs=args.runs, rebuild=args.rebuild,
                             aarch64=not args.no_aarch64, rtl=not args.no_rtl)
        except EdgegenError as exc:
            if args.json:
                check = "bundle intact" if isinstance(exc, DamagedBundle) else "emulation runs here"
                write_text(args.json, _strict_json(stopped_early(check, str(exc))))
                written = True
            if isinstance(exc, DamagedBundle):
                return _failed_check(exc)
            raise
        if args.json:  # before the text: a reader of stdout that stops early (`| head`) leaves the report whole
            write_text(args.json, _strict_json(report))
            written = True
        print(emulation(report))
    except (KeyboardInterrupt, _Terminated) as exc:  # the previous run's report (a PASS, for another bundle) stayed
        if args.json and not written:
            how = "interrupted (Ctrl-C, exit 130)" if isinstance(exc, KeyboardInterrupt) else \
                "stopped by SIGTERM (exit 143: a CI step's timeout, say)"
            _write_undisturbed(args.json, _strict_json(stopped_early(
                "emulation finished", f"it did not: {how} before its checks completed, so there is no verdict; "
                "run it again to its end")))
        raise
    return 0 if report["pass"] else 3


def _emulated_target(args) -> str | None:
    """The target an emulate run is for, where known: --target's name (or as given, where it names no target
    file), else the one the bundle's manifest records (None where that cannot be read)."""
    from . import targets
    from .bundle import read_manifest

    try:
        if args.target:
            return targets.load(args.target).name
        return str(read_manifest(args.bundle)["target"]["name"])
    except Exception:  # a label for a report that says why the run stopped: the reason is in its check
        return args.target or None


def _write_undisturbed(path: str, text: str) -> None:
    """write_text with SIGINT and SIGTERM held until it is done (a second Ctrl-C in a row must not leave the
    previous report in place); they arrive afterwards."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        write_text(path, text)
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        write_text(path, text)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _strict_json(report: dict[str, Any]) -> str:
    """A report as strict JSON: a NaN or infinite number is null (the check's detail says it was not finite)."""
    def finite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    return json.dumps(finite(report), indent=2, default=str, allow_nan=False) + "\n"


def _verify(args) -> int:
    from .emulate.render import self_test
    from .verify import verify

    try:
        result = verify(args.bundle, threads=args.threads, runs=args.runs)
    except DamagedBundle as exc:
        return _failed_check(exc)
    print(self_test(result))
    return 0 if result["pass"] else 3


def _failed_check(exc: DamagedBundle) -> int:
    """A bundle that does not hold together fails verify and emulate (exit 3), as its self-test failing would."""
    print(f"FAIL  {exc}", file=sys.stderr)
    return 3


def main_exit() -> None:
    """Console-script entry point. Once the command has finished (its outputs published, its exit code
    known), a Ctrl-C or SIGTERM while the interpreter shuts down changes nothing: it is ignored."""
    code = main()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    main_exit()
