"""Scale-out on Ray (edgegen.scale): precompute in shards on actors, byte-identical to the local
executor, through a killed worker and an interrupt; fleet builds as Ray tasks; clear errors for an
unreachable cluster and a missing Ray. One local Ray instance (2 CPUs) serves the whole module."""

import http.server
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import ray

from edgegen.build import build
from edgegen.bundle import read_manifest
from edgegen.cli import main
from edgegen.errors import BuildError, EdgegenError
from edgegen.precompute import add_assets
from edgegen.runtime import Generator
from edgegen.scale import ClusterError
from edgegen.scale.cluster import check_reachable
from runtime_models import glyph_like

FIRST = "grid: {seed: '0..5', label: [1, 2]}\n"
# overlaps FIRST (kept assets), repeats a request in another spelling, mixes tiers: 8 shards on 2 workers
SECOND = ("grid: {seed: '0..59', label: [1, 3]}\n"
          "requests: [{seed: 2, label: 1, quality: full}, {seed: 7, label: 0, quality: preview}]\n")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    onnx.save(glyph_like(), str(root / "glyph.onnx"))
    (root / "first.yaml").write_text(FIRST)
    (root / "second.yaml").write_text(SECOND)
    build(root / "glyph.onnx", "x86-onnxruntime", root / "base", split=["auto"], preview_upscale="lanczos",
          precompute=str(root / "first.yaml"))
    return root / "base"


@pytest.fixture(scope="module")
def local_result(base_bundle):
    """The local executor's bundle after precomputing SECOND."""
    out = base_bundle.parent / "local"
    shutil.copytree(base_bundle, out)
    add_assets(out, base_bundle.parent / "second.yaml")
    return out


def files(bundle: Path) -> dict[str, bytes]:
    return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


def assert_same_assets(got: Path, expected: Path) -> None:
    for name in ("assets/pack.bin", "assets/table.bin", "assets/index.json", "assets/requests.jsonl"):
        assert (got / name).read_bytes() == (expected / name).read_bytes(), name
    assert read_manifest(got)["files"] == read_manifest(expected)["files"]


