"""Faults during real runs (issue 28): a full disk at a checkpoint, a kill while a checkpoint or the tokenization
cache is being written, and secrets planted in the environment and the config.

2 CPU Ray workers train the tiny random model (tests/conftest.py) with LoRA for 3 steps, a checkpoint at every step.
Faults come from FORGEKIT_FAULTS (`forgekit.faults`), set per run: the driver hands its value to the run's workers.
One local Ray cluster serves the module, started with planted secrets in its environment (so every worker has them
too); the last test greps every file the module's runs wrote, and everything they printed, for the planted values.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from forgekit.runs import list_checkpoints, read_metrics

# the planted values: none may appear in a run directory, in what forgekit prints, or in what it logs
SECRETS = {
    "HF_TOKEN": "hf_fkPlantedToken7f3a9c",
    "WANDB_API_KEY": "fkplantedwandbkey0123456789abcdef01234567",
    "AWS_ACCESS_KEY_ID": "AKIAFKPLANTED7F3A9C",
    "AWS_SECRET_ACCESS_KEY": "fkPlantedAwsSecret/7f3a9c+Key",
    "MLFLOW_TRACKING_PASSWORD": "fk-planted-mlflow-password",
}
MLFLOW_PASSWORD = "s3cret-fk91"
MLFLOW_URI = f"http://user:{MLFLOW_PASSWORD}@127.0.0.1:1/"  # nothing listens on port 1: refused at once
PROVIDER_KEY = "fk-planted-provider-api-key"

# a data preparation killed (SIGKILL) once the training split is in its cache staging folder: argv config, cache root
KILLED_PREPARATION = """
import json, os, signal, sys
from pathlib import Path
from datasets import Dataset
from forgekit.config import load_config
from forgekit.prepare import prepare_data
save = Dataset.save_to_disk
def save_then_die(self, path, *args, **kwargs):
    save(self, path, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
Dataset.save_to_disk = save_then_die
prepare_data(load_config(json.loads(sys.argv[1])), root=Path(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Everything the module's runs write (data, run directories, a tokenization cache): grepped by the last test."""
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def printed() -> list[str]:
    """What the module's runs printed and logged, appended by each test."""
    return []


@pytest.fixture(scope="module")
def ray_cluster():
    """The module's cluster, started with the secrets (and an MLflow URI with a password, MLflow turned off) in its
    environment: a user's shell, whose variables the local cluster's workers inherit."""
    import ray

    from forgekit.train import init_ray

    with pytest.MonkeyPatch.context() as mp:
        for key, value in SECRETS.items():
            mp.setenv(key, value)
        mp.setenv("MLFLOW_TRACKING_URI", MLFLOW_URI)
        mp.setenv("DISABLE_MLFLOW_INTEGRATION", "TRUE")
        mp.delenv("RAY_ADDRESS", raising=False)
        init_ray(None, num_devices=2)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def data(root) -> dict[str, Path]:
    from forgekit.examples.sample_data import write_quickstart_dataset

    paths = write_quickstart_dataset(root / "data", n_train=16, n_valid=4, n_test=1)
    return {"train": Path(paths["train"]), "valid": Path(paths["valid"])}


def config(tiny_model_dir: Path, data: dict, out: Path, **extra) -> dict:
    """3 LoRA steps of 2 workers x 4 rows (16 rows: the second epoch starts at step 3), evaluated and checkpointed
    at every step, no DeepSpeed (the checkpoint publishing under test is the same with it)."""
    return {"model_id": str(tiny_model_dir), "train_path": str(data["train"]), "valid_path": str(data["valid"]),
            "context_length": 256, "num_devices": 2, "train_batch_size_per_device": 4,
            "gradient_accumulation_steps": 1, "max_steps": 3, "learning_rate": 1e-2, "num_warmup_steps": 0,
            "lr_scheduler_type": "constant", "lora_config": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear",
                                                             "lora_dropout": 0.1},
            "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 1}, "num_checkpoints_to_keep": 3,
            "output_dir": str(out), **extra}


def train(cfg: dict) -> dict:
    from forgekit.config import load_config
    from forgekit.train import finetune

    return finetune(load_config(cfg), progress=False)


def losses(run_dir: str | Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir, "train")}


def staging_dirs(run_dir: Path) -> list[Path]:
    """The node-local staging dirs of a run (forgekit.worker.checkpoints.CheckpointPublisher.staging)."""
    return list((Path(tempfile.gettempdir()) / "forgekit-staging").glob(f"{run_dir.name}-*"))


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_model_dir, data, root) -> dict:
    """The uninterrupted run (TensorBoard on: its events are grepped for the secrets too)."""
    return train(config(tiny_model_dir, data, root / "reference", logger={"provider": "tensorboard"}))


@pytest.fixture
def output(capfd, caplog, printed):
    """The test's stdout, stderr and forgekit's log, kept for the secrets test."""
    caplog.set_level(logging.INFO, logger="forgekit")
    yield caplog
    out, err = capfd.readouterr()
    printed.extend([out, err, *(r.getMessage() for phase in ("setup", "call") for r in caplog.get_records(phase))])


