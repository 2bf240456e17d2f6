"""A fine-tune whose data, model and run directory are on S3: a real S3 server (moto, on 127.0.0.1) and real runs.

Two CPU Ray workers train the tiny model (tests/conftest.py) from `s3://` data and an `s3://` model into
`output_dir: s3://...`; the run directory (config, plan, metrics, checkpoints, result) must land on the server,
nothing local may be named `s3:`, Ray's `num_checkpoints_to_keep` deletes remote checkpoints, `forgekit.runs`
reads it back, a next stage starts from an `s3://` adapter checkpoint, and a driver killed after a checkpoint
resumes from the bucket to the same per-step losses as the uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from forgekit import runs, storage
from forgekit.worker.checkpoints import UPLOADED
from tests.integration.servers import S3_SECRET, moto_s3

pytest.importorskip("s3fs")

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "forgekit.cli"]
LORA = {"r": 8, "lora_alpha": 16, "target_modules": "all-linear", "lora_dropout": 0.1}


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> str:
    with moto_s3(tmp_path_factory.mktemp("moto"), "forgekit-runs") as url:
        yield url


@pytest.fixture(scope="module")
def ray_cluster(s3):
    """A local cluster started after the AWS variables point at the server: its workers inherit them."""
    import ray

    from forgekit.train import init_ray

    init_ray(None, num_devices=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def config(s3, tiny_model_dir, tmp_path_factory) -> dict:
    """Data and model uploaded to the bucket; 24 examples at 8 per step: the checkpoint at step 2 is mid-epoch."""
    from forgekit.examples.sample_data import write_quickstart_dataset

    paths = write_quickstart_dataset(tmp_path_factory.mktemp("data") / "tickets", n_train=24, n_valid=8, n_test=1)
    for split in ("train", "valid"):
        storage.write_text(f"{s3}/data/{split}.jsonl", Path(paths[split]).read_text())
    storage.upload_dir(tiny_model_dir, f"{s3}/models/tiny")
    return {
        "model_id": f"{s3}/models/tiny", "train_path": f"{s3}/data/train.jsonl", "valid_path": f"{s3}/data/valid.jsonl",
        "context_length": 256, "num_devices": 2, "train_batch_size_per_device": 4, "gradient_accumulation_steps": 1,
        "max_steps": 6, "learning_rate": 1e-2, "num_warmup_steps": 0, "lr_scheduler_type": "constant",
        "deepspeed": {"config_path": str(REPO / "deepspeed_configs" / "zero_2.json")},
        "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 2}, "num_checkpoints_to_keep": 2,
        "lora_config": LORA, "neftune_noise_alpha": 5.0, "output_dir": f"{s3}/runs",
    }


@pytest.fixture(scope="module")
def run(ray_cluster, config, tmp_path_factory) -> dict:
    """The uninterrupted run, from a working directory the test then searches for a local `s3:` folder."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        started = time.time()
        result = finetune(load_config(config), progress=False)
        result["seconds"], result["cwd"] = time.time() - started, cwd
    return result


def _losses(run_dir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in runs.read_metrics(run_dir, "train")}


def test_the_run_directory_and_its_checkpoints_are_on_the_bucket(run, config, s3):
    run_dir = run["run_dir"]
    assert run_dir.startswith(f"{s3}/runs/tiny-lora-")
    names = storage.listdir(run_dir)
    assert {"config.yaml", "manifest.json", "plan.json", "metrics.jsonl", "result.json", "checkpoints", "logs"} <= set(names)
    assert storage.listdir(storage.join(run_dir, "logs")) == ["rank-0.log", "rank-1.log"]
    # the steps 2, 4, 6 were checkpointed; Ray kept num_checkpoints_to_keep (2) of them on the bucket
    kept = storage.listdir(storage.join(run_dir, "checkpoints"))
    assert len(kept) == 2 and set(kept) < {"step-000002", "step-000004", "step-000006"} and "step-000006" in kept
    for name in kept:
        files = storage.listdir(storage.join(run_dir, "checkpoints", name))
        assert {"adapter_model.safetensors", "trainer_state.json", "optimizer.pt", UPLOADED} <= set(files) or (
            {"adapter_model.safetensors", "trainer_state.json", UPLOADED} <= set(files)
            and any(f.startswith("global_step") for f in files)), files
    # nothing written to a local folder named after the URL (./s3:/...), here or in the repository
    assert not list(run["cwd"].rglob("s3:*")) and not (REPO / "s3:").exists()
    for name in ("config.yaml", "plan.json", "manifest.json"):  # credentials come from the environment only
        assert S3_SECRET not in storage.read_text(storage.join(run_dir, name))
    print(f"remote run: {run['seconds']:.1f} s")