def renderer_pids(method: str = "") -> list[int]:
    """Processes of this test's Ray instance (descendants of this process) running edgegen's
    ShardRenderer actor, found by their process title."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        if proc.name.isdigit() and title.startswith(f"ray::ShardRenderer{method}") and ours(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def ours(pid: int) -> bool:
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            pid = int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]).split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def no_renderers_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while renderer_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not renderer_pids()


def test_ray_precompute_is_byte_identical_to_local(tmp_path, base_bundle, local_result, capsys):
    out = tmp_path / "bundle"
    shutil.copytree(base_bundle, out)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".bundle.{socket.gethostname()}-{int(dead.stdout)}.k1ll3d.shards"  # a SIGKILLed run's
    (orphan / ".000000.x").mkdir(parents=True)
    assert main(["precompute", str(out), str(base_bundle.parent / "second.yaml"), "--executor", "ray",
                 "--workers", "2"]) == 0, capsys.readouterr().err
    assert "127 precomputed asset(s)" in capsys.readouterr().out  # 12 kept, 114 new in the grid, 1 preview
    assert_same_assets(out, local_result)
    gen = Generator.open(out)
    assert gen.render([{"seed": 59, "label": 3}])[0].served_by == "asset"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no staging or shard directories left
    assert no_renderers_within(10)


def test_ray_names_the_first_refused_request_of_the_list_as_the_local_executor_does(tmp_path, base_bundle, capsys):
    """The first shard error to arrive was raised: shard 1's, refused at its first request, before shard 0's
    last one; a rerun could name another request than the local executor."""
    from edgegen.scale.precompute import shard_size

    size = shard_size(2000, 2)  # shard 0 renders 7 chunks before its last request, shard 1 none before its first
    requests = [{"seed": i, "label": 99 if i in (size - 1, size) else i % 10} for i in range(2000)]
    (tmp_path / "bad.json").write_text(json.dumps(requests))
    out = tmp_path / "bundle"
    shutil.copytree(base_bundle, out)
    for executor in (["--executor", "ray", "--workers", "2"], []):
        assert main(["precompute", str(out), str(tmp_path / "bad.json"), *executor]) == 2
        assert f"precomputing request {size - 1} {{seed: {size - 1}, label: 99}}" in capsys.readouterr().err
    assert files(out) == files(base_bundle)


def test_actors_render_at_the_targets_threads_as_the_local_executor_does(tmp_path):
    """Ray actors rendered at 1 thread; OpenVINO's bf16 kernels round otherwise at 1 thread than at the target's 2,
    so 410 of 600 zoo:glyphgen assets were one level off the local executor's and the device's."""
    build("zoo:glyphgen", "x86-openvino", tmp_path / "base", precision="bf16")
    (tmp_path / "grid.yaml").write_text("grid: {seed: '0..11', label: '0..4'}\n")
    for executor in ("local", "ray"):
        shutil.copytree(tmp_path / "base", tmp_path / executor)
        add_assets(tmp_path / executor, tmp_path / "grid.yaml", executor=executor, workers=1 if executor == "ray"
                   else None)
    assert_same_assets(tmp_path / "ray", tmp_path / "local")
    gen = Generator.open(tmp_path / "ray", cache_bytes=0)
    assert np.array_equal(gen.generate(seed=3, label=4),
                          Generator.open(tmp_path / "ray", cache_bytes=0, assets=False).generate(seed=3, label=4))


def test_killed_worker_is_retried_without_lost_or_duplicated_assets(tmp_path, base_bundle, local_result):
    out = tmp_path / "bundle"
    shutil.copytree(base_bundle, out)
    killed = []

    def kill_one_busy_worker(stage, done, total):
        if done and not killed:
            busy = renderer_pids(".render") or renderer_pids()
            os.kill(busy[0], signal.SIGKILL)
            killed.append((busy[0], done, total))

    add_assets(out, base_bundle.parent / "second.yaml", progress=kill_one_busy_worker, executor="ray", workers=2)
    pid, done, total = killed[0]
    assert done < total and not Path(f"/proc/{pid}").exists()
    assert_same_assets(out, local_result)  # same keys, each once, in the local executor's order


def printed_within(capsys, seconds: float, text: str) -> bool:
    """Whether `text` is printed here within `seconds` (Ray's driver prints the errors its cluster reports from a
    thread of its own, as they arrive)."""
    deadline, printed = time.monotonic() + seconds, ""
    while text not in printed and time.monotonic() < deadline:
        time.sleep(0.1)
        printed += "".join(capsys.readouterr())
    return text in printed


def test_interrupted_precompute_leaves_the_previous_pack(tmp_path, base_bundle, capsys):
    """Also: nothing but edgegen's error is said. The actors were killed under their shards, and Ray printed
    "Task ShardRenderer.render failed ... so the task will be retried" for each, though nothing was."""
    out = tmp_path / "bundle"
    shutil.copytree(base_bundle, out)
    before = files(out)

    def interrupt(stage, done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        add_assets(out, base_bundle.parent / "second.yaml", progress=interrupt, executor="ray", workers=2)
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert no_renderers_within(10)  # the run's actors were stopped
    assert not printed_within(capsys, 3, "will be retried")
    (tmp_path / "bad.yaml").write_text("[{seed: 1, label: 1}, {seed: 1, label: 42}]\n")  # fails in an actor
    with pytest.raises(BuildError, match=r"precomputing request 1 \{seed: 1, label: 42\}: label 42 is out of range"):
        add_assets(out, tmp_path / "bad.yaml", executor="ray")
    assert files(out) == before
    assert not printed_within(capsys, 3, "will be retried")
    with pytest.raises(BuildError, match="--workers applies to --executor ray"):
        add_assets(out, tmp_path / "bad.yaml", workers=2)
    with pytest.raises(EdgegenError, match="--ray-address 10.0.0.1:6379 applies to --executor ray"):  # was ignored
        add_assets(out, tmp_path / "bad.yaml", address="10.0.0.1:6379")


def fake_ray(**attrs):
    """A stand-in for the ray module where Ray is not initialized, with `attrs` (init, shutdown) set."""
    from types import SimpleNamespace

    return SimpleNamespace(**{"is_initialized": lambda: False, "exceptions": ray.exceptions,
                              "shutdown": lambda: None, **attrs})


def test_ray_address_auto_without_a_cluster_says_how_to_start_one(monkeypatch):
    """Ray's own advice named its `--address` flag and said to check `ray status` where nothing runs (Ray's
    error stood in: a real "auto" joins any Ray instance running on this machine, such as another test's)."""
    from edgegen.scale import cluster

    def init(**_):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                              "setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.setattr(cluster, "import_ray", lambda: fake_ray(init=init))
    with pytest.raises(cluster.ClusterError, match=r"^--ray-address auto: no Ray cluster runs on this machine; "
                                                   r"start one with `ray start --head`"):
        with cluster.connect("auto"):
            pass


