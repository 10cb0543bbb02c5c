"""Precomputed assets: request files, rendering at build time, `edgegen precompute`, and a damaged pack."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from edgegen.build import build
from edgegen.bundle import read_manifest
from edgegen.cli import main
from edgegen.errors import BuildError, BundleError
from edgegen.precompute import add_assets, load_requests
from edgegen.runtime import Generator
from runtime_models import glyph_like


@pytest.fixture(scope="module")
def glyph_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "glyph.onnx"
    onnx.save(glyph_like(), str(path))
    return path


@pytest.fixture(scope="module")
def asset_bundle(tmp_path_factory, glyph_path):
    requests = tmp_path_factory.mktemp("requests") / "grid.yaml"
    requests.write_text("grid: {seed: '0..3', label: [1, 2]}\nrequests: [{seed: 9, label: 0, quality: preview}]\n")
    out = tmp_path_factory.mktemp("bundles") / "glyph"
    build(glyph_path, "x86-onnxruntime", out, split=["auto"], preview_upscale="lanczos", precompute=str(requests))
    return out


class CountingSession:
    """The real session, with its calls counted."""

    def __init__(self, session):
        self.session, self.calls = session, 0

    def run(self, feeds):
        self.calls += 1
        return self.session.run(feeds)


def count_backend_calls(gen):
    counters = []
    for name in ("main", "trunk", "head", "head_preview"):
        counting = CountingSession(gen.parts.session(name))
        gen.parts._sessions[name] = counting
        counters.append(counting)
    return lambda: sum(c.calls for c in counters)


def test_request_file_forms(tmp_path):
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in
                                                  [{"seed": 1}, {"seed": 2}, {"seed": 2}, {"label": 3, "seed": 4},
                                                   {"seed": 4, "label": 3}, {"seed": 4, "label": 3}]) + "\n")
    (tmp_path / "r.yaml").write_text("log: log.jsonl\ntop: 2\ngrid: {seed: '5..6', quality: [full, preview]}\n")
    requests = load_requests(tmp_path / "r.yaml")
    assert requests[:4] == [{"seed": 5, "quality": "full"}, {"seed": 5, "quality": "preview"},
                            {"seed": 6, "quality": "full"}, {"seed": 6, "quality": "preview"}]
    assert requests[4:] == [{"seed": 4, "label": 3}, {"seed": 2}]  # the two most frequent, most frequent first
    (tmp_path / "list.json").write_text('[{"seed": 1}, {"seed": 1}, {"seed": 2}]')
    assert load_requests(tmp_path / "list.json") == [{"seed": 1}, {"seed": 2}]
    for text, message in [("grid: {seed: '1..x'}", "not a range"), ("{seeds: [1]}", "a request file is"),
                          ("[1, 2]", "not a mapping"), ("log: missing.jsonl", "cannot read the request log"),
                          ("grid: {seed: '3..1'}", "holds no values"), ("grid: {label: []}", "holds no values"),
                          ("requests: 5", "requests: must be a list"), ("[]", "holds no requests"),
                          ("- {seed: 1, seed: 2}", "key 'seed' is given twice"),
                          ("grid: {seed: '0..999999999'}", "holds 1000000000 values; precompute at most"),
                          ("grid: {seed: '0..99999', label: '0..99'}",
                           r"the grid holds 10000000 requests \(100000 x 100\)"),
                          ("log: log.jsonl\ntop: true", "top must be a positive integer, got True")]:  # was top 1
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(BuildError, match=message):
            load_requests(tmp_path / "bad.yaml")
    os.mkfifo(tmp_path / "fifo.yaml")  # blocked the read; /dev/zero was read until memory ran out
    (tmp_path / "zeros.jsonl").symlink_to("/dev/zero")
    (tmp_path / "zlog.yaml").write_text("log: zeros.jsonl")
    for name in ("fifo.yaml", "zlog.yaml"):
        with pytest.raises(BuildError, match="not a regular file"):
            load_requests(tmp_path / name)


def test_assets_are_the_pixels_the_device_computes_and_hits_skip_the_backend(asset_bundle):
    manifest = read_manifest(asset_bundle)
    assert manifest["assets"]["count"] == 9 and "assets/pack.bin" in manifest["files"]
    fresh = Generator.open(asset_bundle, assets=False, cache_bytes=0)
    gen = Generator.open(asset_bundle)
    calls = count_backend_calls(gen)
    requests = [{"seed": s, "label": label} for s in range(4) for label in (1, 2)]
    requests.append({"seed": 9, "label": 0, "quality": "preview"})
    for request in requests:
        hit = gen.render([request])[0]
        assert hit.served_by == "asset"
        np.testing.assert_array_equal(hit.pixels, fresh.render([request])[0].pixels)
    assert calls() == 0 and gen.stats()["assets"]["hits"] == 9
    assert gen.render([{"seed": 9, "label": 0}])[0].served_by == "computed" and calls() > 0


def test_damaged_pack_entry_is_recomputed_not_served(tmp_path, asset_bundle):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(asset_bundle, copy)
    expected = Generator.open(asset_bundle).generate(seed=2, label=1)
    pack = bytearray((copy / "assets/pack.bin").read_bytes())
    offset = pack.find(expected.tobytes())
    assert offset >= 0
    pack[offset + 5] ^= 0xFF
    (copy / "assets/pack.bin").write_bytes(bytes(pack))
    gen = Generator.open(copy)  # the pack is checked entry by entry, so the bundle still opens
    got = gen.render([{"seed": 2, "label": 1}])[0]
    assert got.served_by == "computed" and gen.stats()["assets"]["corrupt"] == 1
    np.testing.assert_array_equal(got.pixels, expected)
    assert gen.render([{"seed": 3, "label": 1}])[0].served_by == "asset"
    assert main(["verify", str(copy), "--runs", "1"]) == 3, "verify vouches for every file (it passed this pack)"
    table = bytearray((copy / "assets/table.bin").read_bytes())
    table[len(table) // 2] ^= 0x40
    (copy / "assets/table.bin").write_bytes(bytes(table))
    with pytest.raises(BundleError, match="assets/table.bin"):
        Generator.open(copy)
    missing = tmp_path / "missing"
    shutil.copytree(asset_bundle, missing)
    (missing / "assets/pack.bin").unlink()
    assert main(["verify", str(missing), "--runs", "1"]) == 3  # was 2 where emulate said 3


@pytest.mark.parametrize("damage", ["pack.bin missing", "an index rendered for another artifact"])
def test_precompute_renders_anew_the_assets_the_runtime_refuses(tmp_path, asset_bundle, caplog, damage):
    """The runtime's error for these says "rerun `edgegen precompute`", and precompute refused the bundle with
    the same error (it opened it as the runtime does): only a full rebuild got out."""
    import hashlib
    import logging
    import shutil

    caplog.set_level(logging.WARNING)
    copy = tmp_path / "copy"
    shutil.copytree(asset_bundle, copy)
    if damage == "pack.bin missing":
        (copy / "assets/pack.bin").unlink()
    else:  # an asset directory copied from another build of the model
        index = {**json.loads((copy / "assets/index.json").read_text()), "content_hash": "0" * 64}
        (copy / "assets/index.json").write_text(json.dumps(index))
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["files"]["assets/index.json"] = hashlib.sha256((copy / "assets/index.json").read_bytes()).hexdigest()
        (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="rerun `edgegen precompute"):
        Generator.open(copy)
    (tmp_path / "r.yaml").write_text("[{seed: 2, label: 1}]\n")
    assert main(["precompute", str(copy), str(tmp_path / "r.yaml")]) == 0
    assert "9 precomputed asset(s) dropped, unusable" in caplog.text
    gen = Generator.open(copy)
    assert len(gen.assets) == 1 and gen.render([{"seed": 2, "label": 1}])[0].served_by == "asset"


def test_precompute_verb_adds_assets_atomically(tmp_path, capsys, glyph_path, monkeypatch):
    out = tmp_path / "b"
    build(glyph_path, "x86-onnxruntime", out)
    (tmp_path / "r.yaml").write_text("grid: {seed: '0..2', label: 4}\n")
    monkeypatch.chdir(tmp_path)  # a relative request file is recorded resolved, as the model's source is
    assert main(["precompute", str(out), "r.yaml"]) == 0
    assert "3 precomputed asset(s)" in capsys.readouterr().out
    assert read_manifest(out)["assets"]["requests"] == str(tmp_path.resolve() / "r.yaml")
    (tmp_path / "more.yaml").write_text("[{seed: 0, label: 4}, {seed: 7, label: 7}]\n")
    assert main(["precompute", str(out), str(tmp_path / "more.yaml")]) == 0
    gen = Generator.open(out)
    assert len(gen.assets) == 4
    assert [gen.render([{"seed": s, "label": label}])[0].served_by for s, label in [(1, 4), (7, 7)]] == ["asset"] * 2
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "bad.yaml").write_text("[{seed: 1, label: 42}]\n")
    assert main(["precompute", str(out), str(tmp_path / "bad.yaml")]) == 2
    assert "label 42 is out of range" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("[{seed: 1, label: 2, colour: red}]\n")  # was: "'red' is not a file"
    assert main(["precompute", str(out), str(tmp_path / "bad.yaml")]) == 2
    assert "request 0 has unknown key(s) ['colour']" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "bad.yaml", "more.yaml", "r.yaml"]


def test_requests_giving_one_key_keep_the_first_request_in_and_across_chunks(tmp_path, glyph_path):
    """`quality: full` is the default tier: such a request is an alias of the one without it. The pack records
    each key's first request wherever the aliases fall in the render's chunks (a Ray shard starts its own)."""
    out = tmp_path / "b"
    build(glyph_path, "x86-onnxruntime", out)
    first = [{"seed": s, "label": 1} for s in range(40)]
    aliases = [{"seed": s, "label": 1, "quality": "full"} for s in reversed(range(40))]
    (tmp_path / "r.json").write_text(json.dumps(first + aliases))
    add_assets(out, tmp_path / "r.json")
    assert [json.loads(line) for line in (out / "assets/requests.jsonl").read_text().splitlines()] == first


def test_adding_assets_holds_neither_the_kept_nor_the_new_ones_in_memory(tmp_path, glyph_path, monkeypatch):
    """Adding two requests to a pack loaded every asset it had (twice the pack in memory for a catalogue), and
    the local executor held every new asset until the pack was written: both now stream into the pack."""
    import weakref

    from edgegen import precompute
    from edgegen.runtime import assets

    out = tmp_path / "b"
    build(glyph_path, "x86-onnxruntime", out)
    (tmp_path / "r.yaml").write_text("grid: {seed: '0..79', label: 4}\n")
    add_assets(out, tmp_path / "r.yaml")
    alive, peak = set(), [0]

    def tracked(array):
        alive.add(id(array))
        weakref.finalize(array, alive.discard, id(array))
        peak[0] = max(peak[0], len(alive))
        return array

    real_items, real_write = assets.AssetPack.items, assets.write_pack
    monkeypatch.setattr(assets.AssetPack, "items",
                        lambda self: ((k, r, tracked(a) if a is not None else a) for k, r, a in real_items(self)))
    monkeypatch.setattr(precompute, "write_pack", lambda directory, content_hash, entries, rendered_on: real_write(
        directory, content_hash, ((k, r, tracked(a)) for k, r, a in entries), rendered_on))
    (tmp_path / "more.yaml").write_text("grid: {seed: '0..119', label: 4}\n")  # 80 kept, 40 new
    add_assets(out, tmp_path / "more.yaml")
    assert len(Generator.open(out).assets) == 120
    assert peak[0] <= precompute.CHUNK + 2, peak[0]


def test_a_request_the_runtime_refuses_is_named_by_its_position_and_fields(tmp_path, glyph_path):
    """A region request to a bundle built without --roi is refused when its chunk is served, not when it is
    checked: the error named the chunk ('requests 32..63'), and the Ray executor another range."""
    out = tmp_path / "b"
    build(glyph_path, "x86-onnxruntime", out)
    requests = [{"seed": n, "label": 1} for n in range(50)]
    requests[40]["roi"] = [0, 0, 8, 8]
    (tmp_path / "r.json").write_text(json.dumps(requests))
    with pytest.raises(BuildError, match=r"precomputing request 40 \{seed: 40, label: 1, roi: \[0, 0, 8, 8\]\}: "
                                         r"region-of-interest requests are not offered"):
        add_assets(out, tmp_path / "r.json")


def test_two_precomputes_into_one_bundle_at_once_keep_both_sets(tmp_path, glyph_path):
    """Both runs read the bundle, rendered and published: both said so, and the first one's assets were lost."""
    out = tmp_path / "b"
    build(glyph_path, "x86-onnxruntime", out)
    runs = []
    for label in (1, 2):
        (tmp_path / f"{label}.yaml").write_text(f"grid: {{seed: '0..39', label: {label}}}\n")
        runs.append(subprocess.Popen([sys.executable, "-m", "edgegen", "precompute", str(out),
                                      str(tmp_path / f"{label}.yaml")], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True))
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    gen = Generator.open(out)
    assert len(gen.assets) == 80
    assert {gen.render([{"seed": 39, "label": label}])[0].served_by for label in (1, 2)} == {"asset"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.yaml", "2.yaml", "b"]


def test_a_rebuild_waits_for_a_precompute_into_the_same_bundle(tmp_path, glyph_path, monkeypatch):
    """A precompute that had read the old bundle published it, with its assets, over a rebuild made meanwhile:
    both said done, and the rebuild was gone."""
    import threading
    import time

    from edgegen import bundle

    out = tmp_path / "b"
    build(glyph_path, "x86-onnxruntime", out)
    held_by_precompute, asked = bundle.updating, threading.Event()

    def asking(path, waiting):
        asked.set()
        return held_by_precompute(path, waiting)

    monkeypatch.setattr(bundle, "updating", asking)
    with held_by_precompute(out, "a precompute (this test)"):
        rebuild = threading.Thread(target=build, args=(glyph_path, "x86-onnxruntime", out),
                                   kwargs={"precision": "int8", "calibration_count": 8})
        rebuild.start()
        assert asked.wait(60), "the rebuild published without asking for the bundle's lock"
        time.sleep(0.5)
        assert read_manifest(out)["precision"] == "fp32"  # still the bundle the precompute would publish over
    rebuild.join(120)
    assert read_manifest(out)["precision"] == "int8"


def test_cli_build_flags_and_generate_options(tmp_path, capsys, glyph_path):
    from PIL import Image

    (tmp_path / "r.yaml").write_text("grid: {seed: 1, label: '0..1'}\n")
    code = main(["build", str(glyph_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "b"), "--split", "auto",
                 "--roi", "--preview-upscale", "lanczos", "--precompute", str(tmp_path / "r.yaml")])
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(tmp_path / "b")
    assert manifest["assets"]["count"] == 2 and {"trunk", "head", "head_preview"} <= set(manifest["parts"])
    for args, size in [(["--roi", "2,4,10,6"], (10, 6)), (["--quality", "preview"], (32, 32)), (["--size", "16"], (16, 16))]:
        assert main(["generate", str(tmp_path / "b"), "--seed", "1", "--label", "1", "-o", str(tmp_path / "i.png"),
                     *args]) == 0
        assert Image.open(tmp_path / "i.png").size == size
    assert main(["generate", str(tmp_path / "b"), "--seed", "1", "--label", "1", "-o", str(tmp_path / "i.png"),
                 "--roi", "1,2"]) == 2
    assert "roi must be (x, y, width, height)" in capsys.readouterr().err
    assert main(["build", str(glyph_path), "-t", "x86-onnxruntime", "-o", str(tmp_path / "c"), "--batch-sizes",
                 "x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_image_requests_name_image_files_beside_the_request_file(tmp_path):
    from PIL import Image

    from runtime_models import upscaler_like

    onnx.save(upscaler_like(), str(tmp_path / "up.onnx"))
    (tmp_path / "pics").mkdir()
    pictures = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(2)]
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(tmp_path / "pics" / f"{i}.png")
    (tmp_path / "assets.yaml").write_text("- {image: pics/0.png}\n- {image: pics/1.png}\n")
    build(tmp_path / "up.onnx", "x86-onnxruntime", tmp_path / "b", precompute=str(tmp_path / "assets.yaml"),
          graph_options={"input_shapes": {"image": [1, 3, 16, 16]}})
    gen = Generator.open(tmp_path / "b", cache_bytes=0)
    result = gen.render([{"image": pictures[1]}])[0]
    assert result.served_by == "asset"
    cold = Generator.open(tmp_path / "b", cache_bytes=0, assets=False)
    np.testing.assert_array_equal(result.pixels, cold.generate(image=pictures[1]))
    (tmp_path / "bad.yaml").write_text("- {image: pics/none.png}\n")
    with pytest.raises(BuildError, match=r"request 0: image 'pics/none.png' is not a file"):
        load_requests(tmp_path / "bad.yaml")
    # a Ray worker on a machine without the request file's pictures renders from their bytes, sent with its shard
    from edgegen.precompute import image_bytes
    from edgegen.scale.precompute import ShardRenderer

    requests = load_requests(tmp_path / "assets.yaml")
    images = image_bytes(requests)
    shutil.rmtree(tmp_path / "pics")
    worker = ShardRenderer(cold.content_hash, 1)
    worker.gen = cold
    _, keys, entries, _ = worker.render(0, requests, images, frozenset(), [])
    assert keys == [gen.key_of({"image": p}) for p in pictures]
    np.testing.assert_array_equal(entries[1][2], result.pixels)


def test_precompute_refuses_a_bundle_holding_the_users_files_before_rendering(tmp_path, capsys, glyph_path):
    out = tmp_path / "b"
    build(glyph_path, "x86-onnxruntime", out)
    (out / "NOTES.md").write_text("mine")
    (tmp_path / "r.yaml").write_text("grid: {seed: '0..2', label: 4}\n")
    assert main(["precompute", str(out), str(tmp_path / "r.yaml")]) == 2
    assert "does not list (NOTES.md)" in capsys.readouterr().err and (out / "NOTES.md").read_text() == "mine"
    assert not (out / "assets").exists()


def test_sigterm_during_precompute_removes_its_staging_directory(tmp_path, glyph_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "b"
    build(glyph_path, "x86-onnxruntime", out)
    (tmp_path / "r.yaml").write_text("grid: {seed: '0..199999', label: 4}\n")
    proc = subprocess.Popen([sys.executable, "-m", "edgegen.cli", "precompute", str(out), str(tmp_path / "r.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".b.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".b.*.tmp")), "the precompute never started rendering"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "edgegen: terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "r.yaml"]
    assert not (out / "assets").exists()
