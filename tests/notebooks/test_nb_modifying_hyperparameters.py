"""The hyperparameters cookbook: computed schedules, plans and LoRA counts, and a real run that matches them."""

from __future__ import annotations

import nbformat
import pytest

from forgekit.estimates import lr_schedule
from forgekit.runs import read_config, read_metrics, read_result
from tests.notebooks.harness import REPO, parameter_names, run_notebook

NOTEBOOK = "cookbooks/modifying_hyperparameters/modifying_hyperparameters.ipynb"


def test_parameters_cell():
    names = parameter_names(nbformat.read(REPO / NOTEBOOK, as_version=4))
    assert {"RUN_ROOT", "MODEL_ID", "LEARNING_RATES", "TRAIN_STEPS", "LORA_RANKS", "WORLD_SIZES"} <= names


def test_notebook_with_tiny_model(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook(NOTEBOOK, {"RUN_ROOT": str(root), "MODEL_ID": str(tiny_model_dir), "NUM_DEVICES": 1,
                            "LEARNING_RATES": [3e-3], "TRAIN_STEPS": 4, "EVAL_EVERY": 2, "LORA_RANKS": [4, 16],
                            "TRAIN_OVERRIDES": ["eval_batch_size_per_device=40"]}, tmp_path)
    for name in ("lr_schedules.png", "warmup.png", "lora_parameters.png", "learning_rates.png", "lr_logged.png"):
        assert (root / "plots" / name).stat().st_size > 10_000, name
    run = root / "runs" / "lr-0.003"
    result, cfg = read_result(run), read_config(run)
    assert result["steps"] == 4 and cfg["learning_rate"] == 3e-3
    assert [r["step"] for r in read_metrics(run, "eval")] == [0, 2, 4]
    # the schedule the notebook plots is the one the Trainer followed
    logged = [r["learning_rate"] for r in read_metrics(run, "train")]
    assert logged == pytest.approx(lr_schedule(cfg["lr_scheduler_type"], 3e-3, 4, cfg["num_warmup_steps"]), rel=1e-6)
