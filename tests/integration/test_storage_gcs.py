"""gs:// against a real GCS emulator on 127.0.0.1 (fake-gcs-server): forgekit.storage, `forgekit validate` and a run.

The module starts fake-gcs-server on a free port and points gcsfs at it the way a user points any Google client at an
emulator (`STORAGE_EMULATOR_HOST`), anonymously. A local Ray cluster started after that has workers that inherit it.
One CPU worker trains the tiny model 3 steps from gs:// data into `output_dir: gs://...`; the run directory must land
on the server and `forgekit.runs` reads it back.

Not exercised here (see test_remote_run.py for them on S3, through the same fsspec + pyarrow code): a gs:// model or
adapter checkpoint, resume after a driver kill, `num_checkpoints_to_keep` deleting remote checkpoints, and real Google
credentials (the emulator takes anonymous requests).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from forgekit import runs, storage
from forgekit.data import read_examples
from forgekit.worker.checkpoints import UPLOADED
from tests.integration.servers import fake_gcs

# (not imported here: google-auth and gcsfs read the emulator's variables when imported, after fake_gcs sets them)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("gcsfs") is None, reason="gcsfs is not installed")

BUCKET = "forgekit-gcs"


@pytest.fixture(scope="module")
def gs(tmp_path_factory) -> str:
    with fake_gcs(tmp_path_factory.mktemp("fake-gcs"), BUCKET) as url:
        yield url


@pytest.fixture(scope="module")
def ray_cluster(gs):
    """A local cluster started after the emulator's variables are set: its workers inherit them."""
    import ray

    from forgekit.train import init_ray

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        init_ray(None, num_devices=1)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def config(gs, tiny_model_dir, tmp_path_factory) -> dict:
    """Data on the bucket, 8 training and 4 validation rows; 3 steps of LoRA, checkpointed and evaluated at step 3."""
    from forgekit.examples.sample_data import write_quickstart_dataset

    paths = write_quickstart_dataset(tmp_path_factory.mktemp("data") / "tickets", n_train=8, n_valid=4, n_test=1)
    for split in ("train", "valid"):
        storage.write_text(f"{gs}/data/{split}.jsonl", Path(paths[split]).read_text())
    return {"model_id": str(tiny_model_dir), "train_path": f"{gs}/data/train.jsonl", "valid_path": f"{gs}/data/valid.jsonl",
            "context_length": 256, "num_devices": 1, "train_batch_size_per_device": 4, "gradient_accumulation_steps": 1,
            "max_steps": 3, "learning_rate": 1e-3, "num_warmup_steps": 0, "lr_scheduler_type": "constant",
            "lora_config": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
            "checkpoint_and_evaluation_frequency": {"unit": "steps", "frequency": 3}, "output_dir": f"{gs}/runs"}


def test_a_directory_is_written_listed_read_and_removed_on_gcs(gs, tmp_path):
    run = storage.join(gs, "scratch", "run-1")
    assert not storage.exists(run) and storage.listdir(run) == []
    storage.write_text(storage.join(run, "config.yaml"), "learning_rate: 0.0001\n")
    checkpoint = tmp_path / "step-000002"
    (checkpoint / "nested").mkdir(parents=True)
    (checkpoint / "nested" / "rng_state.pth").write_bytes(b"\1" * 3000)
    storage.upload_dir(checkpoint, storage.join(run, "checkpoints", "step-000002"))
    assert storage.listdir(run) == ["checkpoints", "config.yaml"]
    assert storage.read_text(storage.join(run, "config.yaml")) == "learning_rate: 0.0001\n"
    back = storage.download_dir(storage.join(run, "checkpoints", "step-000002"), tmp_path / "back")
    assert (back / "nested" / "rng_state.pth").read_bytes() == b"\1" * 3000
    storage.remove(storage.join(run, "checkpoints"))
    assert storage.listdir(run) == ["config.yaml"]
    with pytest.raises(storage.StorageError, match=rf"output_dir: {gs}/scratch/run-1/nothing.txt: file not found"):
        storage.read_text(storage.join(run, "nothing.txt"), key="output_dir")


def test_the_bucket_check_takes_a_write_and_a_missing_bucket_names_the_key(gs):
    storage.check_reachable(f"{gs}/runs", "output_dir", write=True)
    assert not [n for n in storage.listdir(f"{gs}/runs") if n.startswith(".forgekit-write-check")]
    with pytest.raises(storage.StorageError, match=r"train_path: gs://no-such-bucket/t.jsonl: the bucket no-such-bucket "
                                                   r"does not exist"):
        storage.check_reachable("gs://no-such-bucket/t.jsonl", "train_path")


def test_validate_reads_the_data_from_gcs(gs, config, tmp_path, capsys):
    from forgekit.cli import main

    assert [e.line for e in read_examples(config["train_path"])] == list(range(1, 9))
    path = tmp_path / "gcs.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "data: 8 training examples -> 8 rows" in out and "validation: 4 rows" in out
    assert f"# run directory: {gs}/runs/" in out


def test_a_run_from_gcs_data_writes_its_run_directory_to_gcs(ray_cluster, gs, config, tmp_path, monkeypatch):
    """With the tokenization cache on the bucket too (`FORGEKIT_CACHE=gs://...`; the driver's local copy under this
    test's home)."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORGEKIT_CACHE", f"{gs}/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = finetune(load_config(config), progress=False)
    run_dir = result["run_dir"]
    assert run_dir.startswith(f"{gs}/runs/")
    manifest = json.loads(storage.read_text(storage.join(run_dir, "manifest.json")))
    shared = f"{gs}/cache/prepared/{manifest['cache_key']}"
    assert storage.listdir(shared) == ["manifest.json", "tokenizer", "train", "valid"]
    assert json.loads(storage.read_text(f"{shared}/manifest.json"))["train_rows"] == manifest["train_rows"] == 8
    assert {"config.yaml", "manifest.json", "plan.json", "metrics.jsonl", "result.json", "checkpoints",
            "logs"} <= set(storage.listdir(run_dir))
    assert storage.listdir(storage.join(run_dir, "logs")) == ["rank-0.log"]
    assert storage.listdir(storage.join(run_dir, "checkpoints")) == ["step-000003"]
    files = storage.listdir(storage.join(run_dir, "checkpoints", "step-000003"))
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.json", UPLOADED} <= set(files)
    assert not list(tmp_path.rglob("gs:*"))  # nothing written to a local folder named after the URL

    # forgekit.runs reads the remote run directory back
    back = runs.read_result(run_dir)
    assert back["steps"] == 3 and back["best_checkpoint"] == f"{run_dir}/checkpoints/step-000003"
    assert runs.list_checkpoints(run_dir) == [f"{run_dir}/checkpoints/step-000003"]
    assert runs.read_config(run_dir)["train_path"] == config["train_path"]
    assert [r["step"] for r in runs.read_metrics(run_dir, "train")] == [1, 2, 3]
    evals = runs.read_metrics(run_dir, "eval")
    assert [r["step"] for r in evals] == [0, 3] and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    trainer_state = json.loads(storage.read_text(storage.join(run_dir, "checkpoints", "step-000003",
                                                              "trainer_state.json")))
    assert trainer_state["global_step"] == 3
