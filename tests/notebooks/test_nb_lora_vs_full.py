"""The LoRA-vs-full cookbook: both runs on the same data, their costs measured and consistent with the runs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

from forgekit.config import load_config
from forgekit.estimates import count_parameters
from forgekit.runs import read_result
from tests.notebooks.harness import REPO, parameter_names, run_notebook

NOTEBOOK = "cookbooks/lora_vs_full/lora_vs_full.ipynb"


def test_parameters_cell():
    names = parameter_names(nbformat.read(REPO / NOTEBOOK, as_version=4))
    assert {"RUN_ROOT", "MODEL_ID", "TRAIN_STEPS", "LORA_LEARNING_RATE", "FULL_LEARNING_RATE"} <= names


def test_lora_and_full_with_tiny_model(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook(NOTEBOOK, {"RUN_ROOT": str(root), "MODEL_ID": str(tiny_model_dir), "NUM_DEVICES": 1,
                            "TRAIN_STEPS": 3, "EVAL_EVERY": 3, "TRAIN_OVERRIDES": ["eval_batch_size_per_device=40"]},
                 tmp_path)
    lora_r, full_r = read_result(root / "runs" / "lora"), read_result(root / "runs" / "full")
    lora, full = json.loads((root / "comparison.json").read_text())
    assert lora_r["steps"] == full_r["steps"] == 3

    # parameters: the meta-device count is what the workers trained
    lora_cfg = load_config(REPO / "cookbooks" / "lora_vs_full" / "lora_vs_full.yaml").lora_config
    expected = count_parameters(tiny_model_dir, lora_cfg)
    assert lora["trainable_params"] == lora_r["trainable_params"] == expected["trainable"]
    assert full["trainable_params"] == full["total_params"] == count_parameters(tiny_model_dir)["trainable"]
    assert lora["trainable_params"] < full["trainable_params"] / 10

    # bytes on disk: the adapter is its fp32 LoRA matrices (+ a small header); the full weights hold the model
    adapter = Path(lora_r["best_checkpoint"]) / "adapter_model.safetensors"
    assert lora["weights_mb"] * 1e6 == adapter.stat().st_size
    assert 4 * lora["trainable_params"] <= adapter.stat().st_size < 4 * lora["trainable_params"] + 100_000
    assert full["weights_mb"] * 1e6 >= 4 * full["total_params"]
    assert lora["checkpoint_mb"] >= lora["weights_mb"] + lora["resume_state_mb"]

    # memory was measured on the one worker of each run; times come from the runs
    for row, result in ((lora, lora_r), (full, full_r)):
        assert 0.1 < row["peak_worker_rss_gb"] < 64
        assert row["train_seconds"] == result["train_seconds"] > 0
    # the LoRA run merged into its base: plain weights as large as the full run's, computing the adapter's logits
    export = json.loads((root / "lora-merged" / "forgekit_export.json").read_text())
    assert export["kind"] == "merged_lora" and export["source"] == lora_r["best_checkpoint"]
    assert export["max_abs_logit_diff"] < 1e-3 * max(1.0, export["max_abs_logit"])
    merged_bytes = sum(p.stat().st_size for p in (root / "lora-merged").glob("*.safetensors"))
    assert abs(merged_bytes / (full["weights_mb"] * 1e6) - 1) < 0.02
    for name in ("loss_curves.png", "costs.png"):
        assert (root / "plots" / name).stat().st_size > 10_000