def test_a_ray_start_stopped_half_way_shuts_down_what_it_started(monkeypatch):
    """Ctrl-C or SIGTERM while ray.init ran skipped ray.shutdown(): the half-started local instance's agents
    outlived the command for a minute."""
    from edgegen.scale import cluster

    calls = []

    def init(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cluster, "import_ray", lambda: fake_ray(init=init, shutdown=lambda: calls.append("shutdown")))
    with pytest.raises(KeyboardInterrupt):
        with cluster.connect():
            pass
    assert calls == ["shutdown"]


def test_a_cluster_with_token_authentication_says_so_and_what_to_do(monkeypatch):
    """A head started where ~/.ray/auth_token exists takes only that token (Ray 2.60): edgegen kept Ray's first line,
    "Failed to connect to Ray cluster at ...", and dropped the reason, which Ray gives as the text of the error that
    line is raised from; with RAY_AUTH_MODE=token and no token, Ray's AuthenticationError was an internal error.
    (Ray's errors as Ray 2.60 raises them: these tests run one Ray cluster, not a second one with a token.)"""
    from edgegen.scale import cluster

    refused = ("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n  File "
               "\"python/ray/includes/common.pxi\", line 119, in ray._raylet.check_status\n"
               "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token is missing or "
               "incorrect. Ensure that the token for the cluster is available in a local file\n")

    def init_refused(**_):
        try:
            raise RuntimeError(refused)
        except RuntimeError as exc:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6379") from exc

    def init_without_token(**_):
        raise ray.exceptions.AuthenticationError("Token authentication is enabled but no authentication token was "
                                                 "found")

    monkeypatch.setattr(cluster, "check_reachable", lambda address: None)
    for mode, init, why in [("", init_refused, "it uses token authentication, and Ray here sent no token"),
                            ("token", init_refused, "the cluster refused the token found here"),
                            ("token", init_without_token, "RAY_AUTH_MODE=token, but there is no token here")]:
        monkeypatch.setenv("RAY_AUTH_MODE", mode)
        monkeypatch.setattr(cluster, "import_ray", lambda: fake_ray(init=init))
        with pytest.raises(ClusterError) as error:
            with cluster.connect("10.0.0.5:6379"):
                pass
        said = str(error.value)
        assert said.startswith(f"cannot connect to the Ray cluster at 10.0.0.5:6379: {why}"), said
        assert "token in ~/.ray/auth_token" in said and "`ray get-auth-token` on the cluster's head" in said
        assert ("set RAY_AUTH_MODE=token" in said) == (mode != "token")


def test_more_workers_than_the_cluster_has_cpus_render_with_one_actor_per_cpu(tmp_path, base_bundle, caplog,
                                                                            local_result):
    """Each actor loads the model: --workers 10**12 on 24 requests started an actor (176 MB) per request."""
    caplog.set_level(logging.WARNING)
    out = tmp_path / "bundle"
    shutil.copytree(base_bundle, out)
    add_assets(out, base_bundle.parent / "second.yaml", executor="ray", workers=10 ** 12)
    assert "--workers 1000000000000: the Ray cluster has 2 CPUs; rendering with 2 actors" in caplog.text
    assert_same_assets(out, local_result)


def test_fleet_build_on_ray_matches_local(tmp_path, base_bundle, capsys, monkeypatch):
    model = str(base_bundle.parent / "glyph.onnx")
    (tmp_path / "r.yaml").write_text("[{seed: 1, label: 2}]\n")
    monkeypatch.chdir(tmp_path)  # the request file as given, relative: recorded resolved by both executors
    fleet = ["-t", "x86-onnxruntime", "-t", "x86-openvino", "--precompute", "r.yaml"]
    assert main(["build", model, *fleet, "-o", str(tmp_path / "local")]) == 0
    assert main(["build", model, *fleet, "-o", str(tmp_path / "ray"), "--executor", "ray"]) == 0, \
        capsys.readouterr().err
    assert capsys.readouterr().out.count("PSNR") >= 4  # a report per bundle, both executors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "r.yaml", "ray"]
    for target in ("x86-onnxruntime", "x86-openvino"):
        local, remote = read_manifest(tmp_path / "local" / target), read_manifest(tmp_path / "ray" / target)
        assert remote["target"]["name"] == target
        assert remote["files"] == local["files"]  # same artifacts and reference data, byte for byte
        assert remote["fidelity"] == local["fidelity"]
        assert remote["assets"] == local["assets"]  # the request file was recorded as the workers' absolute path
        Generator.open(tmp_path / "ray" / target).generate(seed=1, label=2)


