"""Fleet builds: one model for several targets, one bundle per target in OUT/<target>, built here
one after the other (`local`) or as one Ray task per target (`ray`).

A Ray task builds into a temporary directory on its node and returns the bundle's files; the
driver publishes each bundle atomically (staging + rename) as its task finishes, so a fleet
needs no shared filesystem for its output. Model, calibration and request files must be readable
at the same path on every node (`zoo:` models always are).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from .. import bundle, targets
from ..build import BuildOptions, BuildResult, Progress, build, target_precision
from ..errors import BuildError, EdgegenError
from ..fileio import owner, remove_orphans
from . import check_executor, cluster

TASK_RETRIES = 2  # a task whose worker died is run again this many times
FLEET_PREFIX = "edgegen-fleet-"  # a Ray task's build directory in the worker's temporary directory
WAIT_S = 0.5  # the longest wait for a task between two calls of the progress callback


def destinations(out: str | Path, names: list[str], precision: str | None) -> dict[str, Path]:
    """Where each target's bundle goes: `out` itself for one target, `out/<target name>` for several
    (a target given as a .yaml path goes by its name). Every target is loaded and checked for the
    precision here, before anything builds."""
    out = Path(out)
    loaded = [targets.load(name) for name in names]
    if len({tgt.name for tgt in loaded}) != len(loaded):
        raise BuildError(f"--target lists a target twice ({', '.join(names)}); name each once")
    for tgt in loaded:
        target_precision(tgt, precision)
    if len(names) > 1 and bundle.is_bundle(out):
        raise BuildError(f"{out}: is a bundle; a build for several targets writes one bundle per target into "
                         f"{out}/<target name>. Choose a new or empty --out directory.")
    return {name: out / tgt.name if len(names) > 1 else out for name, tgt in zip(names, loaded)}


def build_fleet(model: str, names: list[str], out: str | Path, options: BuildOptions, executor: str = "local",
                address: str | None = None, progress: Progress | None = None) -> Iterator[BuildResult]:
    """Build `model` for every target in `names`, yielding each published bundle's result (in target
    order locally, as they finish on Ray). A target whose build fails does not stop the others: the
    fleet then ends in a BuildError naming each failed target with its error (one target: its error)."""
    check_executor(executor, address)
    dests = destinations(out, names, options.precision)
    for dest in dests.values():
        bundle.check_output_dir(dest)
    from ..graph import Graph

    # the model and its options (a missing or unreadable model, a bad --input-shape) are said once, before Ray starts
    graph = Graph.load(model, **options.graph_options)
    failures: dict[str, EdgegenError] = {}
    if executor == "ray":
        del graph  # each worker loads the model itself: the driver need not hold it for the whole run
        yield from _on_ray(model, dests, options, address, failures, progress or (lambda *_: None))
    else:
        for name, dest in dests.items():
            try:
                yield build(graph, name, dest, options, progress=progress)
            except EdgegenError as exc:
                failures[name] = exc
    if len(dests) == 1 and failures:
        raise next(iter(failures.values()))
    if failures:
        built = [name for name in dests if name not in failures]
        raise BuildError(f"{len(failures)} of {len(dests)} targets failed (built: {', '.join(built) or 'none'}):\n"
                         + "\n".join(f"  {name}: {exc}" for name, exc in failures.items()))


def _on_ray(model: str, dests: dict[str, Path], options: BuildOptions, address: str | None,
            failures: dict[str, EdgegenError], progress: Progress) -> Iterator[BuildResult]:
    """The fleet as one Ray task per target, each bundle published as its task ends. `progress` is called at
    least every WAIT_S seconds while they run: a caller's signal handler that raised inside Ray's wait (which
    parks the exception until the wait ends, 11-14 s for a SIGTERM) gets to stop the fleet there."""
    model, options = _absolute(model), replace(options, calibration=_absolute(options.calibration),
                                               precompute=_absolute(options.precompute),
                                               preview_upscale=_absolute(options.preview_upscale))
    try:
        with cluster.connect(address) as ray:
            task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(build_files)
            pending = {task.remote(model, name, options): name for name in dests}
            try:
                while pending:
                    progress("fleet", len(dests) - len(pending), len(dests))
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                    if not ready:
                        continue
                    ref = ready[0]
                    name = pending.pop(ref)
                    try:
                        with cluster.user_errors(ray, "fleet build"):
                            files = ray.get(ref)
                    except EdgegenError as exc:
                        failures[name] = exc
                        continue
                    yield _publish(files, dests[name])
            finally:
                for ref in pending:
                    ray.cancel(ref, force=True)
    finally:  # the build directories of this host's workers that a cancel killed
        remove_orphans(Path(tempfile.gettempdir()), FLEET_PREFIX, "-.+")


def build_files(model: str, target: str, options: BuildOptions) -> dict[str, bytes]:
    """Build one bundle in a temporary directory and return its files (run as a Ray task). The directory is
    named after the worker process, so one that a cancelled task's killed worker left is removed by the next
    task on that host."""
    remove_orphans(Path(tempfile.gettempdir()), FLEET_PREFIX, "-.+")
    with tempfile.TemporaryDirectory(prefix=f"{FLEET_PREFIX}{owner()}-") as tmp:
        out = Path(tmp) / target
        with cluster.on_worker_node():
            build(model, target, out, options)
        return {file.relative_to(out).as_posix(): file.read_bytes() for file in out.rglob("*") if file.is_file()}


def _publish(files: dict[str, bytes], dest: Path) -> BuildResult:
    staging = bundle.staging_dir(dest)
    try:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        manifest = bundle.read_manifest(staging)
        bundle.verify_files(staging, manifest)
        bundle.publish(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(dest, manifest)


def _absolute(value: str | None) -> str | None:
    """A path that exists here, made absolute (Ray workers run elsewhere); anything else as it is."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value
