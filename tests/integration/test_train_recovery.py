"""Runs of their own beside `test_train.py`'s matrix (its own process: `make test` spreads files over lanes):
a killed driver resumes to the same losses, a diverging run stops, a failing worker's message reaches the exit,
the best checkpoint is kept, classification metrics, and how CPU workers pick their precision.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from forgekit.runs import list_checkpoints, read_metrics
from tests.integration.test_train import CLI, LORA, REPO, _train_losses, config, write_config


def test_killed_run_resumes_to_the_same_final_loss(ray_cluster, tiny_model_dir, tmp_path):
    """kill -9 of the whole process tree after a checkpoint; the same command then ends where an uninterrupted run does.

    32 examples at 8 per step: 4 steps per epoch, so the checkpoint at step 3 is mid-epoch (the data position
    must be restored), step 5 starts the second epoch's reshuffled order, and LoRA dropout and NEFTune's
    embedding noise draw from the RNG.
    """
    from forgekit.config import load_config
    from forgekit.examples.sample_data import write_quickstart_dataset
    from forgekit.train import finetune

    paths = write_quickstart_dataset(tmp_path / "data", n_train=32, n_valid=8, n_test=1)
    data32 = {"train": Path(paths["train"]), "valid": Path(paths["valid"])}
    cfg = config(tiny_model_dir, data32, tmp_path / "runs", lora_config={**LORA, "lora_dropout": 0.1},
                 neftune_noise_alpha=5.0)
    reference = finetune(load_config({**cfg, "output_dir": str(tmp_path / "reference")}), progress=False)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    env = {**os.environ, "FORGEKIT_MAX_FAILURES": "0", "FORGEKIT_FAULTS": "slow_step=1.5"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([*CLI, "finetune", str(path)], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = tmp_path / "runs" / Path(reference["run_dir"]).name  # same config and data: same run name
    deadline = time.time() + 600
    while not (run_dir / "checkpoints" / "step-000003").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 600 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, the local Ray cluster and its workers: a lost machine
    proc.wait()
    killed_at = max(_train_losses(run_dir))
    assert killed_at < 6 and not (run_dir / "result.json").exists()

    resumed = subprocess.run([*CLI, "finetune", str(path)], cwd=tmp_path, env={**env, "FORGEKIT_FAULTS": ""},
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    want, got = _train_losses(Path(reference["run_dir"])), _train_losses(run_dir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # the steps after the checkpoint were redone, each logged once
    for step in range(1, 7):
        assert got[step] == pytest.approx(want[step], abs=1e-5), (step, got, want)
    assert result["final_eval_loss"] == pytest.approx(reference["final_eval_loss"], abs=1e-5)
    # the wall time covers both sessions: the killed one ran >= 3 steps slowed to 1.5 s before its checkpoint
    assert result["sessions"] == 2 and result["wall_seconds"] - result["last_session_wall_seconds"] > 4
    assert reference["sessions"] == 1 and reference["wall_seconds"] == reference["last_session_wall_seconds"]


def test_a_diverging_run_stops_with_the_step_and_what_to_change(ray_cluster, tiny_model_dir, data, tmp_path):
    """lr 1e30 sends LoRA weights to ~1e30 after one Adam step: the next step's activations overflow fp32."""
    from forgekit.config import load_config
    from forgekit.runs import list_checkpoints
    from forgekit.train import DIVERGED, TrainingDiverged, finetune

    # Ray's FailureConfig keeps its default (one retry): a diverged run must stop, not be retried
    cfg = config(tiny_model_dir, data, tmp_path / "runs", num_devices=2, lora_config=LORA, learning_rate=1e30,
                 max_steps=4, deepspeed=None, num_checkpoints_to_keep=4,
                 checkpoint_and_evaluation_frequency={"unit": "steps", "frequency": 1})
    with pytest.raises(TrainingDiverged, match=r"training diverged at step ([23]): .*Lower learning_rate") as info:
        finetune(load_config(cfg), progress=False)
    assert "nan" in str(info.value) or "inf" in str(info.value)
    step = int(re.search(r"step (\d)", str(info.value)).group(1))
    run_dir = tmp_path / "runs" / os.listdir(tmp_path / "runs")[0]
    rows = read_metrics(run_dir, "train")
    assert [r["step"] for r in rows] == list(range(1, step + 1))  # both workers stopped at the first
    assert not math.isfinite(rows[-1]["grad_norm"]) and all(math.isfinite(r["grad_norm"]) for r in rows[:-1])
    # nothing evaluated or saved from the broken weights; the message stays in the run directory
    assert [r["step"] for r in read_metrics(run_dir, "eval")] == list(range(step))
    assert [int(c.name.split("-")[1]) for c in list_checkpoints(run_dir)] == list(range(1, step))
    assert (run_dir / DIVERGED).read_text().strip() == str(info.value)
    assert not read_metrics(run_dir, "final") and not (run_dir / "result.json").exists()


