"""Bundles: a directory with `manifest.json`, the backend artifact and reference data.

Standard library only, so the on-device runtime can read and verify bundles. Bundles are
written into a temporary sibling directory and moved into place with renames, so a reader
never sees half a bundle and an interrupted build leaves the previous one intact.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import BuildError, BundleError, DamagedBundle, OutputPathError
from .fileio import (as_created, check_name_lengths, followed, fsync_path, orphans, output_place, owner, remove_orphans,
                     remove_tree, short_name, write_text)
from .specs import spec_problem

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
FORMAT = "edgegen-bundle"
ASSETS_DIR = "assets"
REQUIRED_KEYS = ("model", "target", "session", "reference", "files")
RUNTIME_DIRS = ("parts", "npu", ASSETS_DIR)  # what the runtime loads besides the entry and the reference


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


MAX_MANIFEST_BYTES = 64 << 20  # far above any manifest; a link to /dev/zero would be read forever


def is_bundle(path: Path) -> bool:
    """True when path holds an edgegen manifest."""
    try:
        return json.loads(_manifest_text(Path(path))).get("format") == FORMAT
    except (OSError, ValueError, AttributeError, BundleError):
        return False


def _manifest_text(path: Path) -> str:
    """The text of a bundle directory's manifest; FileNotFoundError where there is none, DamagedBundle where it
    is no regular file (a directory, a FIFO, a link to a device) or past MAX_MANIFEST_BYTES."""
    file = path / MANIFEST
    if not file.exists():
        raise FileNotFoundError(errno.ENOENT, "no manifest", str(file))
    if not file.is_file() or file.stat().st_size > MAX_MANIFEST_BYTES:
        what = "not a regular file" if not file.is_file() else f"{file.stat().st_size} bytes, no manifest"
        raise DamagedBundle(f"{file}: {what} (a damaged bundle). Rebuild the bundle or copy it again.")
    return file.read_text()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a bundle directory; BundleError when there is none or it is unreadable."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory. Build one with `edgegen build MODEL --target NAME --out DIR`.")
    try:
        manifest = json.loads(_manifest_text(path))
    except FileNotFoundError:
        raise BundleError(f"{path}: not a bundle ({MANIFEST} is missing). Rebuild it with `edgegen build`.") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise DamagedBundle(f"{path / MANIFEST}: not valid JSON ({exc}). The bundle is damaged; rebuild it.") from None
    except OSError as exc:  # unreadable: permissions, an I/O error
        raise DamagedBundle(f"{path / MANIFEST}: cannot be read ({exc.strerror}). Fix its permissions, or copy the "
                            "bundle again.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DamagedBundle(f"{path / MANIFEST}: not an edgegen manifest. Rebuild the bundle with `edgegen build`.")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{path}: bundle schema version {manifest.get('schema_version')!r} is not the "
                          f"{SCHEMA_VERSION} this edgegen reads. Rebuild it with this version of edgegen.")
    missing = [key for key in REQUIRED_KEYS if not isinstance(manifest.get(key), dict)]
    if missing:
        raise DamagedBundle(f"{path / MANIFEST}: has no {', '.join(missing)} (a damaged or edited manifest). Rebuild "
                          "the bundle or copy it again.")
    _check_types(path, manifest)
    _check_listing(path, manifest)
    return manifest


def _check_types(path: Path, manifest: dict[str, Any]) -> None:
    """The values the runtime reads on opening, of the types it reads them as."""
    def fits(value: Any, kind: type, least: float | None) -> bool:
        return isinstance(value, kind) and not isinstance(value, bool) and (least is None or value >= least)

    for keys, kind, least, what in ((("backend",), str, None, "a backend name"),
                                    (("precision",), str, None, "a precision name"),
                                    (("target", "name"), str, None, "a target name"),
                                    (("target", "threads"), int, 1, "an integer >= 1"),
                                    (("target", "memory_mb"), int, 1, "an integer number of MiB >= 1")):
        value = manifest
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not fits(value, kind, least):
            raise DamagedBundle(f"{path / MANIFEST}: {'.'.join(keys)} is {value!r}, not {what} (a damaged or edited "
                                "manifest). Rebuild the bundle or copy it again.")
    bad = next((name for name, digest in manifest["files"].items() if not isinstance(digest, str)), None)
    if bad is not None:
        raise DamagedBundle(f"{path / MANIFEST}: files[{bad!r}] is not a sha256 (a damaged or edited manifest). "
                            "Rebuild the bundle or copy it again.")
    problem = _kind_problem(manifest)
    if problem:
        raise DamagedBundle(f"{path / MANIFEST}: {problem} (a damaged or edited manifest). Rebuild the bundle or "
                            "copy it again.")


def _kind_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the backend and precision, the tensor specs, and the sections the runtime reads."""
    from .backends import OPTIONS, PRECISIONS, option_problem

    if manifest["backend"] not in PRECISIONS:
        return f"backend is {manifest['backend']!r}, not one of {', '.join(PRECISIONS)}"
    if manifest["precision"] not in PRECISIONS[manifest["backend"]]:
        return f"precision is {manifest['precision']!r}, not one {manifest['backend']} runs"
    for where, holder in (("model", manifest["model"]), *((f"parts.{n}", p) for n, p in _parts(manifest))):
        for kind in ("inputs", "outputs"):
            specs = holder.get(kind)
            if not isinstance(specs, list):
                return f"{where}.{kind} is not a list of tensor specs"
            problem = next(filter(None, map(spec_problem, specs)), None)
            if problem:
                return f"{where}.{kind}: {problem}"
        if not holder["outputs"]:
            return f"{where}.outputs lists no output (the self-test would compare nothing)"
    carried = {} if manifest["backend"] == "fpga" else manifest["session"]  # the NPU's session is its own (a
    # bitstream's record, the NPU's config), checked when it opens
    options = next(filter(None, (option_problem(manifest["backend"], key, value) for key, value in
                                 carried.items() if key in OPTIONS[manifest["backend"]])), None)
    if options:  # the target's backend options the session carries (providers: a string read as its letters)
        return f"session: {options}"
    entry, ref_file = manifest["session"].get("entry"), manifest["reference"].get("file")
    if not (isinstance(entry, str) and entry) or not (isinstance(ref_file, str) and ref_file):
        return f"session.entry ({entry!r}) or reference.file ({ref_file!r}) is not a file name"
    for section in ("parts", "batching", "threading", "serving", "assets", "latency", "fidelity"):
        if section in manifest and not isinstance(manifest[section], dict):
            return f"{section} is {manifest[section]!r}, not a mapping"
    tolerance = manifest["reference"].get("tolerance")  # the self-test's criteria: an empty one would pass anything
    criteria, own_key = {"max_abs", "min_psnr_db"}, "output_min_psnr_db"  # own: {output: dB} beside the images
    own_abs = "output_max_abs"  # {output: max-abs} where an fp32 output's own differs (a [0, 255] image's)
    plain = {k: v for k, v in tolerance.items() if k not in (own_key, own_abs)} if isinstance(tolerance, dict) \
        else None
    if not isinstance(plain, dict) or not criteria & set(plain) or set(plain) - criteria or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")
            for v in plain.values()):
        return f"reference.tolerance is {tolerance!r}, not max_abs and/or min_psnr_db as positive finite numbers"
    own, names = tolerance.get(own_key, {}), [o["name"] for o in manifest["model"]["outputs"]]
    if not isinstance(own, dict) or set(own) - set(names) or any(  # may be <= 0: over an unbounded output's unit range
            isinstance(v, bool) or not isinstance(v, (int, float)) or not -float("inf") < v < float("inf")
            for v in own.values()):
        return (f"reference.tolerance.{own_key} is {own!r}, not a mapping of the model's outputs "
                f"({', '.join(names)}) to finite PSNRs in dB")
    limits = tolerance.get(own_abs, {})
    if not isinstance(limits, dict) or set(limits) - set(names) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")
            for v in limits.values()):
        return (f"reference.tolerance.{own_abs} is {limits!r}, not a mapping of the model's outputs "
                f"({', '.join(names)}) to positive finite max-abs limits")
    return None