def test_a_full_disk_at_a_checkpoint_stops_the_run_and_the_last_checkpoint_resumes_it(
        reference, tiny_model_dir, data, root, monkeypatch, output):
    """The copy of step 2's checkpoint into the run directory fails with ENOSPC after its first file: the run stops
    with a message naming the directory and the bytes needed, publishes nothing partial, leaves no staging, and
    step 1's checkpoint loads and resumes the run to the uninterrupted run's losses. result.json's throughput is
    then the whole run's (both sessions), and the resume says its step."""
    from forgekit.generate import load_for_generation
    from forgekit.train import TrainingError

    cfg = config(tiny_model_dir, data, root / "disk-full")
    monkeypatch.setenv("FORGEKIT_FAULTS", "disk_full_at_save=2")
    monkeypatch.setenv("FORGEKIT_MAX_FAILURES", "0")  # a retry would fail the same way
    with pytest.raises(TrainingError) as info:
        train(cfg)
    (run_dir,) = (root / "disk-full").iterdir()
    message = str(info.value)
    assert message.startswith("training failed in a worker: no space left on device: "), message  # not Ray's snippet
    assert f"the checkpoint of step 2 could not be written to {run_dir / 'checkpoints'}: it needs " in message, message
    needed = int(re.search(r"it needs ([\d,]+) bytes", message).group(1).replace(",", ""))
    (first,) = list_checkpoints(run_dir)  # nothing of step 2 published
    assert first.name == "step-000001"
    step1_bytes = sum(f.stat().st_size for f in first.rglob("*") if f.is_file())
    assert needed == pytest.approx(step1_bytes, rel=0.01)  # (trainer_state.json grows by a row)
    assert not list((run_dir / "checkpoints").glob(".tmp-*")) and not staging_dirs(run_dir)
    model, _ = load_for_generation(first)  # the last complete checkpoint still loads
    assert sum(p.numel() for p in model.parameters()) > 0

    monkeypatch.delenv("FORGEKIT_FAULTS")
    result = train(cfg)
    assert "resuming from step 1" in output.text
    want, got = losses(reference["run_dir"]), losses(run_dir)
    assert sorted(got) == [1, 2, 3]
    for step in (1, 2, 3):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)
    # the throughput of both sessions: training time summed over them, tokens of the whole run
    rows = read_metrics(run_dir, "train")
    assert rows[0]["train_seconds"] > 0 and result["train_seconds"] == pytest.approx(rows[-1]["train_seconds"], abs=0.01)
    assert result["train_seconds"] > rows[-1]["train_seconds"] - rows[0]["train_seconds"]  # not the last session's
    assert result["tokens_per_second"] == pytest.approx(result["train_tokens"] / result["train_seconds"], rel=0.01)
    assert json.loads((run_dir / "result.json").read_text())["train_seconds"] == result["train_seconds"]
    assert not staging_dirs(run_dir)


def test_a_staging_disk_without_room_for_the_next_checkpoint_is_a_disk_full_naming_it(tmp_path, monkeypatch):
    """The node-local side, without Ray (the Trainer writes each checkpoint into the staging dir first): once one
    checkpoint was gathered, the next save is refused before it starts where the staging disk has less room than
    it; torch's writer failing mid-save there ("file write failed", no errno) is named a full disk too, and the
    partial staging is deleted. The same error on a disk with room stays what it was; a full disk elsewhere names
    the file it refused."""
    from collections import namedtuple

    from forgekit.worker import checkpoints

    usage, free = namedtuple("usage", "total used free"), {"bytes": 10**12}
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: usage(10**12, 0, free["bytes"]))
    publisher = checkpoints.CheckpointPublisher(tmp_path / "runs" / "r", rank=0, world=1, local_rank=0)
    publisher.checkpoint_bytes = 5_000_000
    publisher.check_space(4)
    free["bytes"] = 1_000
    with pytest.raises(checkpoints.DiskFull, match=(f"the checkpoint of step 4 could not be written to "
                                                    f"{re.escape(str(publisher.staging))}: it needs 5,000,000 bytes")):
        publisher.check_space(4)

    torch_error = RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
    (publisher.staging / "checkpoint-4").mkdir(parents=True)
    error = publisher.failed(torch_error)
    assert isinstance(error, checkpoints.DiskFull) and str(publisher.staging) in str(error), error
    assert "file write failed" in str(error) and not publisher.staging.exists()
    free["bytes"] = 10**12
    assert publisher.failed(torch_error) is torch_error
    metrics = tmp_path / "runs" / "r" / "metrics.jsonl"  # a full disk outside any checkpoint: the file it refused
    error = publisher.failed(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(metrics)))
    assert isinstance(error, checkpoints.DiskFull) and f"{metrics} could not be written" in str(error), error