def test_the_best_checkpoint_by_eval_loss_is_kept_when_later_ones_are_worse(ray_cluster, tiny_model_dir, data,
                                                                            tmp_path):
    """num_checkpoints_to_keep: 1 over six checkpoints, on a run whose eval loss turns worse after its best step:
    the best one stays on disk and is result.json's best_checkpoint; Ray also keeps the latest (to resume)."""
    from forgekit.config import load_config
    from forgekit.train import finetune

    cfg = config(tiny_model_dir, data, tmp_path / "runs", num_devices=1, deepspeed=None, learning_rate=3e-2,
                 num_checkpoints_to_keep=1, checkpoint_and_evaluation_frequency={"unit": "steps", "frequency": 1})
    result = finetune(load_config(cfg), progress=False)
    losses = {r["step"]: r["eval_loss"] for r in read_metrics(result["run_dir"], "eval") if r["step"] > 0}
    best, last = min(losses, key=losses.get), max(losses)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[last] > losses[best], f"precondition: the eval loss must turn worse after its best step: {losses}"
    assert [c.name for c in list_checkpoints(result["run_dir"])] == [f"step-{best:06d}", f"step-{last:06d}"]
    assert Path(result["best_checkpoint"]).name == f"step-{best:06d}" and result["best_eval_loss"] == losses[best]
    assert Path(result["last_checkpoint"]).name == f"step-{last:06d}"


def test_deepspeed_bf16_overflow_scan_is_off_unless_the_json_sets_it(tmp_path):
    from forgekit.config import load_config
    from forgekit.plan import deepspeed_config

    cfg = load_config({"model_id": "m", "train_path": "t", "train_batch_size_per_device": 2,
                       "gradient_accumulation_steps": 1, "deepspeed": {"config_path": str(REPO / "deepspeed_configs/zero_2.json")}})
    assert deepspeed_config(cfg, bf16=True)["bf16"] == {"enabled": True, "check_grad_overflow": False}
    assert "check_grad_overflow" not in deepspeed_config(cfg, bf16=False)["bf16"]  # fp32: DeepSpeed never checks
    zero3 = load_config({**cfg.model_dump(exclude_unset=True), "deepspeed": {"config_path": str(REPO / "deepspeed_configs/zero_3.json")}})
    assert "check_grad_overflow" not in deepspeed_config(zero3, bf16=True)["bf16"]  # ZeRO-3 ignores the key
    own = json.loads((REPO / "deepspeed_configs/zero_2.json").read_text())
    own["bf16"]["check_grad_overflow"] = True
    (tmp_path / "ds.json").write_text(json.dumps(own))
    cfg = load_config({**cfg.model_dump(exclude_unset=True), "deepspeed": {"config_path": str(tmp_path / "ds.json")}})
    assert deepspeed_config(cfg, bf16=True)["bf16"]["check_grad_overflow"] is True


def test_classification_accuracy_is_reported(ray_cluster, tiny_model_dir, data, tmp_path):
    from forgekit.config import load_config
    from forgekit.train import finetune

    cfg = config(tiny_model_dir, data, tmp_path / "runs", task="classification",
                 train_path=str(data["cls_train"]), valid_path=str(data["cls_valid"]),
                 classifier_config={"label_tokens": data["labels"], "eval_metrics": ["accuracy", "f1", "prauc"]},
                 lora_config=LORA, max_steps=4, checkpoint_and_evaluation_frequency={"unit": "steps", "frequency": 4})
    result = finetune(load_config(cfg), progress=False)
    evals = read_metrics(result["run_dir"], "eval")
    assert all(0.0 <= r[k] <= 1.0 for r in evals for k in ("eval_accuracy", "eval_f1", "eval_prauc"))
    assert result["eval_accuracy"] == evals[-1]["eval_accuracy"]
    assert result["levers"]["supervised_logits"] is False  # its metrics read the logits of every row
    # 8 validation examples, one label token each: the accuracy is a multiple of 1/8
    assert evals[-1]["eval_accuracy"] * 8 == pytest.approx(round(evals[-1]["eval_accuracy"] * 8))


def test_worker_failure_exits_non_zero_with_the_workers_message(tiny_model_dir, data, tmp_path):
    """A model whose weights are corrupt loads fine on the driver (tokenizer only) and fails in the workers."""
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cfg = config(broken, data, tmp_path / "runs", num_devices=1)
    path = write_config(tmp_path / "cfg.yaml", cfg)
    env = {**os.environ, "FORGEKIT_MAX_FAILURES": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([*CLI, "finetune", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "training failed in a worker" in proc.stderr
    assert "safetensors" in proc.stderr.lower() or "header" in proc.stderr.lower(), proc.stderr[-3000:]
    assert "Traceback (most recent call last)" not in proc.stderr.split("training failed in a worker")[0]


@pytest.mark.parametrize("has_bf16", [True, False])
def test_precision_on_cpu_workers(monkeypatch, has_bf16):
    """fp32 trains CPU workers in fp32; auto and bf16 autocast where the CPU has bf16 instructions, else fp32."""
    from forgekit.hardware import Hardware, precision_for

    cpu = Hardware(use_gpu=False, num_workers=2, device="cpu", bf16=False, cpu_bf16=has_bf16)
    assert precision_for("auto", cpu) == ("bf16-autocast" if has_bf16 else "fp32")
    assert precision_for("fp32", cpu) == "fp32"
    assert precision_for("bf16", cpu) == ("bf16-autocast" if has_bf16 else "fp32")  # fp32 weights either way
    assert precision_for("auto", cpu, "preference_tuning") == "fp32"  # rewards: log-prob differences
    assert precision_for("bf16", cpu, "preference_tuning") == ("bf16-autocast" if has_bf16 else "fp32")