def _parts(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The manifest's parts (trunk, head, preview) that are mappings; a part of another kind is left to the
    parts section's own check."""
    parts = manifest.get("parts")
    return [(name, part) for name, part in parts.items() if isinstance(part, dict)] if isinstance(parts, dict) else []


def _check_listing(path: Path, manifest: dict[str, Any]) -> None:
    """Every file the runtime loads must be listed with its sha256: the session's entry (and an OpenVINO IR's
    weights beside it), the reference data, and everything under the parts, NPU and asset directories; a
    manifest that drops a file's entry would otherwise vouch for whatever is there."""
    entry = Path(manifest["session"].get("entry", ""))
    loaded = {entry.as_posix(), manifest["reference"].get("file", "")} if entry.name else set()
    if entry.suffix == ".xml":
        loaded.add(entry.with_suffix(".bin").as_posix())
    for folder in RUNTIME_DIRS:
        loaded.update(p.relative_to(path).as_posix() for p in (path / folder).rglob("*") if p.is_file())
    unlisted = sorted(name for name in loaded if name and name not in manifest["files"] and (path / name).exists())
    if unlisted:
        raise DamagedBundle(f"{path}: {unlisted[0]!r} is not listed with its sha256 in {MANIFEST} (a damaged or edited "
                          "manifest cannot vouch for it). Rebuild the bundle or copy it again.")


def verify_files(path: str | Path, manifest: dict[str, Any]) -> None:
    """Check every file listed in the manifest against its sha256; name the first that differs."""
    path = Path(path)
    for name, expected in sorted(manifest.get("files", {}).items()):
        file = path / name
        if not file.is_file():
            raise DamagedBundle(f"{path}: file {name!r} listed in the manifest is missing. Rebuild or re-copy the "
                                "bundle.")
        if sha256_file(file) != expected:
            raise DamagedBundle(f"{path}: file {name!r} does not match its sha256 in the manifest (modified or "
                              "corrupted). Refusing to load it; rebuild or re-copy the bundle.")


def check_output_dir(out: Path, precompute: bool = False) -> None:
    """Refuse to build into a directory that holds anything but an edgegen bundle (a bundle is replaced
    whole, so a file its manifest does not list would be lost), that holds the working directory, or whose
    name is longer than its file system takes. A symbolic link is followed: the bundle it points to is checked.
    precompute: the check is for `edgegen precompute` into out, which has no --out to advise."""
    check_name_lengths(out)
    out = followed(out)
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: exists and is not a directory. Choose another --out.")
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        fix = f"Run it from outside the bundle: cd {out.resolve().parent} && edgegen precompute " \
            f"{out.resolve().name} REQUESTS" if precompute else "Give a directory name, e.g. --out ./bundle"
        raise BuildError(f"{out}: is the working directory or holds it; a bundle is published by moving a whole "
                         f"directory into place. {fix}.")
    outer = next((parent for parent in out.resolve().parents if is_bundle(parent)), None)
    if outer is not None:  # its files would be ones the outer bundle does not list: it would stop loading
        raise BuildError(f"{out}: is inside the bundle {outer}, which holds only its own files (one it does not list "
                         "makes it refuse to load); choose an --out outside it.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_bundle(out):
        raise BuildError(f"{out}: the directory holds other files and is not an edgegen bundle; edgegen will not "
                         "overwrite it. Choose an empty or new --out directory.")
    unlisted = unlisted_files(out)
    if unlisted:
        raise BuildError(f"{out}: holds {len(unlisted)} file(s) the bundle does not list ({', '.join(unlisted[:3])}"
                         f"{', ...' if len(unlisted) > 3 else ''}); a rebuild replaces the whole directory, so edgegen "
                         "will not overwrite it. Move those files elsewhere or choose another --out.")


def unlisted_files(path: Path) -> list[str]:
    """Files under a bundle directory that its manifest does not list (the user's own), and symbolic links (one
    to a directory of the user's data, not counted as a file, was removed with the old bundle)."""
    listed = set(json.loads((path / MANIFEST).read_text()).get("files", {})) | {MANIFEST}
    return sorted(rel for rel in (p.relative_to(path).as_posix() for p in path.rglob("*")
                                  if p.is_symlink() or not p.is_dir())
                  if rel not in listed)


def staging_dir(out: Path) -> Path:
    """A fresh temporary directory beside out (same filesystem, so the final move is a rename), named
    after this host and process; earlier ones of processes that died without cleaning up are removed."""
    out = followed(out)
    with output_place(out):
        _clean_beside(out)
        staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(out), suffix=".tmp", dir=out.parent))
    as_created(staging, directory=True)
    return staging