def test_a_checkpoint_being_written_when_the_run_is_killed_is_ignored_on_the_next_start(
        reference, tiny_model_dir, data, root, monkeypatch, output):
    """Rank 0 dies (as under kill -9) while step 2's checkpoint is half-way into the run directory: gathered, not
    published. The same run again says it ignores that checkpoint, resumes from step 1, and every step's loss is the
    uninterrupted run's."""
    from forgekit.train import TrainingError

    cfg = config(tiny_model_dir, data, root / "killed")
    monkeypatch.setenv("FORGEKIT_FAULTS", "die_during_save=2")
    monkeypatch.setenv("FORGEKIT_MAX_FAILURES", "0")  # the driver gives up, as if it had been killed as well
    with pytest.raises(TrainingError):
        train(cfg)
    (run_dir,) = (root / "killed").iterdir()
    partial = run_dir / "checkpoints" / ".tmp-step-000002"
    assert (run_dir / ".forgekit-test-died").exists() and any(partial.iterdir())
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-000001"]

    monkeypatch.delenv("FORGEKIT_FAULTS")
    result = train(cfg)
    assert f"ignoring {partial}: a checkpoint the run was writing when it stopped" in output.text
    assert "resuming from step 1" in output.text
    assert not partial.exists()
    want, got = losses(reference["run_dir"]), losses(run_dir)
    assert sorted(got) == [1, 2, 3]
    for step in (1, 2, 3):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)
    assert result["final_eval_loss"] == pytest.approx(reference["final_eval_loss"], abs=1e-5)
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-000001", "step-000002", "step-000003"]


def test_a_kill_while_the_tokenization_cache_is_built_leaves_nothing_after_the_next_start(tiny_model_dir, data, root,
                                                                                         output):
    """A process killed (SIGKILL) right after writing the training split into its cache staging folder; the next
    preparation removes the folder, says so, and builds the cache."""
    from forgekit.config import load_config
    from forgekit.prepare import STAGING, prepare_data

    cache, cfg = root / "cache", config(tiny_model_dir, data, root / "unused")
    killed = subprocess.run([sys.executable, "-c", KILLED_PREPARATION, json.dumps(cfg), str(cache)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (left,) = (cache / "prepared").glob(f"{STAGING}*")
    assert (left / "train").is_dir()

    prepared = prepare_data(load_config(cfg), root=cache)
    assert f"removed {left}, left by an interrupted data preparation" in output.text
    assert not list((cache / "prepared").glob(f"{STAGING}*"))
    assert not prepared.manifest["cache_hit"] and prepared.train_dir.is_dir()


def test_planted_secrets_appear_in_no_file_and_no_output(reference, tiny_model_dir, data, root, tmp_path, monkeypatch,
                                                         capfd, printed, output):
    """`forgekit validate` of the runs' config, of one with a secret key and a password in provider_config, and with
    MLflow turned on by a tracking URI with a password where no server answers; then every file of every run
    directory of the module (every run had the secrets in its environment) and everything printed or logged."""
    from forgekit.cli import main

    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(config(tiny_model_dir, data, root / "validate")))
    assert main(["validate", str(path)]) == 0
    shown = capfd.readouterr()
    assert "valid" in shown.out

    bad = tmp_path / "bad.yaml"  # (the only file holding the planted values, outside the grepped tree)
    logger = {"provider": "mlflow", "provider_config": {"tracking_uri": MLFLOW_URI, "api_key": PROVIDER_KEY}}
    bad.write_text(yaml.safe_dump(config(tiny_model_dir, data, root / "validate", logger=logger)))
    assert main(["validate", str(bad)]) == 2
    rejected = capfd.readouterr()
    assert "logger.provider_config.api_key: a secret" in rejected.err, rejected.err
    assert "logger.provider_config.tracking_uri: the URI holds a password" in rejected.err, rejected.err

    monkeypatch.delenv("DISABLE_MLFLOW_INTEGRATION")  # MLFLOW_TRACKING_URI turns MLflow on
    assert main(["validate", str(path)]) == 2
    unreachable = capfd.readouterr()
    assert "MLFLOW_TRACKING_URI: no MLflow tracking server answers at http://user:***@127.0.0.1:1/" in unreachable.err

    planted = [*SECRETS.values(), MLFLOW_PASSWORD, PROVIDER_KEY]
    files = [f for f in root.rglob("*") if f.is_file()]
    names = {f.name for f in files}
    assert {"config.yaml", "plan.json", "metrics.jsonl", "result.json", "rank-0.log"} <= names, names
    assert any(name.startswith("events.out.tfevents") for name in names)
    found = [(str(f), s) for f in files for s in planted if s.encode() in f.read_bytes()]
    text = "\n".join([*printed, *shown, *rejected, *unreachable, output.text])
    assert "resuming from step 1" in text  # the earlier tests' output is in
    found += [("printed or logged", s) for s in planted if s in text]
    assert not found, found
