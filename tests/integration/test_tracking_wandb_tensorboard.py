"""W&B (offline) and TensorBoard tracking of a real `forgekit.train.finetune` run, read back and compared with metrics.jsonl.

One local Ray cluster for the module, started with `WANDB_MODE=offline` in its environment (as a user exports it before
`forgekit finetune`), so its workers inherit it. Each test trains the tiny model 3 steps on one CPU worker; the W&B run
is read back from its `.wandb` transaction log by wandb's own reader (`wandb leet inspect --json`, wandb-core), the
TensorBoard events by tensorboard's `EventAccumulator`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.tracking_runs import finetune_config

wandb = pytest.importorskip("wandb")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster (forgekit's own, `init_ray`) whose workers run W&B offline; its session folder."""
    import ray

    from forgekit.train import init_ray

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)  # a cluster started without this environment would track online
        mp.setenv("WANDB_MODE", "offline")
        init_ray(num_devices=1)
        try:
            yield Path(ray._private.worker._global_node.get_session_dir_path())
        finally:
            ray.shutdown()


def _finetune(cfg: dict) -> dict:
    from forgekit.config import load_config
    from forgekit.train import finetune

    return finetune(load_config(cfg), progress=False)


def _wandb_records(run_dir: Path) -> list[dict]:
    """The records of the run's one W&B offline run, as wandb-core's inspector prints them (one JSON object a line)."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run in {run_dir / 'wandb'}: {runs}"
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1, files
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(files[0])], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _same(logged: dict[int, float], rows: list[dict], key: str, name: str) -> None:
    """The tracker's series `name` (step -> value) is metrics.jsonl's column `key`, step for step."""
    assert sorted(logged) == [r["step"] for r in rows], name
    assert [logged[r["step"]] for r in rows] == pytest.approx([r[key] for r in rows], rel=1e-6, abs=1e-9), name


# tokens/s too (forgekit's ThroughputInLogs puts it into the Trainer's logs before the trackers log them); MFU is
# the same path on GPUs only (no peak FLOP/s on a CPU)
TRAIN_SERIES = {"loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm",
                "tokens_per_second": "tokens_per_second"}


def test_wandb_offline_run_lands_in_the_run_directory_with_metrics_jsonl_series(ray_cluster, tiny_model_dir, tmp_path):
    from forgekit.runs import read_metrics

    result = _finetune(finetune_config(tiny_model_dir, tmp_path, {"provider": "wandb", "provider_config": {
        "project": "fk-offline", "tags": ["forgekit", "test"]}}))
    run_dir = Path(result["run_dir"])
    records = _wandb_records(run_dir)
    # not in the worker's working directory (Ray's session folder), where wandb writes by default
    assert not list(ray_cluster.rglob("offline-run-*")), "a W&B run was written under Ray's session folder"

    run = next(r["run"] for r in records if r["type"] == "run")
    assert run["project"] == "fk-offline" and run["tags"] == ["forgekit", "test"]
    assert run["telemetry"]["feature"]["offline"] is True
    # WandbCallback logs each row with its `train/global_step`; eval rows carry the step of the evaluation
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    train_rows, eval_rows = read_metrics(run_dir, "train"), read_metrics(run_dir, "eval")
    assert [r["step"] for r in train_rows] == [1, 2, 3] and [r["step"] for r in eval_rows] == [0, 3]
    for key, name in TRAIN_SERIES.items():
        _same({int(h["train/global_step"]): h[f"train/{name}"] for h in history if f"train/{name}" in h},
              train_rows, key, f"train/{name}")
    _same({int(h["train/global_step"]): h["eval/loss"] for h in history if "eval/loss" in h}, eval_rows,
          "eval_loss", "eval/loss")
    config = {k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()}
    assert (config["learning_rate"], config["max_steps"], config["per_device_train_batch_size"]) == (1e-3, 3, 4)
    # the run was finished (forgekit.worker.tracking.RunTracking): without it the log holds only its header
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]


def test_tensorboard_events_have_metrics_jsonl_series(ray_cluster, tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from forgekit.runs import read_metrics

    result = _finetune(finetune_config(tiny_model_dir, tmp_path, {"provider": "tensorboard"}))
    run_dir = Path(result["run_dir"])
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    train_rows, eval_rows = read_metrics(run_dir, "train"), read_metrics(run_dir, "eval")
    assert [r["step"] for r in eval_rows] == [0, 3]
    for key, name in TRAIN_SERIES.items():
        _same({e.step: e.value for e in events.Scalars(f"train/{name}")}, train_rows, key, f"train/{name}")
    _same({e.step: e.value for e in events.Scalars("eval/loss")}, eval_rows, "eval_loss", "eval/loss")
    assert not (run_dir / "wandb").exists()