def _temp_prefix(out: Path) -> str:
    """The start of the names of out's temporaries (staging, a retired old bundle): this host's and process's
    tag after out's name, shortened where long (a 240-byte --out name gave an over-long staging name)."""
    return f".{short_name(out.name)}.{owner()}."


def _clean_beside(out: Path) -> None:
    """Remove the staging and retired directories beside out of processes that died; a retired bundle whose
    process died between publish's two renames, out missing, is put back first."""
    prefix = f".{short_name(out.name)}."
    for retired in orphans(out.parent, prefix, r"\.[^.]+\.old"):
        if not os.path.lexists(out):
            os.replace(retired, out)
    remove_orphans(out.parent, prefix, r"\.[^.]+\.(tmp|old)")


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under a bundle directory (but the manifest), by relative path."""
    return {file.relative_to(directory).as_posix(): sha256_file(file)
            for file in sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name != MANIFEST)}


def content_hash(manifest: dict[str, Any]) -> str:
    """The bundle's content hash: sha256 over what decides its pixels: the hashes of its files except the
    precomputed assets (adding assets does not change what the bundle computes), its serving settings and
    parts, its inputs' and outputs' specs (an output's range maps the tensor to pixels: two builds of one model
    with another `--output-range` hold the same files), and the backend, precision and session settings it
    is opened with (OpenVINO's fp32 and bf16 bundles of one model hold the same files: bf16 is a session
    setting). With the files alone such bundles shared a hash, so a disk cache or a Ray node's bundle copy
    served the one's pixels for the other. Every cache key starts with it."""
    model = manifest.get("model", {})
    decides = {**{key: manifest.get(key) for key in ("backend", "precision", "session", "serving", "parts")},
               "inputs": model.get("inputs"), "outputs": model.get("outputs")}
    digest = hashlib.sha256(json.dumps(decides, sort_keys=True).encode())
    files = manifest.get("files", {})
    for name, sha in sorted(files.items()):
        if not name.startswith(ASSETS_DIR + "/"):
            digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()


