"""The continue-from-checkpoint cookbook: stage 2 starts from stage 1's checkpoint, on the other half of the data."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from forgekit.runs import read_config, read_metrics, read_result
from tests.notebooks.harness import REPO, parameter_names, run_notebook

NOTEBOOK = "cookbooks/continue_from_checkpoint/continue_from_checkpoint.ipynb"
TRAIN = REPO / "data" / "generated" / "support_tickets" / "train.jsonl"


def _params(root: Path, model: Path, full: bool) -> dict:
    return {"RUN_ROOT": str(root), "MODEL_ID": str(model), "NUM_DEVICES": 1, "STAGE_STEPS": 4, "EVAL_EVERY": 2,
            "FULL_WEIGHTS": full, "TRAIN_OVERRIDES": ["eval_batch_size_per_device=40"]}


def test_parameters_cell():
    names = parameter_names(nbformat.read(REPO / NOTEBOOK, as_version=4))
    assert {"RUN_ROOT", "MODEL_ID", "STAGE_STEPS", "FULL_WEIGHTS", "TRAIN_OVERRIDES"} <= names


def _check_stages(runs: Path, kind: str, key: str) -> None:
    s1, s2 = runs / f"{kind}-stage1", runs / f"{kind}-stage2"
    r1, r2 = read_result(s1), read_result(s2)
    cfg2 = read_config(s2)
    assert cfg2[key] == r1["best_checkpoint"] and Path(r1["best_checkpoint"]).is_dir()
    assert Path(read_config(s1)["train_path"]).name == "part-1.jsonl" and Path(cfg2["train_path"]).name == "part-2.jsonl"
    assert r1["steps"] == r2["steps"] == 4
    # stage 2's first evaluation (before its first step) is the stage-1 checkpoint on the same validation set:
    # lower than where stage 1 started, and equal to stage 1's evaluation at that checkpoint
    first1, first2 = read_metrics(s1, "eval")[0], read_metrics(s2, "eval")[0]
    assert first1["step"] == first2["step"] == 0
    assert first2["eval_loss"] < first1["eval_loss"]
    best_step = int(Path(r1["best_checkpoint"]).name.removeprefix("step-"))
    at_best = next(r["eval_loss"] for r in read_metrics(s1, "eval") if r["step"] == best_step)
    assert first2["eval_loss"] == pytest.approx(at_best, rel=1e-4)


def test_lora_and_full_weight_stages_with_tiny_model(tiny_model_dir, tmp_path):
    """One execution with FULL_WEIGHTS=True runs both parts: the LoRA stages, then the full-weights stages."""
    root = tmp_path / "run"
    run_notebook(NOTEBOOK, _params(root, tiny_model_dir, full=True), tmp_path)
    part1, part2 = (root / "data" / f"part-{i}.jsonl" for i in (1, 2))
    lines1, lines2 = part1.read_text().splitlines(), part2.read_text().splitlines()
    assert abs(len(lines1) - len(lines2)) <= 1 and not set(lines1) & set(lines2)
    assert sorted(lines1 + lines2) == sorted(line for line in TRAIN.read_text().splitlines() if line.strip())
    _check_stages(root / "runs", "lora", "initial_adapter_model_ckpt_path")
    assert (root / "plots" / "lora_stages.png").stat().st_size > 10_000
    _check_stages(root / "runs", "full", "initial_base_model_ckpt_path")
    full2 = read_result(root / "runs" / "full-stage2")
    assert full2["trainable_params"] == full2["total_params"]
    assert read_result(root / "runs" / "lora-stage2")["trainable_params"] < full2["total_params"] / 10
    assert (root / "plots" / "full_stages.png").stat().st_size > 10_000