def test_a_fleet_on_ray_asks_its_progress_callback_while_it_waits(tmp_path, base_bundle):
    """The CLI's SIGTERM handler raised inside Ray's wait, which parks an exception until the wait ends: a fleet
    took 11-14 s to stop (Ctrl-C 2-3 s). The wait now returns to the progress callback twice a second, where
    the CLI raises again."""
    from edgegen.build import BuildOptions
    from edgegen.scale.fleet import build_fleet

    class Stop(BaseException):
        pass

    calls = []

    def stop_once_running(stage, done, total):
        calls.append((stage, done, total))
        if stage == "fleet" and len(calls) > 1:
            raise Stop

    started = time.monotonic()
    with pytest.raises(Stop):
        list(build_fleet(str(base_bundle.parent / "glyph.onnx"), ["x86-onnxruntime", "x86-openvino"],
                         tmp_path / "o", BuildOptions(), "ray", progress=stop_once_running))
    assert calls[:2] == [("fleet", 0, 2)] * 2 and time.monotonic() - started < 60
    assert not (tmp_path / "o" / "x86-onnxruntime").exists() and not (tmp_path / "o" / "x86-openvino").exists()


def test_failed_fleet_target_is_reported_as_itself(tmp_path, base_bundle, capsys):
    model = str(base_bundle.parent / "glyph.onnx")
    code = main(["build", model, "-t", "x86-onnxruntime", "-t", "x86-onnxruntime", "-o", str(tmp_path / "o"),
                 "--executor", "ray"])
    assert code == 2 and "lists a target twice" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("[{seed: 1, label: 42}]\n")  # fails on the worker, after compiling
    code = main(["build", model, "-t", "x86-onnxruntime", "-t", "x86-openvino", "-o", str(tmp_path / "o"),
                 "--executor", "ray", "--precompute", str(tmp_path / "bad.yaml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "label 42 is out of range" in err and "Traceback" not in err and "RayTaskError" not in err


def test_unreachable_cluster_is_a_clear_error_within_seconds(tmp_path, base_bundle):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "edgegen.cli", "precompute", str(base_bundle),
                           str(base_bundle.parent / "second.yaml"), "--executor", "ray", "--ray-address",
                           f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and time.monotonic() - start < 30
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in done.stderr and "ray start --head" in done.stderr
    done = subprocess.run([sys.executable, "-m", "edgegen.cli", "precompute", str(base_bundle),
                           str(base_bundle.parent / "second.yaml"), "--executor", "ray", "--ray-address", "nowhere"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "give HOST:PORT" in done.stderr


def test_an_address_that_answers_but_is_no_ray_head_fails_fast():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        with pytest.raises(ClusterError, match="not a Ray head"):
            check_reachable(f"127.0.0.1:{server.server_address[1]}")
        assert time.monotonic() - start < 5
    finally:
        server.shutdown()
    check_reachable(ray.get_runtime_context().gcs_address)  # the running head's GCS speaks gRPC: accepted


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch, tmp_path, base_bundle, capsys):
    done = subprocess.run([sys.executable, "-c", "import sys, edgegen.cli, edgegen.precompute, edgegen.build, "
                           "edgegen.scale.fleet, edgegen.scale.precompute, edgegen.runtime; "
                           "sys.exit('ray' in sys.modules)"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, "edgegen imported ray without the ray executor being asked for"
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["precompute", str(base_bundle), str(base_bundle.parent / "second.yaml"), "--executor", "ray"]) == 2
    assert "pip install ray" in capsys.readouterr().err
    assert main(["build", "zoo:glyphgen", "-t", "x86-onnxruntime", "-t", "x86-openvino", "-o", str(tmp_path / "o"),
                 "--executor", "ray"]) == 2
    assert "pip install ray" in capsys.readouterr().err


def test_a_fleet_task_removes_the_build_directory_a_killed_worker_left(tmp_path, monkeypatch, base_bundle):
    """A Ray fleet build stopped mid-way (its tasks cancelled, their workers killed) left each unfinished target's
    build directory in /tmp; the next task on that host removes those of workers no longer running."""
    import tempfile

    from edgegen.build import BuildOptions
    from edgegen.scale.fleet import FLEET_PREFIX, build_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f"{FLEET_PREFIX}{socket.gethostname()}-{dead.stdout.strip()}-abcd1234"
    live = tmp_path / f"{FLEET_PREFIX}{socket.gethostname()}-{os.getpid()}-efgh5678"
    for path in (orphan, live):
        path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    files = build_files(str(base_bundle.parent / "glyph.onnx"), "x86-onnxruntime", BuildOptions())
    assert "manifest.json" in files
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def test_a_task_whose_worker_died_past_its_retries_is_a_cluster_error():
    """A fleet task's worker killed (OOM) past its retries raised WorkerCrashedError: an internal error with a
    traceback, exit 1, instead of that target's failure."""
    from edgegen.scale.cluster import user_errors

    with pytest.raises(ClusterError, match="a Ray worker died and could not be restarted"):
        with user_errors(ray, "fleet build"):
            raise ray.exceptions.WorkerCrashedError()


def test_a_sigterm_while_ray_starts_reaches_this_process_handler():
    """ray.init installs Ray's SIGTERM handler (sys.exit(15)) while it starts the instance: a SIGTERM then
    ended the command with exit 15 and no word, not as `terminated` (143). (In a process of its own: this
    one hosts the tests' Ray instance.)"""
    script = """
import signal, ray
from edgegen.scale.cluster import connect
class Terminated(BaseException):
    pass
def handler(signum, frame):
    raise Terminated
signal.signal(signal.SIGTERM, handler)
def taken_by_sigterm(**_):
    raise SystemExit(signal.SIGTERM)
ray.init = taken_by_sigterm
try:
    with connect(None):
        pass
except Terminated:
    print("terminated by this process's handler", signal.getsignal(signal.SIGTERM) is handler)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "terminated by this process's handler True", (done.returncode, done.stderr[-2000:])


def test_a_missing_model_is_said_once_before_ray_starts(tmp_path):
    """A fleet build on Ray of a model that is not there started Ray (7 s) and said so once per target."""
    from edgegen.build import BuildOptions
    from edgegen.errors import ModelError
    from edgegen.scale.fleet import build_fleet

    started = time.perf_counter()
    with pytest.raises(ModelError, match="nope.onnx: no such model file"):
        list(build_fleet(str(tmp_path / "nope.onnx"), ["x86-onnxruntime", "x86-openvino"], tmp_path / "o",
                         BuildOptions(), executor="ray"))
    assert time.perf_counter() - started < 5 and not (tmp_path / "o").exists()


def test_a_model_option_error_is_said_once_before_ray_starts(tmp_path, base_bundle, monkeypatch):
    """A Ray fleet checked the model with its options (--input-shape) only in each task: a bad shape started Ray
    (16 s) and was said once per target ("2 of 2 targets failed"); the local executor says it once, first."""
    from edgegen.build import BuildOptions
    from edgegen.errors import ModelError
    from edgegen.scale import fleet

    def no_ray(address):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(fleet.cluster, "connect", no_ray)
    options = BuildOptions(graph_options={"input_shapes": {"latent": [1, 3]}})
    with pytest.raises(ModelError, match=r"glyph.onnx: input 'latent' is declared \?x16; the shape 1x3 given for it "
                                         r"does not fit$"):
        list(fleet.build_fleet(str(base_bundle.parent / "glyph.onnx"), ["x86-onnxruntime", "x86-openvino"],
                               tmp_path / "o", options, executor="ray"))
    assert not (tmp_path / "o").exists()


def test_what_a_worker_lacks_is_said_to_be_missing_on_its_node(tmp_path, base_bundle, monkeypatch):
    """A fleet task (and a precompute actor) on a node without a backend's package said it "is not installed
    here", though the driver's machine had it. (The worker's code run here, the package hidden as if not
    installed: the tests' one Ray instance has no node without it.)"""
    from edgegen.build import BuildOptions
    from edgegen.errors import BackendUnavailableError
    from edgegen.scale.fleet import build_files
    from edgegen.scale.precompute import ShardRenderer, _bundle_files

    node = rf"on the Ray worker at {ray.util.get_node_ip_address()} \(host {socket.gethostname()}\): "
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendUnavailableError, match=rf"^{node}building for OpenVINO needs the openvino package, "
                                                      r"which is not installed on that node; install it with"):
        build_files(str(base_bundle.parent / "glyph.onnx"), "x86-openvino", BuildOptions())
    gen = Generator.open(base_bundle)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailableError, match=rf"^{node}.*onnxruntime package, which is not installed on "
                                                      r"that node; .*; every node of the Ray cluster needs edgegen"):
        ShardRenderer(gen.content_hash, 1).render(0, [{"seed": 1, "label": 1}], {}, frozenset(),
                                                  [ray.put(_bundle_files(gen.path, gen.manifest))])