def write_manifest(staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file in staging into the manifest and write it; return the final manifest."""
    files = file_hashes(staging)
    manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **manifest, "files": files}
    write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def publish(staging: Path, out: Path) -> None:
    """Move a finished staging directory to out, replacing an older bundle there: in one atomic swap
    where the filesystem offers it (Linux renameat2), so out always holds a whole bundle, old or new,
    whenever the process stops; elsewhere by two renames. A symbolic link at out is followed (see
    `followed`). The new bundle's files and directories are synced to the disk before the swap, and the
    swap after it, so a power loss cannot leave out naming files whose data never reached the disk."""
    check_output_dir(out)
    out = followed(out)
    _sync_tree(staging)
    try:
        if not out.exists():
            os.replace(staging, out)
        elif _exchange(staging, out):
            remove_tree(staging)  # it now holds the old bundle
        else:
            _replace_by_renames(staging, out)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        raise OutputPathError(f"{out}: its file system will not move this directory (Invalid cross-device link: "
                              "a directory in a container image's lower overlayfs layer, for one), so edgegen cannot "
                              "replace it; the bundle there is unchanged. Copy the bundle into a writable directory "
                              f"(cp -a {out} NEW) and update the copy, or build to another --out.") from None
    fsync_path(out.parent, directory=True)


def _sync_tree(root: Path) -> None:
    """fsync every file under root and every directory, root last, in one walk."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder, directory=True)


def _replace_by_renames(staging: Path, out: Path) -> None:
    """Replace out by staging without an exchange: out is moved aside (named like staging, so a killed
    process's is found by `_clean_beside`), staging moved in, the old one removed; where the second rename
    does not happen (an error, Ctrl-C, SIGTERM), the old bundle is put back."""
    retired = Path(tempfile.mkdtemp(prefix=_temp_prefix(out), suffix=".old", dir=out.parent))
    os.rmdir(retired)
    try:
        os.replace(out, retired)
        os.replace(staging, out)
    finally:
        if not os.path.lexists(out) and os.path.lexists(retired):
            os.replace(retired, out)
        remove_tree(retired)


@contextlib.contextmanager
def updating(out: Path, waiting: str) -> Iterator[None]:
    """Hold an flock on the bundle directory itself while it is read, changed and published: a second
    update waits (`waiting` is logged), then takes the bundle the first published (the lock it waited
    for went with the directory the first replaced, so it locks the new one)."""
    while True:
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logging.getLogger(__name__).warning("%s", waiting)
                fcntl.flock(fd, fcntl.LOCK_EX)
            held, now = os.fstat(fd), os.stat(out)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                yield
                return
        finally:
            os.close(fd)


def publish_when_free(staging: Path, out: Path) -> None:
    """publish, once no `edgegen precompute` is adding to the bundle at out (one that had read the old bundle
    published it over the new one)."""
    if not out.is_dir():
        publish(staging, out)
        return
    with updating(out, f"{out}: an `edgegen precompute` is adding to this bundle; the new build waits for it"):
        publish(staging, out)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (renameat2 RENAME_EXCHANGE); False where the C library, kernel or
    filesystem does not offer it."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
    if rename(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    if code == errno.EBUSY:  # a mount point (a volume mounted at the bundle's own path) cannot be swapped out
        raise OutputPathError(f"{b}: is a mount point (or otherwise in use), so edgegen cannot replace it with the "
                              f"new bundle in one step; write the bundle into a directory inside it (e.g. {b}/bundle)")
    raise OSError(code, os.strerror(code), str(b))


def bundle_bytes(path: Path, manifest: dict[str, Any]) -> int:
    """Total size of the files a bundle lists, plus its manifest."""
    return sum((path / name).stat().st_size for name in manifest.get("files", {})) + (path / MANIFEST).stat().st_size