def test_forgekit_runs_reads_the_remote_run_directory(run, config):
    run_dir = run["run_dir"]
    result = runs.read_result(run_dir)
    assert result["steps"] == 6 and result["best_checkpoint"].startswith(f"{run_dir}/checkpoints/step-")
    assert result["checkpoints"] == runs.list_checkpoints(run_dir) == [
        storage.join(run_dir, "checkpoints", n) for n in storage.listdir(storage.join(run_dir, "checkpoints"))]
    assert runs.read_config(run_dir)["output_dir"] == config["output_dir"]
    assert sorted(_losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    evals = runs.read_metrics(run_dir, "eval")
    assert [r["step"] for r in evals] == [0, 2, 4, 6] and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert runs.read_metrics(run_dir, "final")[-1]["world_size"] == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs.read_result(storage.join(config["output_dir"], "no-such-run"))


def test_a_next_stage_trains_from_an_s3_adapter_checkpoint(run, config, tmp_path, monkeypatch):
    """Stage 2 starts where stage 1 ended: its first evaluation is stage 1's best, far below stage 1's start."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    monkeypatch.chdir(tmp_path)
    stage2 = finetune(load_config({**config, "initial_adapter_model_ckpt_path": run["best_checkpoint"],
                                   "max_steps": 2, "output_dir": f"{config['output_dir']}/stage-2"}), progress=False)
    assert stage2["run_dir"].startswith(f"{config['output_dir']}/stage-2/")
    assert stage2["first_eval_loss"] == pytest.approx(run["best_eval_loss"], rel=2e-3)
    assert stage2["first_eval_loss"] < run["first_eval_loss"] - 0.2
    assert stage2["steps"] == 2 and runs.list_checkpoints(stage2["run_dir"])
    assert not list(tmp_path.rglob("s3:*"))


def test_a_killed_driver_resumes_from_the_bucket_to_the_same_losses(run, config, tmp_path):
    """kill -9 of the CLI's whole process tree after the first remote checkpoint; the same command then resumes
    from the bucket and logs the per-step losses of the uninterrupted run."""
    cfg = {**config, "output_dir": f"{config['output_dir']}/killed"}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = storage.join(cfg["output_dir"], run["run_dir"].rsplit("/", 1)[-1])  # same config and data: same name
    env = {**os.environ, "FORGEKIT_MAX_FAILURES": "0", "FORGEKIT_FAULTS": "slow_step=1.5"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([*CLI, "finetune", str(path)], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not storage.exists(storage.join(run_dir, "checkpoints", "step-000002", UPLOADED)):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray cluster and the workers: a lost machine
    proc.wait()
    assert not storage.exists(storage.join(run_dir, "result.json")) and max(_losses(run_dir)) < 6

    resumed = subprocess.run([*CLI, "finetune", str(path)], cwd=tmp_path, env={**env, "FORGEKIT_FAULTS": ""},
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _losses(run["run_dir"]), _losses(run_dir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint were redone, each logged once
    for step in range(1, 7):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)
    assert runs.read_result(run_dir)["final_eval_loss"] == pytest.approx(run["final_eval_loss"], abs=1e-5)
    assert not list(tmp_path.rglob("s3:*"))


def test_an_unreachable_output_dir_is_an_error_naming_the_key_before_any_worker(config, tmp_path, monkeypatch):
    """A bucket that does not exist, for output_dir and a data path: one error naming both keys, from the
    pre-flight checks (no cluster, no worker, nothing written), never a silently local run."""
    from forgekit.config import load_config
    from forgekit.errors import ForgekitError
    from forgekit.train import prepare_run

    monkeypatch.chdir(tmp_path)
    cfg = load_config({**config, "output_dir": "s3://no-such-bucket/runs", "valid_path": "s3://no-such-bucket/v.jsonl"})
    with pytest.raises(ForgekitError) as e:
        prepare_run(cfg)
    assert "output_dir: s3://no-such-bucket/runs: the bucket no-such-bucket does not exist" in str(e.value)
    assert "valid_path: s3://no-such-bucket/v.jsonl: the bucket no-such-bucket does not exist" in str(e.value)
    assert S3_SECRET not in str(e.value) and not list(tmp_path.iterdir())
