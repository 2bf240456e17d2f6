"""The preference-tuning cookbook: a seeded house-format preference set, SFT, then DPO from the SFT adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest

from forgekit.runs import read_config, read_metrics, read_result
from tests.notebooks.harness import REPO, parameter_names, run_notebook

NOTEBOOK = "cookbooks/preference_tuning/preference_tuning.ipynb"


def _params(root: Path, model: Path) -> dict:
    return {"RUN_ROOT": str(root), "MODEL_ID": str(model), "NUM_DEVICES": 1, "N_TRAIN": 16, "N_VALID": 8,
            "N_TEST": 2, "SFT_STEPS": 2, "DPO_STEPS": 4, "EVAL_EVERY": 2, "MAX_NEW_TOKENS": 8,
            "SFT_OVERRIDES": ["eval_batch_size_per_device=8"], "DPO_OVERRIDES": ["eval_batch_size_per_device=8"]}


def test_parameters_cell():
    names = parameter_names(nbformat.read(REPO / NOTEBOOK, as_version=4))
    assert set(_params(Path("r"), Path("m"))) <= names


def test_sft_then_dpo_with_tiny_model(tiny_model_dir, tmp_path):
    root = tmp_path / "run"
    run_notebook(NOTEBOOK, _params(root, tiny_model_dir), tmp_path)
    sft_dir, dpo_dir = root / "runs" / "sft", root / "runs" / "dpo"
    sft, dpo = read_result(sft_dir), read_result(dpo_dir)
    assert sft["steps"] == 2 and dpo["steps"] == 4
    assert read_config(sft_dir)["task"] == "instruction_tuning" and read_config(dpo_dir)["task"] == "preference_tuning"
    assert read_config(dpo_dir)["initial_adapter_model_ckpt_path"] == sft["best_checkpoint"]
    # step 0: the policy is the SFT reference: zero rewards, no pair preferred yet; the loss is DPO's ln 2 plus
    # dpo.yaml's rpo_alpha (1.0) x the chosen replies' mean token NLL, about ln(vocabulary) = 10.8 for a random model
    evals = read_metrics(dpo_dir, "eval")
    assert evals[0]["step"] == 0 and evals[0]["eval_rewards/accuracies"] == 0
    assert evals[0]["eval_rewards/margins"] == pytest.approx(0, abs=1e-6)
    assert read_config(dpo_dir)["preference_tuning_config"]["rpo_alpha"] == 1.0
    assert 8 < evals[0]["eval_loss"] - math.log(2) < 13
    assert evals[-1]["step"] == 4
    train = read_metrics(dpo_dir, "train")
    assert all(k in train[-1] for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"))
    for name in ("dpo_train.png", "dpo_eval.png"):
        assert (root / "plots" / name).stat().st_size > 10_000
    results = json.loads((root / "results.json").read_text())
    assert results["reward_accuracy"] == {"before": 0, "after": evals[-1]["eval_rewards/accuracies"]}
    assert set(results["house_format_share"]) == {"base", "SFT", "DPO"}
    assert all(0 <= v <= 1 for v in results["house_format_share"].values())
