"""Publishing bundles and written files: symbolic links at --out, syncing to the disk, file systems that refuse
the swap, the two-rename fallback, long names, and a directory where a file is to be written."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgegen import bundle
from edgegen.build import build
from edgegen.bundle import FORMAT, MANIFEST, check_output_dir, publish, read_manifest, staging_dir
from edgegen.cli import main
from edgegen.errors import BuildError, OutputPathError
from edgegen.fileio import write_text


def fake_bundle(path: Path, text: str) -> Path:
    """A directory that passes as a bundle to publish: x.txt, what else it holds, and a manifest listing them."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "x.txt").write_text(text)
    files = {p.relative_to(path).as_posix(): "0" * 64 for p in path.rglob("*") if p.is_file()}
    (path / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}))
    return path


def publish_new(out: Path, text: str) -> None:
    """Stage a new bundle beside out and publish it, as build and precompute do."""
    staging = staging_dir(out)
    try:
        fake_bundle(staging, text)
        publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def dead_pid() -> str:
    """The pid of a process of this host that has ended."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()


def without_exchange(monkeypatch) -> None:
    """As on a C library without renameat2 (macOS, older musl): publish falls back to two renames."""
    monkeypatch.setattr(bundle, "_exchange", lambda a, b: False)


def test_publishing_through_a_symlink_updates_the_bundle_it_points_to_and_keeps_the_link(tmp_path):
    """The exchange swapped the user's `current -> v7` link away into a never-removed `.current.*.tmp`,
    made `current` a second full copy, and left v7 as it was."""
    fake_bundle(tmp_path / "v7", "old")
    (tmp_path / "current").symlink_to("v7")
    publish_new(tmp_path / "current", "new")
    assert os.readlink(tmp_path / "current") == "v7"
    assert (tmp_path / "v7" / "x.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v7"]


@pytest.mark.parametrize("existing", [True, False])
def test_build_out_through_a_symlink_builds_where_it_points(tmp_path, cgen_path, existing):
    if existing:
        fake_bundle(tmp_path / "v7", "old")
    (tmp_path / "current").symlink_to("v7")
    build(cgen_path, "x86-onnxruntime", tmp_path / "current")
    assert (tmp_path / "current").is_symlink() and read_manifest(tmp_path / "v7")["backend"] == "onnxruntime"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v7"]


def test_precompute_through_a_symlink_updates_the_bundle_it_points_to(tmp_path, ort_bundle, capsys):
    shutil.copytree(ort_bundle, tmp_path / "v7")
    (tmp_path / "current").symlink_to("v7")
    (tmp_path / "r.yaml").write_text("- {seed: 1, label: 2}\n")
    assert main(["precompute", str(tmp_path / "current"), str(tmp_path / "r.yaml")]) == 0
    assert read_manifest(tmp_path / "v7")["assets"]["count"] == 1
    assert os.readlink(tmp_path / "current") == "v7"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "r.yaml", "v7"]


def synced_paths(monkeypatch) -> list:
    """Record each fsync (by the path of its descriptor) and each rename, in order."""
    events, real_fsync, real_replace, real_exchange = [], os.fsync, os.replace, bundle._exchange

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("rename", str(dst)))

    def exchange(a, b):
        done = real_exchange(a, b)
        events.append(("rename", str(b)))
        return done

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(bundle, "_exchange", exchange)
    return events


@pytest.mark.parametrize("replacing", [True, False])
def test_publish_syncs_every_staged_file_and_directory_before_the_swap_and_the_parent_after(
        tmp_path, monkeypatch, replacing):
    """Nothing was fsynced: after a power loss the swapped-in bundle could hold zero-length files."""
    out = tmp_path / "b"
    if replacing:
        fake_bundle(out, "old")
    staging = staging_dir(out)
    fake_bundle(staging, "new")
    (staging / "parts").mkdir()
    (staging / "parts" / "p.onnx").write_bytes(b"p")
    staged = {os.path.realpath(p) for p in [staging, *staging.rglob("*")]}
    events = synced_paths(monkeypatch)
    publish(staging, out)
    swap = events.index(("rename", str(out)))
    assert staged <= {path for kind, path in events[:swap] if kind == "fsync"}
    assert ("fsync", os.path.realpath(tmp_path)) in events[swap:]


def test_atomic_writes_sync_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = synced_paths(monkeypatch)
    write_text(tmp_path / "r.json", "{}")
    rename = events.index(("rename", str(tmp_path / "r.json")))
    assert [kind for kind, _ in events[:rename]] == ["fsync"] and events[0][1].endswith(".tmp")
    assert events[rename + 1:] == [("fsync", os.path.realpath(tmp_path))]


def refused_exchange(a: Path, b: Path) -> bool:
    """renameat2 as overlayfs answers it for a directory of a lower layer."""
    raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(b))


def test_a_bundle_that_its_file_system_will_not_move_is_a_clear_error(tmp_path, ort_bundle, monkeypatch, capsys):
    """overlayfs refuses to rename a directory of a container image's lower layer (EXDEV): an internal error."""
    shutil.copytree(ort_bundle, tmp_path / "b")
    before = sorted(p.name for p in (tmp_path / "b").rglob("*"))
    (tmp_path / "r.yaml").write_text("- {seed: 1, label: 2}\n")
    monkeypatch.setattr(bundle, "_exchange", refused_exchange)
    assert main(["precompute", str(tmp_path / "b"), str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'b'}: its file system will not move this directory" in err
    assert "Copy the bundle into a writable directory" in err and "another --out" in err
    assert sorted(p.name for p in (tmp_path / "b").rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "r.yaml"]


def test_an_interrupt_between_the_fallbacks_two_renames_puts_the_old_bundle_back(tmp_path, monkeypatch):
    """Ctrl-C after the old bundle was moved aside left --out missing and the old bundle in `.b.XXXX.old`."""
    out = fake_bundle(tmp_path / "b", "old")
    without_exchange(monkeypatch)
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if Path(src) == out:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        publish_new(out, "new")
    assert (out / "x.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    monkeypatch.setattr(os, "replace", real_replace)
    publish_new(out, "new")
    assert (out / "x.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["b"]


@pytest.mark.parametrize("out_left", [True, False])
def test_a_killed_processs_retired_bundle_is_removed_or_put_back(tmp_path, out_left):
    """A process killed between the two renames leaves its old bundle `.b.<host>-<pid>.*.old`: the next publish
    puts it back where --out is missing, else removes it (it was never cleaned, untagged)."""
    retired = fake_bundle(tmp_path / f".b.{socket.gethostname()}-{dead_pid()}.abcd1234.old", "old")
    if out_left:
        fake_bundle(tmp_path / "b", "newer")
    staging = staging_dir(tmp_path / "b")
    assert not retired.exists()
    assert ((tmp_path / "b" / "x.txt").read_text() == "newer") == out_left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", staging.name])


def test_the_fallbacks_retired_bundle_is_tagged_like_staging(tmp_path, monkeypatch):
    out = fake_bundle(tmp_path / "b", "old")
    without_exchange(monkeypatch)
    seen = []
    monkeypatch.setattr(shutil, "rmtree", lambda path, **kw: seen.append(Path(path).name))
    staging = staging_dir(out)
    fake_bundle(staging, "new")
    publish(staging, out)
    assert seen and seen[0].startswith(f".b.{socket.gethostname()}-{os.getpid()}.") and seen[0].endswith(".old")


def test_long_out_names_get_short_temporaries_still_cleaned(tmp_path):
    """A legal 240-byte --out name: its staging directory's longer name failed with ENAMETOOLONG after the whole
    compile."""
    out = tmp_path / ("b" * 240)
    fake_bundle(out, "old")
    staging = staging_dir(out)
    assert len(staging.name) <= 255 and staging.parent == tmp_path
    shutil.rmtree(staging)
    orphan = fake_bundle(tmp_path / staging.name.replace(f"-{os.getpid()}.", f"-{dead_pid()}."), "left")
    publish_new(out, "new")
    assert (out / "x.txt").read_text() == "new" and not orphan.exists()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_an_out_name_over_the_file_systems_limit_is_refused_before_building(tmp_path, cgen_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setattr("edgegen.graph.Graph.load", lambda *a, **k: pytest.fail("loaded the model first"))
    assert main(["build", str(cgen_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / ("c" * 300))]) == 2
    assert "is 300 bytes, longer than the 255 its file system takes" in capsys.readouterr().err


def test_atomic_writes_to_long_names(tmp_path):
    """`generate -o` / `--json` of a legal 249-byte name failed on its temporary's name; an illegal one was a
    traceback."""
    write_text(tmp_path / ("i" * 245 + ".png"), "x")
    assert [p.name for p in tmp_path.iterdir()] == ["i" * 245 + ".png"]
    with pytest.raises(OutputPathError, match="longer than the 255 its file system takes"):
        write_text(tmp_path / ("i" * 300 + ".json"), "x")


def test_generate_to_an_existing_directory_is_a_clear_error(tmp_path, ort_bundle, capsys):
    """An IsADirectoryError traceback (internal error, exit 1)."""
    (tmp_path / "d.png").mkdir()
    assert main(["generate", str(ort_bundle), "--seed", "1", "--label", "1", "-o", str(tmp_path / "d.png")]) == 2
    assert f"{tmp_path / 'd.png'}: is a directory; give a file name" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["d.png"] and not any((tmp_path / "d.png").iterdir())


def test_a_rebuild_refuses_a_bundle_holding_the_users_symlink_to_a_directory(tmp_path):
    """The link (not a file to unlisted_files) was deleted with the old bundle, without a word."""
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata" / "f.txt").write_text("precious")
    out = fake_bundle(tmp_path / "b", "old")
    (out / "mydata").symlink_to("../userdata")
    with pytest.raises(BuildError, match=r"holds 1 file\(s\) the bundle does not list \(mydata\)"):
        check_output_dir(out)


def test_an_atomic_write_through_a_symlink_writes_where_it_points_and_keeps_the_link(tmp_path):
    """`generate -o latest.png` with latest.png -> r001.png replaced the link with a file, r001.png unchanged."""
    (tmp_path / "r001.json").write_text("old")
    (tmp_path / "latest.json").symlink_to("r001.json")
    write_text(tmp_path / "latest.json", "new")
    assert os.readlink(tmp_path / "latest.json") == "r001.json" and (tmp_path / "r001.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "r001.json"]


def as_a_non_root_user(monkeypatch) -> None:
    """unlink and rmdir refused in a directory without write permission, as for a user without CAP_DAC_OVERRIDE
    (the tests may run as root, who removes anything)."""
    for name in ("unlink", "rmdir"):
        real = getattr(os, name)

        def refusing(path, *, dir_fd=None, real=real):
            parent = os.path.dirname(os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd else "", path))
            if not os.stat(parent or ".").st_mode & 0o200:
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real(path, dir_fd=dir_fd)

        monkeypatch.setattr(os, name, refusing)


@pytest.mark.parametrize("exchange", [True, False])
def test_replacing_a_read_only_bundle_removes_the_old_one(tmp_path, monkeypatch, exchange):
    """The swapped-out old bundle of a `chmod -R a-w` bundle was left whole as `.b.<host>-<pid>.*.tmp`, which
    the orphan cleanup could not remove either."""
    (tmp_path / "b" / "parts").mkdir(parents=True)
    (tmp_path / "b" / "parts" / "p.onnx").write_text("p")
    out = fake_bundle(tmp_path / "b", "old")
    for path in (out / "parts", out):
        path.chmod(0o555)
    as_a_non_root_user(monkeypatch)
    if not exchange:
        without_exchange(monkeypatch)
    publish_new(out, "new")
    assert (out / "x.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_precompute_run_inside_the_bundle_says_to_run_it_from_outside(tmp_path, ort_bundle, monkeypatch, capsys):
    """It advised `--out ./bundle`, an option precompute does not have."""
    shutil.copytree(ort_bundle, tmp_path / "b")
    (tmp_path / "r.yaml").write_text("- {seed: 1, label: 2}\n")
    monkeypatch.chdir(tmp_path / "b")
    assert main(["precompute", ".", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"Run it from outside the bundle: cd {tmp_path.resolve()} && edgegen precompute b REQUESTS" in err
    assert "--out" not in err


def test_an_out_inside_another_bundle_is_refused(tmp_path, cgen_path):
    """A build into a bundle's parts/ or assets/ was accepted: the outer bundle then refused to load, its error
    blaming an edited manifest."""
    from edgegen.errors import BuildError
    from edgegen.runtime import Generator

    build(cgen_path, "x86-onnxruntime", tmp_path / "outer")
    for inner in ("parts/extra", "assets/x", "deep/er/b"):
        with pytest.raises(BuildError, match=f"is inside the bundle {tmp_path / 'outer'}"):
            build(cgen_path, "x86-onnxruntime", tmp_path / "outer" / inner)
    assert Generator.open(tmp_path / "outer").self_test()["pass"]
